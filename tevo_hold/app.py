"""The app factory that the thin server, the tests and a vendor's ``flask run`` all use."""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from .adapters.redis_inventory import load_inventory
from .service import HoldService
from .settings import PREFIX, Settings
from .web import TevoHold

__all__ = ["create_app", "load_inventory"]

log = logging.getLogger("tevo_hold")


class _App(Flask):
    """Flask, remembering which hooks and views are plain functions: Flask's ``ensure_sync``
    asks ``inspect.iscoroutinefunction`` of each one on every request (six per API call, about
    half a microsecond each). Coroutine functions, and callables that are not functions, are
    still wrapped or passed on by Flask on every call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync_functions: set[types.FunctionType] = set()

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        if type(func) is types.FunctionType and func in self._sync_functions:
            return func
        sync = super().ensure_sync(func)
        if sync is func and type(func) is types.FunctionType:
            self._sync_functions.add(func)
        return sync


def create_app(
    config: Mapping[str, Any] | None = None, *, service: HoldService | None = None
) -> Flask:
    """A Flask app serving the API at its root.

    Settings come from ``TEVO_HOLD_*`` environment variables, overridden by ``config``; they are
    read once, here. In the embedded mode (no Redis URL) the in-memory store starts with the
    listings of ``TEVO_HOLD_INVENTORY_FILE``, or the demo listings (see
    :func:`tevo_hold.connection.connect`).

    With ``TEVO_HOLD_PROXY_HOPS`` = N > 0 the app trusts the last N addresses of
    ``X-Forwarded-For`` and ``X-Forwarded-Proto`` (werkzeug's ProxyFix): the access log's
    ``remote_addr`` is the client's, not the proxy's. Never the ``Host`` or prefix headers: a
    request's signature covers its Host and path as sent.
    """
    # No static folder: the app serves the API only (Flask would route /static/<filename>).
    app = _App("tevo_hold", static_folder=None)
    app.config.update({k: v for k, v in os.environ.items() if k.startswith(PREFIX)})
    app.config.update(config or {})
    settings = Settings.from_mapping(app.config)
    hops = settings.proxy_hops
    if hops:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=0, x_port=0, x_prefix=0
        )
    # it logs what the settings leave open (no keys, memory)
    TevoHold(app, service=service, settings=settings)
    return app
