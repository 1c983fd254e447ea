"""gunicorn settings for tevo-hold. Every value can be overridden on the command line.

With no TEVO_HOLD_REDIS_URL (the embedded default) state lives in one process's memory, so one
worker serves every request (with threads); with Redis, workers share the state and scale out.
"""

import multiprocessing
import os

_embedded = os.environ.get("TEVO_HOLD_REDIS_URL", "") in ("", "memory://")

bind = os.environ.get("TEVO_HOLD_BIND", "127.0.0.1:8000")
workers = (
    1 if _embedded else int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2 + 1))
)
worker_class = "gthread"
threads = int(os.environ.get("TEVO_HOLD_THREADS", "8"))
# TEvo wants answers well within 5 s; a request still running after 30 s is stuck.
timeout = 30
graceful_timeout = 30
keepalive = 5
accesslog = "-"
errorlog = "-"
# Workers import the app after forking, so no Redis connection is shared across a fork.
preload_app = False
