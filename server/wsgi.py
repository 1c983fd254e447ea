"""WSGI entry point: ``gunicorn -c server/gunicorn.conf.py server.wsgi:app``.

The installed package's own app, :mod:`tevo_hold.wsgi` (JSON log lines on stderr; under
gunicorn with this directory's config, its ``logconfig_dict`` has set up the same already).
"""

from __future__ import annotations

from tevo_hold.wsgi import app

__all__ = ["app"]
