"""gunicorn's threaded worker, whose own error answers are the API's JSON problem documents.

gunicorn answers a request it cannot read by itself, before the app runs: a malformed request
line or header, a request line over ``limit_request_line``, headers over
``limit_request_fields`` or ``limit_request_field_size``, an ``Expect`` or ``Transfer-Encoding``
it does not take. Its worker's ``handle_error`` logs the request (a warning naming the client
and quoting the line it could not read, or the traceback of an unexpected failure with the
request's URI), picks the status, and writes an HTML page.

:class:`JsonErrorWorker` keeps gunicorn's choice of status but not its log lines, which would
log what a client sent (``Invalid HTTP Header: 'Authorization Bearer <key>'``, a request line
with its query string): it logs one line of its own, the kind of error, the status answered and
the client's address, never the request's text. gunicorn's own ``handle_error`` runs, logging
nothing and writing into a buffer, and the status it chose goes out as the problem document of
:func:`tevo_hold.web.server_problem` (``application/problem+json``, the code and shape of every
other error answer, ``Connection: close`` as gunicorn sends, and an ``X-Request-ID`` as every
answer has). ``server/gunicorn.conf.py`` selects it.
"""

from __future__ import annotations

import secrets
import traceback
from http import HTTPStatus
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

from tevo_hold.observability import REQUEST_ID_HEADER
from tevo_hold.web import PROBLEM_JSON, server_problem

__all__ = ["JsonErrorWorker"]


class _Written:
    """Where gunicorn's ``handle_error`` writes its HTML answer (through
    ``gunicorn.util.write_error``, ``write_nonblock`` and ``sendall``): kept, never sent."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0  # non-blocking already: write_nonblock toggles nothing

    def sendall(self, data: bytes) -> None:
        self.data += data

    def status(self) -> int:
        """The status of the answer written (``HTTP/1.1 400 Bad Request``), 500 if none was."""
        parts = self.data.split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 500


class _Silent:
    """A logger that logs nothing: gunicorn's own ``handle_error`` logs the request's text (a
    header line with its key, a request line with its query string), which is never logged."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class _Quiet:
    """What gunicorn's ``handle_error`` reads of its worker: the config, and a silent log."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.log = _Silent()


class JsonErrorWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn has no type hints
    """The gthread worker, answering the requests gunicorn refuses with problem documents."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        written = _Written()
        # gunicorn's choice of status, logging nothing (its log lines and access-log entry
        # carry the request line or header it could not read: keys, query strings)
        ThreadWorker.handle_error(_Quiet(self.cfg), req, written, addr, exc)
        status = written.status()
        ip = addr[0] if addr else ""
        kind = type(exc).__name__
        # the kind of error, the status and the peer only: never the request's text
        if status == 500:  # where it failed, not the error's message: it may quote the request
            frames = "".join(traceback.format_tb(exc.__traceback__))
            said = "Error handling a request from ip=%s: %s, answered %s\n%s"
            self.log.error(said, ip, kind, status, frames)
        else:
            self.log.warning("Invalid request from ip=%s: %s, answered %s", ip, kind, status)
        problem, body = server_problem(status, str(exc))
        head = (
            f"HTTP/1.1 {problem.status} {HTTPStatus(problem.status).phrase}\r\n"
            "Connection: close\r\n"
            f"Content-Type: {PROBLEM_JSON}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"{REQUEST_ID_HEADER}: {secrets.token_hex(16)}\r\n"
            "\r\n"
        )
        try:
            util.write_nonblock(client, head.encode("latin-1") + body)
        except Exception:
            self.log.debug("Failed to send error message.")  # as gunicorn does
