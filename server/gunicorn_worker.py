"""gunicorn's threaded worker, whose own error answers are the API's JSON problem documents.

gunicorn answers a request it cannot read by itself, before the app runs: a malformed request
line or header, a request line over ``limit_request_line``, headers over
``limit_request_fields`` or ``limit_request_field_size``, an ``Expect`` or ``Transfer-Encoding``
it does not take. Its worker's ``handle_error`` logs the request (a warning naming the client,
or the traceback of an unexpected failure), picks the status, and writes an HTML page.

:class:`JsonErrorWorker` keeps all of that but the page: gunicorn's own ``handle_error`` runs as
it is, writing into a buffer, and the status it chose goes out as the problem document of
:func:`tevo_hold.web.server_problem` (``application/problem+json``, the code and shape of every
other error answer, ``Connection: close`` as gunicorn sends, and an ``X-Request-ID`` as every
answer has). ``server/gunicorn.conf.py`` selects it.
"""

from __future__ import annotations

import secrets
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


class JsonErrorWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn has no type hints
    """The gthread worker, answering the requests gunicorn refuses with problem documents."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        written = _Written()
        # gunicorn's logging, access-log entry and choice of status, as they are
        super().handle_error(req, written, addr, exc)
        problem, body = server_problem(written.status(), str(exc))
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
