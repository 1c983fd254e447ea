"""Storing many holds fast, with exactly the library's own script calls.

For each hold, ``HoldService.hold`` (fused, on the reference adapter) is called on a client that
sends nothing: it records the script call the library makes (script, keys, arguments) and stops
it there. The recorded calls then run in Redis a thousand at a time: the script's text, unchanged,
wrapped in a Lua function of ``KEYS`` and ``ARGV`` that a loop calls once per recorded call. So
each hold is made by the very code and arguments of a real hold, whatever the library's key
layout, only without a round trip per hold. Every hold's reply is checked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

import redis

from tevo_hold import HoldService, Settings, build_service
from tevo_hold._redis import SCRIPTS, source

BATCH = 1000

_LOOP = """
local i, made = 1, 0
while i <= #ARGV do
  local nk, na = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local k, a = {}, {}
  for j = 1, nk do k[j] = ARGV[i + 1 + j] end
  for j = 1, na do a[j] = ARGV[i + 1 + nk + j] end
  local r = recorded(k, a)
  if type(r) ~= 'table' or r[1] ~= 'ok' then
    return redis.error_reply('fill: the script answered ' .. tostring(type(r) == 'table'
      and (r[1] or r.err) or r) .. ' for ' .. tostring(a[2]))
  end
  made = made + 1
  i = i + 2 + nk + na
end
return made
"""


@dataclass(frozen=True)
class Call:
    """One script call the library would make."""

    sha: str
    keys: tuple[str, ...]
    args: tuple[str, ...]


class _Recorded(Exception):
    def __init__(self, call: Call) -> None:
        self.call = call


class RecordingClient(redis.Redis):
    """A client that sends nothing: an EVALSHA is recorded and stopped with an exception.

    It points at a socket that does not exist, so a command that slipped past the recording
    would fail rather than reach a Redis.
    """

    def __init__(self) -> None:
        super().__init__(unix_socket_path="/nonexistent/tevo-hold-recorder.sock")

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if str(args[0]).upper() != "EVALSHA":
            raise RuntimeError(f"fill: the library sent {args[0]!r}, not a script call")
        sha, numkeys = str(args[1]), int(args[2])
        values = tuple(v.decode() if isinstance(v, bytes) else str(v) for v in args[3:])
        raise _Recorded(Call(sha, values[:numkeys], values[numkeys:]))


#: Each script's text by its SHA1, as the library calls it.
SOURCES = {hashlib.sha1(source(name).encode("utf-8")).hexdigest(): source(name) for name in SCRIPTS}


class Recorder:
    """The script calls ``HoldService.hold`` makes with ``settings``, recorded, not sent."""

    def __init__(self, settings: Settings) -> None:
        self.client = RecordingClient()
        self.service: HoldService = build_service(settings, client=self.client, fuse=True)

    def hold(self, global_id: str, remote_id: str, quantity: int = 1) -> Call:
        try:
            self.service.hold(remote_id=remote_id, quantity=quantity, global_id=global_id)
        except _Recorded as recorded:
            return recorded.call
        raise RuntimeError("HoldService.hold made no script call: is the fused path in use?")

    def source(self, sha: str) -> str:
        """The text of a script the library called."""
        return SOURCES[sha]


def _batches(items: Iterable[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    it = iter(items)
    while batch := list(islice(it, BATCH)):
        yield batch


def store_holds(
    client: redis.Redis,
    holds: Iterable[tuple[str, str]],
    settings: Settings,
    *,
    shared_keys: set[str] | None = None,
) -> int:
    """Hold one ticket for each ``(global_id, remote_id)``; returns how many were stored.

    ``shared_keys`` collects the keys the holds' calls name that are not a hold's own (keys
    holding neither its global_id): the listings' keys and any other shared structure.
    """
    recorder = Recorder(settings)
    scripts: dict[str, Any] = {}
    made = 0

    def send(script: Any, args: list[str]) -> int:
        return int(script(keys=[], args=args))

    with ThreadPoolExecutor(1) as sender:
        pending: Future[int] | None = None
        for batch in _batches(holds):
            args: list[str] = []
            sha = ""
            for gid, rid in batch:
                call = recorder.hold(gid, rid)
                if sha and call.sha != sha:
                    raise RuntimeError("fill: the library used two scripts for holds")
                sha = call.sha
                args += [str(len(call.keys)), str(len(call.args)), *call.keys, *call.args]
                if shared_keys is not None:
                    shared_keys.update(k for k in call.keys if gid not in k)
            if sha not in scripts:
                body = recorder.source(sha)
                wrapped = "local function recorded(KEYS, ARGV)\n" + body + "\nend\n" + _LOOP
                scripts[sha] = client.register_script(wrapped)
            if pending is not None:
                made += pending.result()
            pending = sender.submit(send, scripts[sha], args)  # built the next batch meanwhile
        if pending is not None:
            made += pending.result()
    return made


def store_range(
    client: redis.Redis,
    settings: Settings,
    prefix: str,
    lprefix: str,
    listings: int,
    lo: int,
    hi: int,
    *,
    shared_keys: set[str] | None = None,
) -> int:
    """Store holds ``<prefix><i>x``, i in ``lo..hi-1``, on listings ``<lprefix><i % listings>``."""
    pairs = ((f"{prefix}{i}x", f"{lprefix}{i % listings}") for i in range(lo, hi))
    return store_holds(client, pairs, settings, shared_keys=shared_keys)
