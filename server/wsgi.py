"""WSGI entry point: ``gunicorn -c server/gunicorn.conf.py server.wsgi:app``."""

from __future__ import annotations

from tevo_hold.app import create_app
from tevo_hold.observability import configure_logging

# JSON lines on stderr (under gunicorn, its logconfig_dict has set up the same already).
configure_logging()

# The embedded default (no TEVO_HOLD_REDIS_URL) starts with the demo listings, or those of
# TEVO_HOLD_INVENTORY_FILE.
app = create_app()
