"""Request ids, one structured (JSON) log line per request, and the HTTP metrics.

:func:`install` hooks a Flask app (``TevoHold.init_app`` does it, for the API's requests only,
on every mount of its blueprint):

- every request gets an id: the ``X-Request-ID`` it came with (if it is 1-128 characters of
  ``A-Z a-z 0-9 . _ : / + = @ -``), else a new one; the response carries it back in
  ``X-Request-ID``;
- when it is answered, one line goes to the logger ``tevo_hold.access``: method, path, status,
  error code, duration, request id, the hold's ``global_id`` and the API key's *name* (never the
  key, never a signature, never a header or a body), and the request is counted in
  :mod:`tevo_hold.metrics`. The line is logged by a thread of the process's own within
  :data:`ACCESS_LOG_INTERVAL` seconds, in a batch (see :func:`flush_access_log`).

:class:`JsonFormatter` writes any log record as one JSON object per line, adding the request id
of the request being served; :func:`configure_logging` puts it on the root logger (the bundled
server does; a library must not configure logging for its host app).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Flask, Request, Response, request

from . import metrics
from ._flusher import Flusher
from ._text import printable
from ._unique import unique_hex

__all__ = [
    "ACCESS_LOG",
    "ACCESS_LOG_BACKLOG",
    "ACCESS_LOG_INTERVAL",
    "CUT",
    "MAX_PATH_BYTES",
    "METRIC_METHODS",
    "OTHER_METHOD",
    "REQUEST_ID_HEADER",
    "REQUEST_ID_PATTERN",
    "JsonFormatter",
    "LineHandler",
    "RequestInfo",
    "configure_logging",
    "current",
    "flush_access_log",
    "install",
    "printable",
]

ACCESS_LOG = logging.getLogger("tevo_hold.access")
REQUEST_ID_HEADER = "X-Request-ID"
#: A request id the client may choose (the OpenAPI document states it, anchored).
REQUEST_ID_PATTERN = r"[A-Za-z0-9._:/+=@-]{1,128}"
#: Matched whole (fullmatch): "$" also matches before a final newline, and "abc\n" passed, to
#: fail as the answer's header (a 500).
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
#: Where the WSGI environ has the header, as is: request.headers.get() costs more than reading it.
_REQUEST_ID_ENVIRON = "HTTP_" + REQUEST_ID_HEADER.upper().replace("-", "_")


@dataclass(slots=True)
class RequestInfo:
    """What the access log line of one request says besides the request itself."""

    request_id: str
    started: float
    key_name: str | None = None
    global_id: str | None = None
    code: str | None = None


#: The current request's RequestInfo: a context variable (one per thread serving a request) is
#: read in tens of nanoseconds, where flask.g costs a proxy lookup on every use.
_INFO: ContextVar[RequestInfo | None] = ContextVar("tevo_hold_request", default=None)


def current() -> RequestInfo:
    """This request's :class:`RequestInfo` (made on first use)."""
    info = _INFO.get()
    if info is None:
        info = _begin(request._get_current_object())  # type: ignore[attr-defined]
    return info


#: A new request id: 32 hex digits, unique across threads and forked workers.
_new_request_id = unique_hex


def _begin(req: Request) -> RequestInfo:
    """A new RequestInfo for ``req``, now the current one."""
    given = req.environ.get(_REQUEST_ID_ENVIRON, "")
    request_id = given if _REQUEST_ID.fullmatch(given) else _new_request_id()
    info = RequestInfo(request_id=request_id, started=time.perf_counter())
    _INFO.set(info)
    return info


def install(app: Flask, serves: Callable[[Request], bool] | None = None) -> None:
    """Give the requests of ``app`` that ``serves`` says are the API's (every one, without it)
    ids, an access log line and metrics. ``serves`` sees each request once routed."""

    def start() -> None:
        _INFO.set(None)  # whatever an earlier request of this thread left
        req: Request = request._get_current_object()  # type: ignore[attr-defined]  # once
        if serves is None or serves(req):
            _begin(req)

    def finish(response: Response) -> Response:
        info = _INFO.get()
        if info is not None:  # a request of ours
            _finish(info, response)
        return response

    def forget(exc: BaseException | None = None) -> None:
        _INFO.set(None)

    # Registered before the API's other hooks: started first, finished (after_request runs in
    # reverse order) last.
    app.before_request(start)
    app.after_request(finish)
    app.teardown_request(forget)


_REQUESTS = metrics.Children(metrics.REQUESTS)
_REQUEST_LATENCY = metrics.Children(metrics.REQUEST_LATENCY)

#: The methods the metrics name as themselves (HTTP's, RFC 9110 and PATCH); any other method a
#: client sends (gunicorn takes any token of 3-20 characters) is counted as ``other``. Each
#: value a label takes is a series in every scrape, written to the multiprocess files, for good:
#: the client must not be the one to choose how many there are.
METRIC_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)
OTHER_METHOD = "other"


def _finish(info: RequestInfo, response: Response) -> None:
    req = request._get_current_object()  # type: ignore[attr-defined]  # once, not per field
    response.headers[REQUEST_ID_HEADER] = info.request_id
    seconds = time.perf_counter() - info.started
    endpoint = req.url_rule.rule if req.url_rule is not None else "unmatched"
    method, status = req.method, response.status_code
    label = method if method in METRIC_METHODS else OTHER_METHOD
    _REQUESTS(endpoint, label, str(status)).inc()
    _REQUEST_LATENCY(endpoint, label).observe(seconds)
    if ACCESS_LOG.isEnabledFor(logging.INFO):
        _ACCESS_LINES.append(
            (time.time(), threading.current_thread(), info, method, req.path, status, seconds,
             req.remote_addr)
        )  # fmt: skip
        if not _ACCESS_FLUSHER.running:
            _ACCESS_FLUSHER.start()
        if len(_ACCESS_LINES) > ACCESS_LOG_BACKLOG:
            flush_access_log()  # the log cannot keep up: wait for it, as an unbatched line would


#: Seconds an access line may wait before it is logged (see flush_access_log).
ACCESS_LOG_INTERVAL = 0.1
#: Access lines that may wait at most. Past it (a log whose reader has stalled, say), the request
#: that finds it so logs the waiting lines itself: requests slow down with the log, as they did
#: when each logged its own line, rather than fill the process's memory.
ACCESS_LOG_BACKLOG = 10_000

#: The access lines of requests answered, not yet logged: (when, the thread that served it,
#: its RequestInfo, method, path, status, seconds, client address). A deque: its append and
#: popleft are each atomic, so the requests' threads and the flushing thread need no lock.
_ACCESS_LINES: deque[
    tuple[float, threading.Thread, RequestInfo, str, str, int, float, str | None]
] = deque()


#: Bytes, at most, of a field a client chooses as the access line's JSON has it (escapes
#: included): the path, the hold's ``global_id`` (as it came, before it was checked), the method.
#: With them so bounded a line stays well under :data:`PIPE_BUF`, written whole however many
#: workers share the pipe. A field cut short ends with :data:`CUT`.
MAX_PATH_BYTES = 1000
MAX_ID_BYTES = 600
MAX_METHOD_BYTES = 40
#: The path again in the line's message: only its start, the whole of it is the path's.
MAX_MESSAGE_PATH_BYTES = 200
#: What ends a field cut short.
CUT = "...[cut]"


def _json_size(text: str) -> int:
    """Bytes of ``text`` as a JSON string in a log line (see JsonFormatter and LineHandler)."""
    try:
        return len(orjson.dumps(text))
    except TypeError:  # a lone surrogate: the fallback encoder's, escaped by the handler
        return len(_LOG_ENCODER.encode(text).encode("utf-8", "backslashreplace"))


def _cut(text: str, limit: int) -> str:
    """``text``, or its start followed by :data:`CUT`, at most ``limit`` bytes as JSON."""
    if len(text) * 6 + 2 <= limit:  # no character takes more than 6 bytes (an escape)
        return text
    size = _json_size(text)
    if size <= limit:
        return text
    keep = min(len(text), limit)
    size = _json_size(text[:keep])
    while size + len(CUT) > limit:
        keep = max(0, min(keep - 1, keep * (limit - len(CUT)) // size))
        size = _json_size(text[:keep])
    return text[:keep] + CUT


def flush_access_log() -> None:
    """Log the access lines of the requests answered so far, now.

    A request's line is logged (``tevo_hold.access``) after its answer, by a thread of the
    process's own, at most :data:`ACCESS_LOG_INTERVAL` seconds later, with many others: made and
    formatted one after another, a line costs a fraction of what it costs between a request's
    system calls. Each record is as one made in the request: its time, its thread (the one that
    served the request), its fields. Lines still waiting at exit are logged then.
    """
    while True:
        try:
            when, thread, info, method, path, status, seconds, remote_addr = _ACCESS_LINES.popleft()
        except IndexError:
            return
        method = _cut(method, MAX_METHOD_BYTES)
        logged_path = _cut(path, MAX_PATH_BYTES)
        global_id = info.global_id
        fields: dict[str, Any] = {
            "request_id": info.request_id,
            "method": method,
            "path": logged_path,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "key": info.key_name,
            "global_id": global_id if global_id is None else _cut(global_id, MAX_ID_BYTES),
            "remote_addr": remote_addr,
        }
        if logged_path is not path:
            fields["path_chars"] = len(path)  # the path's length as it came
        if info.code is not None:
            fields["code"] = info.code
        # The record made directly: Logger.info would also look up its caller's frame, for a
        # line whose origin is always this one.
        record = ACCESS_LOG.makeRecord(
            ACCESS_LOG.name,
            logging.INFO,
            __file__,
            0,
            "%s %s %s",
            # escaped: a plain-text handler writes the message as it is (see printable)
            (printable(method), _cut(printable(logged_path), MAX_MESSAGE_PATH_BYTES), status),
            None,
            extra={"fields": fields},
        )
        record.relativeCreated -= (record.created - when) * 1000
        record.created, record.msecs = when, int((when - int(when)) * 1000) + 0.0
        record.thread, record.threadName = thread.ident, thread.name
        ACCESS_LOG.handle(record)


def _forget_the_parents_lines() -> None:
    _ACCESS_LINES.clear()  # in a forked child: the parent logs them


_ACCESS_FLUSHER = Flusher(
    "tevo-hold-access-log",
    ACCESS_LOG_INTERVAL,
    flush_access_log,
    after_fork=_forget_the_parents_lines,
)
atexit.register(flush_access_log)  # before logging.shutdown, which atexit calls after it


#: The encoder of the log lines orjson refuses, made once: json.dumps with arguments builds a new
#: one per call.
_LOG_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, then the record's ``fields``
    (``extra={"fields": {...}}``), the current request's id, and the traceback if any."""

    #: The timestamp's whole seconds, formatted once per second rather than once per line
    #: (gmtime and strftime are a good part of a line's cost): a pair, replaced whole (on the
    #: instance), so a thread reads a consistent one without a lock.
    _second: tuple[int, str] = (-1, "")

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached, text = self._second
        if cached != second:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if "request_id" not in entry:
            info = _INFO.get()
            if info is not None:
                entry["request_id"] = info.request_id
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(entry, default=str).decode("utf-8")
        except TypeError:  # what orjson refuses (an integer past 64 bits, a key not a string)
            return _LOG_ENCODER.encode(entry)


#: Bytes a write(2) to a pipe delivers whole, never interleaved with another writer's (Linux).
PIPE_BUF = 4096


class LineHandler(logging.Handler):
    """Each record as one line, written with ``write(2)`` to a file descriptor (stderr's, by
    default), the record formatted before the lock is taken.

    :class:`logging.StreamHandler` holds its lock while it formats, writes and flushes every
    record, so the threads of a gunicorn worker queue behind each other's JSON encoding. Here
    the lock spans the write alone. The lock is still needed: a longer line (a traceback) may go
    out in several calls, and a line of another thread written without it could land in between.
    Across processes (the workers sharing stderr) the kernel keeps a write of up to
    :data:`PIPE_BUF` bytes whole on a pipe, and any write whole on a file opened for appending.

    ``flush_interval`` 0 (the default): one ``write(2)`` per line, at once. Above 0, lines below
    WARNING (an access log's) are gathered into writes of up to PIPE_BUF bytes, each made when
    the next line would not fit, or by a thread of the handler's own at most ``flush_interval``
    seconds after its first line: a write per dozen access lines rather than per line (the
    system call was most of a line's cost), as nginx's ``access_log ... buffer= flush=``. A line
    at WARNING or above is written at once, after the lines gathered before it; so are all of
    them at exit (:func:`logging.shutdown` flushes every handler). A process killed outright
    loses at most ``flush_interval`` seconds of lines below WARNING.
    """

    def __init__(
        self, fd: int | None = None, level: int = logging.NOTSET, *, flush_interval: float = 0.0
    ) -> None:
        super().__init__(level)
        self.fd = sys.stderr.fileno() if fd is None else fd
        self._write_lock = threading.Lock()
        self._gathered: list[bytes] = []  # lines not yet written (under _write_lock)
        self._size = 0  # their bytes
        self._flusher = (
            Flusher("tevo-hold-log", flush_interval, self._flush_quietly, after_fork=self._forked)
            if flush_interval > 0
            else None
        )

    def handle(self, record: logging.LogRecord) -> bool:
        # as Handler.handle, without holding the handler's lock while formatting
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            if self._flusher is None or record.levelno >= logging.WARNING:
                with self._write_lock:
                    self._write_gathered()
                    self._write(line)
                return
            with self._write_lock:
                if self._size + len(line) > PIPE_BUF:
                    self._write_gathered()
                self._gathered.append(line)
                self._size += len(line)
            if not self._flusher.running:
                self._flusher.start()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Write the lines gathered so far."""
        with self._write_lock:
            self._write_gathered()

    def _write_gathered(self) -> None:
        """One write(2) of the lines gathered (under _write_lock)."""
        if self._gathered:
            data = b"".join(self._gathered)
            self._gathered.clear()
            self._size = 0
            self._write(data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a write may take part of it (interrupted by a signal): send the rest
            view = view[os.write(self.fd, view) :]

    def _flush_quietly(self) -> None:
        try:
            self.flush()
        except Exception:  # reported as logging reports a failed write; those lines are lost
            self.handleError(
                logging.LogRecord(__name__, logging.ERROR, __file__, 0, "lines lost", (), None)
            )

    def close(self) -> None:
        """Write what is gathered, and end the handler's thread (logging.config replaces its
        handlers when it runs again: gunicorn's SIGHUP, which left a thread behind each time)."""
        if self._flusher is not None:
            self._flusher.stop()
        self.flush()
        super().close()

    def _forked(self) -> None:
        """In a forked child: none of the parent's lines (it writes them), no lock held."""
        self._write_lock = threading.Lock()
        self._gathered.clear()
        self._size = 0


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr for every logger, unless the root logger has a handler already
    (gunicorn's ``logconfig_dict`` in ``server/gunicorn.conf.py`` sets up the same)."""
    root = logging.getLogger()
    if root.handlers:
        return
    try:
        handler: logging.Handler = LineHandler(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # a stderr with no descriptor of its own
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)
