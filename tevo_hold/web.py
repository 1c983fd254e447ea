"""The HTTP API as a Flask extension: :class:`TevoHold` and the blueprint it mounts.

Usage in an app of your own::

    app = Flask(__name__)
    app.config["TEVO_HOLD_REDIS_URL"] = "redis://localhost:6379/0"
    app.config["TEVO_HOLD_API_KEYS"] = os.environ["TEVO_HOLD_API_KEYS"]  # random, 32+ chars
    TevoHold(app, url_prefix="/tevo")          # or: ext = TevoHold(); ext.init_app(app, ...)

Views validate with the schemas of :mod:`tevo_hold.schemas`, call the :class:`HoldService` and
never touch Redis. Every error, whatever raised it, leaves as one JSON shape: an RFC 9457 problem
document (``application/problem+json``) with a stable ``code``.

Around the views: API keys (environment or managed, :mod:`tevo_hold.auth`), optional request
signatures, a rate limit per key (:mod:`tevo_hold.ratelimit`), request ids and one JSON access
log line per request (:mod:`tevo_hold.observability`); ``/healthz``, ``/readyz`` and ``/metrics``
need no key.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeGuard
from urllib.parse import quote

import orjson
from flask import Blueprint, Flask, Request, Response, current_app, request
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import PathConverter, RoutingException

from . import auth, errors, metrics, observability, ratelimit
from ._redis import charge_next_call, translate_errors
from .adapters.identity import record_adapter
from .adapters.redis_inventory import RedisInventoryAdapter
from .connection import in_process, start_daemon
from .models import HoldStatus, Outcome
from .schemas import (
    HoldDetailSchema,
    HoldRequestSchema,
    InvoiceRequestSchema,
    ReleaseRequestSchema,
    RequestLoader,
    dump_hold,
)
from .service import HoldService, build_service
from .settings import DEMO_API_KEY, Settings
from .validation import check_id_bytes

__all__ = [
    "EXTENSION_KEY",
    "SERVER_PROBLEMS",
    "ServerProblem",
    "TevoHold",
    "create_blueprint",
    "problem_document",
    "problem_response",
    "server_problem",
]

EXTENSION_KEY = "tevo_hold"
PROBLEM_TYPE = "urn:tevo-hold:problem:"
PROBLEM_JSON = "application/problem+json"
#: Views answered without an API key (and without a rate limit).
PUBLIC_VIEWS = frozenset({"healthz", "readyz", "metrics", "openapi_json", "docs"})
#: The header of a request's signature (when TEVO_HOLD_REQUIRE_SIGNATURE is on).
SIGNATURE_HEADER = "X-Signature"
log = logging.getLogger("tevo_hold")

#: The options of every route: no automatic OPTIONS answer, and no 308 redirect of a path with
#: "//" in it to the path with one "/" (werkzeug's default, a text/html answer): each path is
#: the API's exactly as written, else a 404 problem.
_RULE: dict[str, Any] = {"provide_automatic_options": False, "merge_slashes": False}

_HOLD_DETAIL_SCHEMA = HoldDetailSchema()
_HOLD_REQUEST = RequestLoader(HoldRequestSchema())
_RELEASE_REQUEST = RequestLoader(ReleaseRequestSchema())
_INVOICE_REQUEST = RequestLoader(InvoiceRequestSchema())


class _State:
    """What the extension keeps per app, in ``app.extensions["tevo_hold"]``."""

    def __init__(
        self,
        settings: Settings,
        service: HoldService,
        *,
        key_store: auth.KeyStore,
        store: str = "redis",
    ) -> None:
        self.settings = settings
        self.service = service
        self.key_store = key_store
        #: Where the state lives: "redis", or "memory" (the embedded mode's in-process store).
        self.store = store
        #: The API keys of the settings: the demo key only where the state is this process's
        #: own store (a service handed in is the caller's Redis, whatever the settings say) and
        #: the adapter the reference one (Settings.demo: never a POS's real holds).
        self.accepted_keys = settings.accepted_keys if store == "memory" else settings.api_keys
        self.authenticator = auth.Authenticator(self.accepted_keys, key_store)
        #: The embedded worker and what stops its thread (see _start_embedded_worker); None when
        #: none runs.
        self.worker: Any = None
        self.worker_stop: threading.Event | None = None
        #: The worker's backlog, read from the service's Redis when /metrics is.
        self.backlog = metrics.BacklogCollector(service.ledger.backlog)
        #: The checks of /readyz, made at most once a second by one thread (see _Readiness).
        self.readiness = _Readiness(_readiness_checks(service, store), wait=settings.pos_budget)
        #: The rate limits of every API key (None: TEVO_HOLD_RATE_LIMIT=off).
        self.limits = (
            None
            if settings.rate_limit is None
            else ratelimit.Limits(ratelimit.parse(settings.rate_limit), service.ledger.keys)
        )
        #: Whether the state lives in this process's memory, where no other process sees it: then
        #: one process only may serve it (see _one_process_only).
        self.in_process = in_process(service.ledger.client)
        #: The full names of the API blueprint's mounts in the app (see _mounted), and the
        #: paths each one serves: its prefix, and what starts with the prefix and a "/".
        self.mount_names: set[str] = set()
        self._mount_paths: set[str] = set()
        self._mount_starts: tuple[str, ...] = ()

    def mount(self, name: str, prefix: str) -> None:
        """Count a mount of the API's blueprint, ``name`` (dotted when nested) at ``prefix``."""
        self.mount_names.add(name)
        self._mount_paths.add(prefix)
        self._mount_starts = (*self._mount_starts, prefix + "/")

    def serves(self, req: Request) -> bool:
        """Whether ``req`` is the API's: routed to a view of one of its mounts, or routed nowhere
        (no route, or not for this method) on a path under one. Every other request is the
        app's own, left to it as if tevo-hold were not there."""
        rule = req.url_rule
        if rule is not None:
            return rule.endpoint.rpartition(".")[0] in self.mount_names
        path = req.path
        return path.startswith(self._mount_starts) or path in self._mount_paths


class TevoHold:
    """The Flask extension: reads ``TEVO_HOLD_*`` config once, builds the service, mounts the API.

    ``service`` replaces the one the settings describe (tests pass one built on fakeredis);
    ``settings`` replaces reading them from ``app.config``. ``url_prefix`` is where the API is
    mounted (``""`` for the whole app; else a path starting with "/"). Unknown paths and wrong
    methods under that prefix answer JSON problems too, whatever error handlers the app has; the
    app's other paths keep its own. Managed API keys and rate-limit counts live in the service's
    Redis. :func:`create_blueprint` mounts the API at further prefixes.

    At start it records its adapter's class in that Redis (one write), so that ``tevo-hold
    worker`` and the commands that call the POS refuse to run with another
    (:mod:`tevo_hold.adapters.identity`).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        service: HoldService | None = None,
        settings: Settings | None = None,
        url_prefix: str = "",
    ) -> None:
        self._service = service
        self._settings = settings
        self._url_prefix = url_prefix
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if EXTENSION_KEY in app.extensions:
            raise errors.ConfigurationError(
                "TevoHold is already initialised on this app: call init_app once per app."
            )
        _mount_prefix(self._url_prefix)  # refused before the app is changed at all
        settings = self._settings or Settings.from_mapping(app.config)
        service = self._service or build_service(settings)
        state = _State(
            settings,
            service,
            key_store=auth.KeyStore(service.ledger.client, keys=service.ledger.keys),
            # memory:// builds an in-process store; a service handed in is the caller's Redis
            store="memory" if settings.embedded and self._service is None else "redis",
        )
        # For the worker and the CLI, which refuse to call another POS than this one. Before
        # the app is changed: what it refuses (an adapter whose target() fails, a Redis URL of
        # the wrong kind) leaves the app as it was, and no embedded worker running.
        record_adapter(service)
        # The state reaches the blueprint's mount as an option: it goes into app.extensions
        # last, once the app has routes and hooks, so that an app this fails on is left without
        # it and init_app can be called on it again.
        app.register_blueprint(
            create_blueprint(), url_prefix=self._url_prefix or None, **{_STATE_OPTION: state}
        )
        # Request ids and the access log (app-wide hooks: they run before the blueprint's and
        # after_request after them, so they see every request of the API to the end).
        observability.install(app, state.serves)
        _answer_http_errors(app, state)
        app.extensions[EXTENSION_KEY] = state
        _warn_of_gaps(app, state)
        if state.store == "memory" and not isinstance(service.adapter, RedisInventoryAdapter):
            _start_embedded_worker(app, state)


#: The option of register_blueprint that hands init_app's state to its mount (see _mounted).
_STATE_OPTION = "tevo_hold_state"


def _mount_prefix(url_prefix: str | None) -> str:
    """The path the API's paths start with when mounted at ``url_prefix`` (Flask drops a trailing
    "/"): ``""`` for the whole app. ConfigurationError for a prefix Flask cannot mount at, or one
    with a variable part (its value would reach the views as an argument they do not take)."""
    if url_prefix and not url_prefix.startswith("/"):
        raise errors.ConfigurationError(
            f"url_prefix {url_prefix!r} must start with '/': {'/' + url_prefix!r}, say."
        )
    if url_prefix and "<" in url_prefix:
        raise errors.ConfigurationError(
            f"url_prefix {url_prefix!r} has a variable part: the API's prefix is a fixed path."
        )
    return (url_prefix or "").rstrip("/")


def _mounted(setup: BlueprintSetupState) -> None:
    """Count each mount of the API's blueprint in its app's state, for the hooks that serve the
    API's requests only (see _State.serves); refuse one in an app where TevoHold is not set up
    (its views would have no state), or at a prefix _mount_prefix refuses."""
    state = setup.options.get(_STATE_OPTION) or setup.app.extensions.get(EXTENSION_KEY)
    if not isinstance(state, _State):
        raise errors.ConfigurationError(
            f"The blueprint {setup.name!r} of create_blueprint() is mounted in an app where "
            "TevoHold is not set up: call TevoHold(app) (or init_app) first."
        )
    state.mount(f"{setup.name_prefix}.{setup.name}".lstrip("."), _mount_prefix(setup.url_prefix))


def _answer_http_errors(app: Flask, state: _State) -> None:
    """Answer each HTTP error of the API's requests (``state.serves``) with a problem document,
    whatever handlers the app has; leave every other request's to the app.

    Flask hands no routing error (no route, or not for the method) to a blueprint's handlers
    (no route, no blueprint), and picks an app's handler for a status before any handler for a
    class: an app-wide 404 handler of the API's would take the vendor's 404s from its own
    handler of HTTPException, and a 404 handler of the vendor's would replace the API's or be
    replaced by it, whichever came last. So this app's handle_http_exception is wrapped
    instead: its errors are the API's where the request is, and go on to Flask's, with the
    vendor's handlers, everywhere else. Routing exceptions that are not errors (a redirect) go
    on to Flask, which answers them itself.

    An error Flask traps (TRAP_HTTP_EXCEPTIONS, or a bad request's in debug mode) skips
    handle_http_exception for the handlers Flask finds: the blueprint's, for a routed request,
    but for a routing error only the app's (the vendor's, or none: a 500 page). So
    handle_user_exception is wrapped too, for the API's requests' trapped errors."""
    handle = app.handle_http_exception
    handle_user = app.handle_user_exception

    def the_apis(exc: Exception) -> TypeGuard[HTTPException]:
        """Whether ``exc`` is an HTTP error of one of the API's requests, for a problem."""
        if not isinstance(exc, HTTPException) or exc.code is None:
            return False
        if isinstance(exc, RoutingException):
            return False
        return state.serves(request._get_current_object())  # type: ignore[attr-defined]

    def handle_http_exception(exc: HTTPException) -> HTTPException | ResponseReturnValue:
        return _http_problem(exc) if the_apis(exc) else handle(exc)

    def handle_user_exception(exc: Exception) -> HTTPException | ResponseReturnValue:
        if the_apis(exc) and app.trap_http_exception(exc):
            return _http_problem(exc)
        return handle_user(exc)

    # This app's only (attributes of the instance), ahead of its class's, which they call.
    app.handle_http_exception = handle_http_exception  # type: ignore[method-assign, assignment]
    app.handle_user_exception = handle_user_exception  # type: ignore[method-assign, assignment]


def _warn_of_gaps(app: Flask, state: _State) -> None:
    """Log, once at start, what the settings leave open: no API key, a short one, or the demo
    key; and TEVO_HOLD_PROXY_HOPS set on an app that create_app did not make, where it does
    nothing."""
    if state.settings.proxy_hops and not isinstance(app.wsgi_app, ProxyFix):
        log.warning(
            "TEVO_HOLD_PROXY_HOPS applies to the app of create_app only: this app trusts no "
            "X-Forwarded-For. Wrap its wsgi_app in werkzeug's ProxyFix yourself (x_for and "
            "x_proto only: a signed request's Host is signed as sent)."
        )
    if not state.accepted_keys and state.store == "memory":
        log.warning(
            "TEVO_HOLD_API_KEYS is empty and TEVO_HOLD_ADAPTER=%s calls a POS: the public demo "
            "key opens the embedded demo only (the reference adapter), and tevo-hold keys "
            "create cannot reach this process's memory: every API call answers 401. Set "
            "TEVO_HOLD_API_KEYS.",
            state.settings.adapter,
        )
    elif not state.accepted_keys and state.in_process:
        log.warning(
            "TEVO_HOLD_API_KEYS is empty and the service handed in keeps its state in this "
            "process's memory, where tevo-hold keys create cannot reach: every API call "
            "answers 401. Set TEVO_HOLD_API_KEYS (the demo key opens only the store the "
            "extension builds itself)."
        )
    elif not state.accepted_keys:
        log.warning(
            "TEVO_HOLD_API_KEYS is empty: only managed keys (tevo-hold keys create NAME) are "
            "accepted; until one is made, every API call answers 401."
        )
    _warn_of_weak_keys(state.settings.api_keys)
    # That the state is in memory, connection.py said where it made the store.
    if state.store == "memory" and state.settings.demo:
        log.warning(
            "TEVO_HOLD_API_KEYS is unset: the embedded demo's Demo API key: %s", DEMO_API_KEY
        )


def _warn_of_weak_keys(keys: tuple[str, ...]) -> None:
    """Log once for each key of TEVO_HOLD_API_KEYS (never the embedded demo's demo key, which
    is no key of the setting) that is short enough to guess: failed keys are not throttled
    here. Each is named by its fingerprint, never shown."""
    for key in dict.fromkeys(keys):
        if len(key) < auth.STRONG_KEY_CHARS:
            log.warning(
                "TEVO_HOLD_API_KEYS: the key %s is shorter than %d characters, and tevo-hold "
                "does not throttle failed keys: a short key can be guessed. Replace it with a "
                "strong one, made by %s, or with a managed key (tevo-hold keys create NAME).",
                auth.env_name(key),
                auth.STRONG_KEY_CHARS,
                auth.STRONG_KEY_COMMAND,
            )


def _start_embedded_worker(app: Flask, state: _State) -> None:
    """The worker of an in-memory store whose adapter calls a POS, as a thread of this process.

    ``tevo-hold worker`` cannot reach a store in the server's memory, and without a worker the
    holds that lapse stay held in the POS, compensations are never made and a failed invoice is
    never retried. The thread stops when the app is garbage-collected (or the process exits).
    """
    from .worker import Worker  # imported here: only the embedded mode with a POS needs it

    settings = state.settings
    worker = Worker(
        state.service, interval=settings.worker_interval, name=f"embedded-worker-{id(app):x}"
    )
    stop = threading.Event()
    state.worker, state.worker_stop = worker, stop
    weakref.finalize(app, stop.set)
    held = weakref.ref(worker)  # by the app's state only: the thread ends with the app

    def run() -> None:
        running = held()
        if running is not None:
            running.run(stop)

    start_daemon(worker.name, run, alive=lambda: not stop.is_set() and held() is not None)
    # connection.py said, where it made the store, what a POS on it risks: this says only
    # that the worker it names runs.
    log.info(
        "TEVO_HOLD_ADAPTER=%s on the in-memory store: a worker thread of this process "
        "releases lapsed holds in the POS and retries failed invoices.",
        settings.adapter,
    )


def create_blueprint(name: str = EXTENSION_KEY) -> Blueprint:
    """The API's routes: :class:`TevoHold` mounts them at its ``url_prefix``; mount them again
    under any other prefix of an app where TevoHold is set up, with a name of their own::

        app.register_blueprint(create_blueprint("partner"), url_prefix="/partner")

    Each mount is the whole API, on the one state of the app's TevoHold: API keys, request ids
    and access log lines, problem documents for any error (unknown paths and wrong methods under
    its prefix included), and the refusal to serve from several processes with the state in
    memory. Mounted in an app without TevoHold, or at a prefix that does not start with "/",
    it raises ConfigurationError.

    The API calls of each key share one budget, ``TEVO_HOLD_RATE_LIMIT``, on every mount: the
    call's first Redis script is charged to it (:mod:`tevo_hold.ratelimit`).
    """
    bp = Blueprint(name, __name__)
    bp.record(_mounted)  # first: before its routes, a prefix that Flask would refuse is named
    bp.before_request(_authenticate)
    # After the key is checked; a store in memory is this process's only (see the function).
    bp.before_request(_one_process_only)
    bp.teardown_request(_forget)
    bp.register_error_handler(errors.TevoHoldError, problem_response)
    # The app's handle_http_exception and handle_user_exception answer the API's HTTP errors
    # first, trapped ones included (_answer_http_errors); this one is a fallback.
    bp.register_error_handler(HTTPException, _http_problem)
    bp.register_error_handler(Exception, _internal_error)

    # No route answers OPTIONS by itself (Flask's automatic answer was an empty 200 text/html):
    # OPTIONS is a method the API does not take, a 405 problem whose Allow lists the methods
    # the path does take. GET paths take HEAD too (werkzeug adds it to every GET rule), as HTTP
    # requires: the same answer without its body. No route merges slashes either: werkzeug
    # would answer "/v1//holds" with a 308 redirect to "/v1/holds" (an HTML page that no error
    # handler sees); such a path is unknown, a 404 problem like any other (see _RULE).
    #
    # The state is looked up once per view and handed on: each use of flask's current_app or
    # request is a proxy lookup (most of a microsecond).
    @bp.post("/v1/holds", **_RULE)
    def create_hold() -> Response:
        state = _state()
        data = _load(_HOLD_REQUEST, state)
        return _hold_response(state.service.hold(**data), 201)

    @bp.post("/v1/releases", **_RULE)
    def create_release() -> Response:
        state = _state()
        data = _load(_RELEASE_REQUEST, state)
        return _hold_response(state.service.release(**data), 200)

    @bp.post("/v1/invoices", **_RULE)
    def create_invoice() -> Response:
        state = _state()
        data = _load(_INVOICE_REQUEST, state)
        with metrics.refusal_pending() as refusal:
            try:
                outcome = state.service.invoice(**data)
            except errors.RateLimited:
                # Over the key's budget, a hold's first invoice is sold all the same: its buyer
                # has paid, and TEvo may not call again (refused, the hold would lapse and its
                # tickets go back on sale). The refused call ran nothing and took the charge with
                # it, so this one runs uncharged, and it alone is counted in the metrics. Any
                # other invoice (a retry of one that failed or was sold, an unknown global_id)
                # is refused like any call over the budget, and counted so.
                if not _first_invoice(state.service, data["global_id"]):
                    raise
                refusal.drop()
                outcome = state.service.invoice(**data)
        return _hold_response(outcome, 201)

    # Any id is data: "/x", "a//b" and "x/" are global_ids too, so the id takes the rest of the
    # path as sent, and a trailing slash is not redirected either.
    bp.record_once(_register_converters)

    @bp.get("/v1/holds/<anyid:global_id>", strict_slashes=False, **_RULE)
    def get_hold(global_id: str) -> Response:
        if "\ufffd" in global_id:  # werkzeug decodes the path replacing bytes that are not UTF-8
            global_id = _path_id(global_id)
        observability.current().global_id = global_id
        hold = _service().get(global_id=global_id, history=True)
        return _json(_HOLD_DETAIL_SCHEMA.dump(hold), 200)

    @bp.get("/healthz", **_RULE)
    def healthz() -> Response:
        return _json({"status": "ok"}, 200)

    @bp.get("/v1/openapi.json", **_RULE)
    def openapi_json() -> Response:
        from . import openapi  # imported here: tevo_hold.openapi imports this module

        return openapi.document_response()

    @bp.get("/docs", **_RULE)
    @bp.get("/docs/<path:asset>", **_RULE)
    def docs(asset: str | None = None) -> Response:
        from . import openapi

        return openapi.docs_response(asset)

    @bp.get("/readyz", **_RULE)
    def readyz() -> Response:
        return _readiness()

    @bp.get("/metrics", endpoint="metrics", **_RULE)
    def metrics_view() -> Response:
        body, content_type = metrics.exposition(_state().backlog)
        return current_app.response_class(body, 200, content_type=content_type)

    return bp


# -- request handling ------------------------------------------------------------------------


class _AnyId(PathConverter):
    """A path segment of any characters: it may contain, start or end with any number of
    slashes, and line breaks ("." would stop before a newline, so that "a%0Ab" read no id).
    ``[\\s\\S]`` rather than an inline ``(?s)``, which werkzeug's combined pattern cannot take."""

    regex = r"[\s\S]+"
    part_isolating = False


def _register_converters(setup: BlueprintSetupState) -> None:
    setup.app.url_map.converters.setdefault("anyid", _AnyId)


def _path_id(decoded: str) -> str:
    """The id at the end of this request's path, decoded strictly from the bytes that were sent:
    werkzeug decodes them with replacement characters, so that ``%FF%FE`` read as the id
    ``"\ufffd\ufffd"`` (that is, ``%EF%BF%BD%EF%BF%BD``). InvalidRequest unless valid UTF-8."""
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    rule = req.url_rule.rule if req.url_rule is not None else ""
    # WSGI hands the path over as latin-1 text: the bytes that were sent, percent-decoded.
    raw = req.environ.get("PATH_INFO", "").encode("latin-1", "replace")
    before = rule.partition("<")[0].encode("utf-8")  # the rule's text before the id
    if not raw.startswith(before):
        return decoded  # not the path the rule matched (a middleware rewrote it): as decoded
    return check_id_bytes("global_id", raw[len(before) :])


def _first_invoice(service: HoldService, global_id: str) -> bool:
    """Whether an invoice of ``global_id`` would be its hold's first: the hold is there, held
    (or lapsed), and no invoice was ever asked for it, by its audit trail. (Its fields alone do
    not tell: a lapsed hold's first invoice, refused for want of tickets, gives the hold back as
    it was, and each invoice after it got past the budget and called the POS again.)"""
    try:
        hold = service.get(global_id=global_id, history=True)
    except errors.HoldNotFound:
        return False
    return (
        hold.status in (HoldStatus.HELD, HoldStatus.EXPIRED)
        and hold.tevo_order_id is None
        and hold.invoice_attempts == 0
        and not any(event.event == "invoice_requested" for event in hold.events)
    )


def _state() -> _State:
    state: _State = current_app.extensions[EXTENSION_KEY]
    return state


def _service() -> HoldService:
    return _state().service


def _authenticate() -> None:
    _forget()  # nothing left over from an earlier request of this thread
    req: Request = request._get_current_object()  # type: ignore[attr-defined]  # once, not per use
    view = (req.endpoint or "").rpartition(".")[2]
    if view in PUBLIC_VIEWS:
        return
    given = req.environ.get("HTTP_X_API_KEY")  # req.headers.get("X-API-Key"), without its cost
    if not given:  # absent or empty: an empty X-API-Key hides no Authorization header
        header = req.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            given = token.strip()
    if not given:
        raise errors.Unauthorized("Send your API key in the X-API-Key header.")
    state = _state()
    identity = state.authenticator.identify(given)
    observability.current().key_name = identity.name
    if state.limits is not None:
        charge_next_call(state.limits.charge(identity.name))
    if state.settings.require_signature:
        auth.verify_signature(
            req.headers.get(SIGNATURE_HEADER),
            # WSGI hands headers over as latin-1 text: the bytes that were sent.
            given.encode("latin-1", "replace"),
            method=req.method,
            # the Host header as sent: request.host reads one it finds odd as "" (a name with
            # an underscore, say), which the caller signed as a host all the same
            host=req.environ.get("HTTP_HOST") or req.host,
            path=_raw_path(req),
            query=req.query_string.decode("latin-1"),
            # Only a POST has a body to sign: a GET (or HEAD) signs its query string, and any
            # body sent with one is never read (HTTP gives it no meaning), signing or not.
            body=_body(req, state.settings.max_body) if req.method == "POST" else b"",
        )


#: Whether this process has logged that it refuses to serve (see _one_process_only).
_refusal_logged = False


#: What a server that refuses to serve (see _one_process_only) still answers: no state in them.
_STATELESS_VIEWS = PUBLIC_VIEWS - {"readyz"}


def _one_process_only() -> None:
    """With the state in this process's memory (``memory://``, or a fakeredis client handed
    in), refuse every call (and ``/readyz``) on every mount if the server runs the app in
    several processes (WSGI's ``wsgi.multiprocess``: gunicorn sets it with more than one
    worker), rather than let each process sell the same tickets from a store of its own.
    ``/healthz`` still answers: the process is up."""
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    if not req.environ.get("wsgi.multiprocess"):
        return
    if not _state().in_process:  # Redis: every process sees the same state
        return
    if (req.endpoint or "").rpartition(".")[2] in _STATELESS_VIEWS:
        return
    global _refusal_logged
    if not _refusal_logged:
        _refusal_logged = True
        log.error(
            "tevo-hold keeps its state in this process's memory (TEVO_HOLD_REDIS_URL unset), but "
            "the server runs it in several processes, each with a store of its own, which "
            "would sell the same tickets again: every call is refused. Run one process "
            "(gunicorn --workers 1) or set TEVO_HOLD_REDIS_URL."
        )
    raise errors.Unavailable(
        "This server keeps its state in memory but runs in several processes: it refuses every "
        "call until it runs one process or uses Redis (TEVO_HOLD_REDIS_URL)."
    )


def _raw_path(req: Request) -> str:
    """The request's path as it was sent (percent-encoding and all), without the query."""
    raw = req.environ.get("RAW_URI") or req.environ.get("REQUEST_URI")
    if isinstance(raw, str) and raw:
        path = raw.split("?", 1)[0]
        if not path.startswith("/") and "://" in path:  # absolute-form request target
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        return path
    return quote(req.script_root + req.path)


def _readiness() -> Response:
    """200 when Redis answers (and the POS, if its adapter can tell); else a 503 problem.

    ``store`` says where the state lives: ``redis``, or ``memory`` in the embedded mode, where
    there is no Redis to check (the in-process store cannot be down while this answers). The
    checks are :class:`_Readiness`'s: made at most once a second, by one thread.
    """
    state = _state()
    checks = state.readiness()
    down = sorted(name for name, check in checks.items() if check == "unavailable")
    if down:
        raise errors.NotReady(f"Not ready: {', '.join(down)} unavailable.", checks=checks)
    return _json({"status": "ok", "store": state.store, "checks": checks}, 200)


#: Seconds one reading of the readiness checks serves a process's /readyz (see _Readiness).
READINESS_MAX_AGE = 1.0
#: Runs of the readiness checks under way at most, those given up on included (see _Readiness).
READINESS_MAX_RUNS = 3


class _Reading:
    """One run of the readiness checks: what it found so far, when it must have ended, and the
    reading that stands in for it meanwhile (None: requests wait for this one)."""

    __slots__ = ("deadline", "done", "found", "meanwhile", "pid", "started")

    def __init__(self, started: float, wait: float, meanwhile: dict[str, str] | None) -> None:
        self.started = started
        self.deadline = started + wait
        self.meanwhile = meanwhile
        self.done = threading.Event()
        self.found: dict[str, str] = {}
        self.pid = os.getpid()


class _Readiness:
    """The checks of ``GET /readyz``, each a name and a function answering ``ok``, ``unknown``
    or ``unavailable`` (or raising: ``unavailable``); calling it answers them all, by name.

    ``/readyz`` needs no key and no rate limit, and its checks call out: Redis's PING, and the
    adapter's ``ready()``, which for the ``http`` adapter is a request to the POS. Made per
    request, a flood of anonymous ``/readyz`` was as many requests to the vendor's POS, each
    holding a server thread for the POS's answer time: with a health path answering in 1.9 s,
    40 threads flooding ``/readyz`` held TEvo's holds 9 seconds. So:

    - one run of the checks at a time, in a thread of its own, and its reading serves every
      ``/readyz`` for ``max_age`` seconds after it ends (as :class:`metrics.BacklogCollector`'s
      reading of the backlog does): at most one POS call in flight, about one a second;
    - while a run is under way, a reading that was under ``2 * max_age`` seconds old when it
      began (requests keep coming: a flood, or a busy load balancer) answers at once; else
      (the first request, or one after a lull, whose reading would be old news) a request
      waits for the run;
    - never past ``wait`` seconds (the POS budget) after the run began: from then on a
      request answers at once with what the run found in time, a check not done being
      ``unavailable``. A POS that hangs keeps no thread longer than that.

    - a run still under way ``max_age`` after its deadline is given up: the next request starts
      another (at most READINESS_MAX_RUNS under way at once, hung ones included), so a check
      that hangs once does not keep ``/readyz`` at 503 once the POS answers again.

    So a POS that goes down shows within ``2 * max_age`` seconds and its own answer's time,
    and one that hangs within ``wait``.
    """

    def __init__(
        self,
        checks: Sequence[tuple[str, Callable[[], str]]],
        *,
        wait: float,
        max_age: float = READINESS_MAX_AGE,
    ) -> None:
        self.checks = tuple(checks)
        self.wait = wait
        self.max_age = max_age
        #: The clock of the reading's age and the wait (tests move one of their own).
        self.clock: Callable[[], float] = time.monotonic
        self._lock = threading.Lock()
        #: The last reading and when its run ended; the run under way, if any.
        self._last: tuple[float, dict[str, str]] | None = None
        self._running: _Reading | None = None
        #: Runs whose thread has not ended (one given up on included).
        self._in_flight = 0

    def __call__(self) -> dict[str, str]:
        with self._lock:
            now = self.clock()
            last = self._last
            if last is not None and now - last[0] < self.max_age:
                return dict(last[1])
            reading = self._running
            if reading is not None and reading.pid != os.getpid():  # a forked parent's run
                reading, self._in_flight = None, 0  # its threads are not in this process
            start = (
                reading is None
                # a run that hangs past its deadline is given up a reading's age later, or
                # /readyz would answer from it for good; a few at most, should each hang
                or (now >= reading.deadline + self.max_age and self._in_flight < READINESS_MAX_RUNS)
            )
            if start:
                recent = last is not None and now - last[0] < 2 * self.max_age
                reading = _Reading(now, self.wait, last[1] if last and recent else None)
                self._running = reading
                self._in_flight += 1
        assert reading is not None
        if start:
            try:
                threading.Thread(
                    target=self._run, args=(reading,), name="tevo-hold-readyz", daemon=True
                ).start()
            except RuntimeError:  # the process's threads are at their limit: check here
                self._run(reading)
        left = reading.deadline - self.clock()
        if reading.meanwhile is not None and left > 0 and not reading.done.is_set():
            return dict(reading.meanwhile)
        if reading.done.wait(max(0.0, left)):
            return dict(reading.found)
        found = dict(reading.found)  # what the run found in time; the rest did not answer
        return {name: found.get(name, "unavailable") for name, _ in self.checks}

    def _run(self, reading: _Reading) -> None:
        try:
            for name, check in self.checks:
                try:
                    reading.found[name] = check()
                except Exception as exc:
                    log.warning("readyz: the %s check failed: %s", name, type(exc).__name__)
                    reading.found[name] = "unavailable"
        finally:
            ended = self.clock()
            if ended > reading.deadline:
                log.warning(
                    "readyz: the checks took %.1f s, past the %.1f s a /readyz waits for them",
                    ended - reading.started,
                    self.wait,
                )
            with self._lock:
                self._in_flight -= 1
                if self._running is reading:
                    self._running = None
                    self._last = (ended, dict(reading.found))
            reading.done.set()


def _readiness_checks(service: HoldService, store: str) -> list[tuple[str, Callable[[], str]]]:
    """The checks of /readyz for ``service``: Redis (not in the embedded mode), and the POS."""

    def redis() -> str:
        with translate_errors():
            service.ledger.client.ping()
        return "ok"

    def pos() -> str:
        ready = service.adapter.ready()
        return "unknown" if ready is None else "ok" if ready else "unavailable"

    return [("redis", redis), ("pos", pos)] if store == "redis" else [("pos", pos)]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _DuplicateMember(Exception):
    """An object of the body names a member twice (``args[0]``): JSON leaves open which one
    counts (json.loads keeps the last, other parsers the first), so the body is refused."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Each JSON object of a body, refused if it names a member twice. (A quarter of a
    microsecond per object over json's own dict, measured on a hold's body.)"""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _DuplicateMember(name)
            seen.add(name)
    return obj


#: The decoder of every body, made once: json.loads with arguments builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_object)


def _read_body(req: Request, limit: int) -> bytes:
    """The body, or PayloadTooLarge past ``limit`` bytes, whether or not a length was sent."""
    length = req.content_length
    if length is not None:
        if length > limit:
            raise errors.PayloadTooLarge(f"The body is larger than {limit} bytes.")
        data = req.get_data()  # all of it: the stream ends at the length
        if len(data) < length:
            # A client that sends less than its length is a 400 (werkzeug's ClientDisconnected,
            # raised by the read); a stream that simply has less left was read by someone else.
            log.error(
                "%s %s: the request's body (%d bytes) was read before tevo-hold could read it: "
                "a hook of the app's that reads request.stream, or get_data(cache=False), "
                "leaves the API nothing. Read it with request.get_data() instead (cached).",
                req.method,
                observability.printable(req.path),
                length,
            )
            raise errors.InternalError("The request's body could not be read.")
        return data
    # A hook of the app's that read the body first (request.get_data() or get_json(), in an
    # app-wide before_request: request logging, an audit trail) drained the stream into
    # werkzeug's cache, where the stream has nothing left: the body is that.
    cached: bytes | None = getattr(req, "_cached_data", None)
    if cached is not None:
        if len(cached) > limit:
            raise errors.PayloadTooLarge(f"The body is larger than {limit} bytes.")
        return cached
    # A chunked body has no length up front: read one byte past the limit to see if it is over.
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = req.stream.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise errors.PayloadTooLarge(f"The body is larger than {limit} bytes.")
    return b"".join(chunks)


def _load(schema: RequestLoader, state: _State) -> dict[str, Any]:
    """The request's JSON body, checked by ``schema``: 413, 415 and 400 problems otherwise."""
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    mimetype = req.mimetype
    if mimetype != "application/json" and not (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    ):
        raise errors.UnsupportedMediaType(
            "Send the body as JSON with the header Content-Type: application/json."
        )
    raw = _body(req, state.settings.max_body)
    try:
        text = raw.decode("utf-8")
        if text.startswith("\ufeff"):  # refused as json.loads refuses it, in the same words
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        body = _DECODER.decode(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise errors.MalformedJSON(f"The body is not valid UTF-8 JSON: {exc}") from None
    except RecursionError:  # arrays or objects nested about a thousand deep
        raise errors.MalformedJSON("The body is nested too deeply to read as JSON.") from None
    except _DuplicateMember as exc:
        raise errors.InvalidRequest(
            f"The body names the member {exc.args[0][:100]!r} more than once: send each once."
        ) from None
    if not isinstance(body, dict):
        raise errors.InvalidRequest("The body must be a JSON object.")
    data = schema(body)
    if isinstance(data.get("global_id"), str):
        observability.current().global_id = data["global_id"]
    return data


#: The current request's body once read: a context variable, like the request's charge, where
#: flask.g costs a proxy lookup on every use. Set by _body, forgotten by _forget.
_BODY: ContextVar[bytes | None] = ContextVar("tevo_hold_body", default=None)


def _body(req: Request, limit: int) -> bytes:
    """The request's body, read once (for the signature and the view) within ``limit`` bytes."""
    body = _BODY.get()
    if body is None:
        try:
            body = _read_body(req, limit)
        except (errors.TevoHoldError, HTTPException):
            raise
        except Exception as exc:
            # The server could not read the body as it was sent: a malformed chunk (gunicorn's
            # InvalidChunkSize or ChunkMissingTerminator, werkzeug's "Invalid chunk header"),
            # or a client gone mid-body. The client's doing, and nothing was read: a 400.
            raise errors.InvalidRequest(f"The body could not be read: {exc}") from exc
        _BODY.set(body)
    return body


# -- responses -------------------------------------------------------------------------------


#: The encoder of what orjson refuses, made once: json.dumps with arguments builds a new one per
#: call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _encode_json(body: Any) -> bytes:
    """``body`` as compact UTF-8 JSON, as every answer is sent.

    orjson writes it in a tenth of the json module's time; what orjson refuses (an integer past
    64 bits, a key that is not a string) is written by the json module, as it was before.
    """
    try:
        return orjson.dumps(body)
    except TypeError:  # orjson.JSONEncodeError is one
        return _ENCODER.encode(body).encode("utf-8")


def _json(body: Any, status: int, *, mimetype: str = "application/json") -> Response:
    return current_app.response_class(_encode_json(body), status, mimetype=mimetype)


def _hold_response(outcome: Outcome, status: int) -> Response:
    response = _json(dump_hold(outcome.hold), status)
    if outcome.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def problem_document(
    code: str, title: str, status: int, detail: str, **extra: Any
) -> dict[str, Any]:
    """The members of an RFC 9457 problem document, as every error answer has them."""
    return {
        "type": PROBLEM_TYPE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }


def problem_response(exc: errors.TevoHoldError) -> Response:
    """``exc`` as an RFC 9457 problem document, with the headers its status calls for."""
    observability.current().code = exc.code
    body = problem_document(exc.code, exc.title, exc.status, exc.detail, **exc.extra())
    response = _json(body, exc.status, mimetype=PROBLEM_JSON)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    if isinstance(exc, errors.MethodNotAllowed):
        response.headers["Allow"] = ", ".join(exc.allowed)
    if isinstance(exc, errors.Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="tevo-hold"'
    return response


def _not_found() -> errors.TevoHoldError:
    return errors.NotFound(f"No endpoint at {request.method} {request.path}.")


def _method_not_allowed(exc: HTTPException) -> errors.TevoHoldError:
    """405 with the methods the path takes, in Allow; or 404 for a path with "//" that no method
    routes: werkzeug, finding no route, tries the path with its slashes merged, and reports the
    methods of the route found that way ("/v1//holds" was a 405 for GET, Allow: POST, while
    POST answered 404), a route that does not take the path as sent (see _RULE)."""
    allowed = list(getattr(exc, "valid_methods", None) or [])
    if "//" in request.path and not any(map(_routes, allowed)):
        return _not_found()
    return errors.MethodNotAllowed(
        f"{request.path} does not take {request.method}.", allowed=allowed
    )


def _routes(method: str) -> bool:
    """Whether the app routes this request's path for ``method``."""
    adapter = current_app.create_url_adapter(request)
    try:
        adapter.match(method=method)  # type: ignore[union-attr]  # None only outside a request
    except (HTTPException, RoutingException):
        return False
    return True


_HTTP_ERRORS: Mapping[int, Callable[[HTTPException], errors.TevoHoldError]] = {
    400: lambda e: errors.InvalidRequest(e.description),
    404: lambda e: _not_found(),
    405: _method_not_allowed,
    413: lambda e: errors.PayloadTooLarge(e.description),
    415: lambda e: errors.UnsupportedMediaType(e.description),
}


def _forget(exc: BaseException | None = None) -> None:
    """Drop what a request of this thread kept: its body, and its charge if it never reached
    Redis (the charge is then unmade)."""
    charge_next_call(None)
    _BODY.set(None)


def _http_problem(exc: HTTPException) -> Response:
    """A werkzeug HTTP error (routing, body size, ...) as a problem document. Ours are all in
    _HTTP_ERRORS; ``http_error`` (documented as such) is for what an app that mounts the
    blueprint raises itself (``abort(403)`` in a hook of its own, say)."""
    make = _HTTP_ERRORS.get(exc.code or 500)
    if make is not None:
        return problem_response(make(exc))
    status = exc.code or 500
    body = problem_document("http_error", exc.name, status, exc.description or exc.name)
    return _json(body, status, mimetype=PROBLEM_JSON)


# -- what the HTTP server answers by itself -------------------------------------------------


@dataclass(frozen=True)
class ServerProblem:
    """An answer the HTTP server gives by itself, as a problem document like the app's: to a
    request it cannot read (``server/gunicorn_worker.py``), before any view runs, on any path.
    ``meaning`` says when (for the docs); gunicorn decides the status."""

    status: int
    code: str
    title: str
    meaning: str


#: Each status gunicorn answers a request it cannot read with (its worker's handle_error).
SERVER_PROBLEMS: tuple[ServerProblem, ...] = (
    ServerProblem(
        400,
        errors.InvalidRequest.code,
        errors.InvalidRequest.title,
        "The request is not valid HTTP/1.1: a malformed request line, method or header name, "
        "an HTTP version other than 1.0 or 1.1, a folded header, a bad or repeated "
        "Content-Length, Content-Length with Transfer-Encoding, Transfer-Encoding on HTTP/1.0.",
    ),
    ServerProblem(
        414,
        "uri_too_long",
        "URI too long",
        "The request line (method, path and query) is longer than 4094 bytes.",
    ),
    ServerProblem(
        417,
        "expectation_failed",
        "Expectation failed",
        "An `Expect` header other than `100-continue`.",
    ),
    ServerProblem(
        431,
        "headers_too_large",
        "Request header fields too large",
        "A header line is longer than 8190 bytes, or the request has more than 100 headers.",
    ),
    ServerProblem(
        500,
        errors.InternalError.code,
        errors.InternalError.title,
        "The server failed to read the request; the log has the details.",
    ),
    ServerProblem(
        501,
        "unsupported_transfer_coding",
        "Unsupported transfer coding",
        "A `Transfer-Encoding` the server does not know (it knows `chunked`, `gzip`, "
        "`deflate`, `compress` and `identity`).",
    ),
)
_SERVER_PROBLEMS = {problem.status: problem for problem in SERVER_PROBLEMS}
#: The longest ``detail`` of a server's answer: the request line or header it quotes is cut.
_SERVER_DETAIL_MAX = 300


def server_problem(status: int, detail: str) -> tuple[ServerProblem, bytes]:
    """The answer the HTTP server sends for a request it refused with ``status``, and its body
    (UTF-8 JSON). A status not in SERVER_PROBLEMS (gunicorn's 403 with the PROXY protocol or
    TLS client certificates, neither of which server/gunicorn.conf.py turns on) falls back to
    400 or 500 by its class. A 500 never says why."""
    problem = _SERVER_PROBLEMS.get(status) or _SERVER_PROBLEMS[500 if status >= 500 else 400]
    if problem.status == 500:
        detail = "An unexpected error occurred; it was logged."
    elif len(detail) > _SERVER_DETAIL_MAX:
        detail = detail[: _SERVER_DETAIL_MAX - 1] + "…"
    body = problem_document(problem.code, problem.title, problem.status, detail)
    return problem, _encode_json(body)


def _internal_error(exc: Exception) -> Response:
    log.exception(
        "unhandled error in %s %s",
        observability.printable(request.method),
        observability.printable(request.path),
    )
    return problem_response(errors.InternalError("An unexpected error occurred; it was logged."))
