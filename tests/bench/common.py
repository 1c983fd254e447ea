"""What the floor app and the direct benchmarks share."""

from __future__ import annotations

#: The floor's trivial script: one write (with a TTL, so keys do not pile up) and a short reply.
FLOOR_SCRIPT = "redis.call('SET', KEYS[1], ARGV[1], 'PX', 120000) return 1"

#: The API key both servers accept during the benchmark.
API_KEY = "bench-key"
