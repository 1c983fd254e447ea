"""WSGI entry point: ``gunicorn -c server/gunicorn.conf.py server.wsgi:app``."""

from __future__ import annotations

import os
from pathlib import Path

from tevo_hold.app import create_app
from tevo_hold.observability import configure_logging

# JSON lines on stderr (under gunicorn, its logconfig_dict has set up the same already).
configure_logging()

#: The demo listings that the embedded default starts with.
SAMPLE_INVENTORY = Path(__file__).with_name("sample_inventory.json")

config = {}
if not os.environ.get("TEVO_HOLD_INVENTORY_FILE"):
    config["TEVO_HOLD_INVENTORY_FILE"] = str(SAMPLE_INVENTORY)

app = create_app(config)
