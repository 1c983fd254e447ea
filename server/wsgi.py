"""WSGI entry point: ``gunicorn -c server/gunicorn.conf.py server.wsgi:app``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tevo_hold.app import create_app

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

#: The demo listings that the embedded default starts with.
SAMPLE_INVENTORY = Path(__file__).with_name("sample_inventory.json")

config = {}
if not os.environ.get("TEVO_HOLD_INVENTORY_FILE"):
    config["TEVO_HOLD_INVENTORY_FILE"] = str(SAMPLE_INVENTORY)

app = create_app(config)
