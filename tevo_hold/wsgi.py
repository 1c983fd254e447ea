"""The server's WSGI app for gunicorn (or any WSGI server): ``gunicorn 'tevo_hold.wsgi:app'``.

:func:`tevo_hold.create_app` with tevo-hold's JSON log lines on stderr: one access line per
request from ``tevo_hold.access``, and the rest from ``tevo_hold`` (see
:func:`tevo_hold.observability.configure_logging`, which leaves a logging configuration that
has a handler alone, such as gunicorn's ``logconfig_dict``). ``tevo_hold:create_app()`` is the
same app without it, for a process whose logging is set up elsewhere: on its own it logs no
request at all (Python's default shows warnings only).

Settings come from ``TEVO_HOLD_*`` environment variables; with ``TEVO_HOLD_REDIS_URL`` unset,
the embedded default starts with the demo listings, or those of ``TEVO_HOLD_INVENTORY_FILE``.
"""

from __future__ import annotations

from .app import create_app
from .observability import configure_logging

__all__ = ["app"]

configure_logging()
app = create_app()
