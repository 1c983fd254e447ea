"""An adapter for a POS behind an HTTP API: three plain calls, in any language.

The outbound contract (its defaults mirror tevo-hold's own API; paths, the auth header and the
timeouts are settings; each path starts with "/" and is appended to the base URL, which has
no query or fragment, and which requests must be able to call: anything else is refused when
the adapter is made, a ConfigurationError naming the setting and never the URL's password):

- ``POST {base}/holds``    ``{"remote_id", "quantity", "global_id", "expires_at"}``
- ``POST {base}/releases`` ``{"global_id", "remote_id", "quantity"}``
- ``POST {base}/invoices`` ``{"global_id", "tevo_order_id", "remote_id", "quantity"}``

Any 2xx is success; 404 means no such listing, 409 not enough tickets (a JSON body's ``available``,
an integer, is passed on: a negative one as 0, anything else left out); any other answer is a
refusal. A 3xx too: a redirect is never followed (a 301, 302 or 303 would be re-sent as a GET
without its body, whose 200, a login page say, would count as success; a 307 or 308 would send the
call where nobody configured it), and where it points goes to the log, to fix ``TEVO_HOLD_POS_URL``
by; nothing was done, but after a 303 (See Other: the POS acted, and points to the outcome), whose
outcome is unknown. A 404 on a release counts as done (nothing to give back): the contract gives a
404 no body to tell it from a wrong path's, so a wrong ``TEVO_HOLD_POS_RELEASE_PATH`` looks the
same, logged at WARNING only. The API key goes in a configurable header. Every call carries the
``global_id``: the POS must treat each call as idempotent per ``global_id`` (a second hold of one
global_id holds nothing more, and so on), which is what makes retries safe. Optionally, ``GET
{base}{health_path}`` answering 2xx tells ``/readyz`` the POS is up (a redirect is not followed
there either: the POS is not ready).

Retries: connection failures, timeouts and 5xx answers are retried with jittered exponential
backoff (tenacity), inside a deadline (``budget``) that bounds the whole call, so an endpoint
answers TEvo in time even when the POS hangs. What is left when the budget runs out:
unreachable → :class:`Unavailable` (nothing was sent); no answer in time → :class:`PosTimeout`
(the outcome is unknown; tevo-hold compensates); 5xx → :class:`PosError` whose outcome is unknown
too (the POS may have acted before it failed; a hold is compensated). Once an attempt may have
acted (no answer, or a 5xx), no later answer but a success tells what happened: a retry refused
(404, 409, another 4xx) or unreachable leaves the outcome unknown all the same, and the call fails
with :class:`PosTimeout` (an attempt got no answer) or a :class:`PosError` whose outcome is unknown
(a 5xx). Only a refusal of the first attempt is definite. A release is the exception: a 404 of any
attempt means no such listing, so nothing to give back, and the release is done.

The deadline counts all of an attempt: connecting, the TLS handshake, sending, the status line,
the headers and the body. A timeout bounds each socket operation only, so at the deadline a
watchdog shuts the attempt's socket down, whatever it waits for. A status line or headers cut
off so are no answer (:class:`PosTimeout`); the body is read against the deadline too (64 KiB
of it at most), but the status line already said what the POS did: a body cut off is left
there and the call goes by its status. What no deadline bounds is name resolution
(``getaddrinfo`` has no timeout, and cannot be interrupted): an attempt whose deadline passes
while the POS's name is being resolved ends once it is, before connecting (:class:`Unavailable`:
nothing was sent), however late; hence a POS named by its address, or names resolved through a
local cache (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NoReturn

import requests
import tenacity
import urllib3
import urllib3.connection
import urllib3.poolmanager
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from .. import errors
from ..settings import PREFIX, redact_url, url_scheme
from .base import PosAdapter

__all__ = ["DEFAULT_PATHS", "HttpPosAdapter"]

DEFAULT_PATHS: Mapping[str, str] = {
    "hold": "/holds",
    "release": "/releases",
    "invoice": "/invoices",
}

log = logging.getLogger("tevo_hold")
#: How much of an answer's body is read (the log shows 500 characters of it), and in what chunks.
_MAX_BODY = 64 * 1024
_CHUNK = 8192


class _Retryable(Exception):
    """An attempt that may be retried: the final error to raise if none is left."""

    def __init__(self, final: errors.TevoHoldError) -> None:
        super().__init__(final.detail)
        self.final = final


class HttpPosAdapter(PosAdapter):
    """Forwards hold, release and invoice to a POS over HTTP, on one pooled ``requests.Session``.

    ``timeout`` bounds each attempt (from connecting to the answer's last byte), ``budget`` the
    whole call with its retries (``retries`` at most). ``ca_file``: a PEM file of the CAs to
    trust for an https:// POS, in place of requests' bundle. ``session`` may be given (tests,
    custom TLS, proxies).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        auth_header: str = "X-API-Key",
        paths: Mapping[str, str] | None = None,
        timeout: float = 2.0,
        budget: float = 3.0,
        retries: int = 2,
        session: requests.Session | None = None,
        health_path: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        _check_base_url(base_url)
        _check_auth_header(auth_header, api_key)
        if api_key and auth_header.lower() == "authorization" and _has_credentials(base_url):
            # requests sends them as Basic authorization, in place of the key's header
            raise errors.ConfigurationError(
                f"{PREFIX}POS_URL carries credentials (user:password@), which would be sent as "
                f"Basic authorization in place of the Authorization header that "
                f"{PREFIX}POS_AUTH_HEADER={auth_header!r} gives {PREFIX}POS_API_KEY: the POS "
                "would never see the key. Drop the credentials from the URL, or send the key "
                "in another header"
            )
        self.base_url = base_url.rstrip("/")
        self.paths = {**DEFAULT_PATHS, **(paths or {})}
        for operation, path in self.paths.items():
            _check_path(f"{PREFIX}POS_{operation.upper()}_PATH", path)
        if health_path:
            _check_path(f"{PREFIX}POS_HEALTH_PATH", health_path)
        self.timeout = timeout
        self.budget = budget
        self.retries = retries
        self.health_path = health_path
        if ca_file:
            _check_ca_file(ca_file)
        #: Passed on each call, not only set on the session: requests puts REQUESTS_CA_BUNDLE
        #: in place of a session's own ``verify``, but never of a call's.
        self.verify = ca_file or None
        self.session = session or requests.Session()
        if ca_file:
            self.session.verify = ca_file
        for prefix in ("http://", "https://"):
            # requests' own transport (a session's default) gives way to one whose sockets the
            # deadline can shut down; a transport of the caller's own (custom TLS) is kept.
            if type(self.session.adapters.get(prefix)) is HTTPAdapter:
                self.session.adapters[prefix].close()
                self.session.mount(prefix, _DeadlineTransport())
        self.session.headers["Accept"] = "application/json"
        if api_key:
            self.session.headers[auth_header] = api_key

    def hold(self, *, global_id: str, remote_id: str, quantity: int, expires_at: datetime) -> None:
        body = {
            "remote_id": remote_id,
            "quantity": quantity,
            "global_id": global_id,
            "expires_at": expires_at.isoformat().replace("+00:00", "Z"),
        }
        self._post("hold", body)

    def release(self, *, global_id: str, remote_id: str, quantity: int) -> None:
        body = {"global_id": global_id, "remote_id": remote_id, "quantity": quantity}
        self._post("release", body, done_if_no_listing=True)

    def invoice(
        self, *, global_id: str, remote_id: str, quantity: int, tevo_order_id: int | str
    ) -> None:
        body = {
            "global_id": global_id,
            "tevo_order_id": tevo_order_id,
            "remote_id": remote_id,
            "quantity": quantity,
        }
        self._post("invoice", body)

    def ready(self) -> bool | None:
        """``GET {base}{health_path}`` answers 2xx within ``timeout``; None with no health path."""
        if not self.health_path:
            return None
        try:
            response = self.session.get(
                self.base_url + self.health_path,
                timeout=self.timeout,
                allow_redirects=False,
                verify=self.verify,
            )
        except requests.RequestException:
            return False
        with response:
            return 200 <= response.status_code < 300  # not response.ok, which a 3xx is

    def target(self) -> str:
        """The base URL without its credentials (it has no query or fragment: __init__), the
        host in lower case and a default port left out: ``https://user:pw@POS.example:443/api/``
        is ``https://pos.example/api``."""
        url = urllib.parse.urlsplit(self.base_url)  # its scheme is http or https (__init__)
        host = url.netloc.rpartition("@")[2].lower()
        host = host.removesuffix({"http": ":80", "https": ":443"}[url.scheme])
        return f"{url.scheme}://{host}{url.path.rstrip('/')}"

    def close(self) -> None:
        self.session.close()

    # -- plumbing --------------------------------------------------------------------------
    def _post(
        self, operation: str, body: dict[str, Any], *, done_if_no_listing: bool = False
    ) -> None:
        """POST ``body``, retried within the budget. ``done_if_no_listing``: a 404 (no such
        listing) means there is nothing to do, whatever an earlier attempt did (a release)."""
        url = self.base_url + self.paths[operation]
        deadline = time.monotonic() + self.budget
        retrying = tenacity.Retrying(
            # stop_before_delay also counts the coming wait, so no attempt starts past the budget
            stop=tenacity.stop_after_attempt(self.retries + 1)
            | tenacity.stop_before_delay(self.budget),
            wait=tenacity.wait_exponential(multiplier=0.05, max=0.5)
            + tenacity.wait_random(0, 0.05),
            retry=tenacity.retry_if_exception_type(_Retryable),
            reraise=True,
        )
        unknown: list[errors.TevoHoldError] = []  # what the attempts that may have acted got
        try:
            for attempt in retrying:
                with attempt:
                    try:
                        self._attempt(operation, url, body, deadline)
                    except _Retryable as exc:
                        if _outcome_unknown(exc.final):
                            unknown.append(exc.final)
                        raise
        except _Retryable as exc:
            final, cause = exc.final, exc.__cause__
        except errors.TevoHoldError as exc:  # a refusal (404, 409, another 4xx): not retried
            final, cause = exc, exc
        else:
            return
        if done_if_no_listing and isinstance(final, errors.ListingNotFound):
            return  # no such listing: nothing to give back
        raise _unless_unknown(final, operation, unknown) from cause

    def _attempt(self, operation: str, url: str, body: dict[str, Any], deadline: float) -> None:
        started = time.monotonic()
        per_attempt = max(min(self.timeout, deadline - started), 0.05)
        no_answer = f"The POS did not answer {operation} in {per_attempt:.1f} s."
        # A urllib3 Timeout (requests passes it on as it is): its total bounds connecting,
        # sending and the wait for the status line together, where a number would bound each
        # alone; still each socket operation alone. The watchdog bounds the attempt as a whole.
        timeout: Any = urllib3.Timeout(total=per_attempt)
        with _Watchdog(started + per_attempt) as watchdog:
            try:
                response = self.session.post(
                    url,
                    json=body,
                    timeout=timeout,
                    stream=True,
                    allow_redirects=False,
                    verify=self.verify,
                )
            except requests.ConnectionError as exc:
                if _never_sent(exc):
                    # The address goes to the log (without a password), never to TEvo.
                    log.warning("The POS at %s is unreachable: %s", redact_url(url), exc)
                    raise _Retryable(errors.Unavailable("The POS is unreachable.")) from exc
                if watchdog.fired:  # cut off at the deadline, waiting for the answer
                    raise _Retryable(errors.PosTimeout(no_answer)) from exc
                raise _Retryable(
                    errors.PosTimeout(
                        f"The POS dropped the {operation} call: the outcome is unknown."
                    )
                ) from exc
            except requests.Timeout as exc:
                raise _Retryable(errors.PosTimeout(no_answer)) from exc
            except requests.RequestException as exc:
                # requests refused to make the call (an InvalidURL, an InvalidHeader: nothing
                # was sent). Its message may show the URL with its password, or the key: the log
                # gets its kind and the URL without the password, and the error no trace of it.
                log.error(
                    "the %s call to the POS at %s could not be made: %s",
                    operation,
                    redact_url(url),
                    type(exc).__name__,
                )
                raise errors.PosError(
                    f"The {operation} call to the POS could not be made: nothing was done."
                ) from None
            with response:
                if not watchdog.attach(response):
                    # The deadline cut the headers off: what http.client made of the part that
                    # came (an end of headers, at the end of the stream) is no answer.
                    raise _Retryable(errors.PosTimeout(no_answer))
                content = _read_body(response, started + per_attempt, watchdog)
        if 300 <= response.status_code < 400:
            _redirected(operation, url, response)
        _check(operation, response.status_code, content)


def _check_base_url(url: str) -> None:
    """ConfigurationError unless ``url`` is an http:// or https:// URL that requests can call,
    with no query or fragment (the calls' paths are appended to it).

    A URL requests cannot call (a port past 65535, no host, a space in the host) was taken, and
    then every call failed with requests' InvalidURL, whose message, in the log, showed the URL
    with its password. The message names the part at fault, never the URL.
    """
    if not url.startswith(("http://", "https://")):
        raise errors.ConfigurationError(
            f"{PREFIX}POS_URL {url_scheme(url)}: expected an http:// or https:// URL"
        )
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is no number from 0 to 65535, an unclosed [IPv6 address
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise errors.ConfigurationError(
            f"{PREFIX}POS_URL: its host and port cannot be read: expected https://host[:port]"
            "[/path], the port a number from 1 to 65535, an IPv6 address in brackets "
            f"([::1]:8080) ({_PASSWORD_HINT})"
        )
    if not parts.hostname:
        raise errors.ConfigurationError(
            f"{PREFIX}POS_URL: it names no host: expected https://host[:port][/path]"
        )
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise errors.ConfigurationError(
            f"{PREFIX}POS_URL: it holds a blank or a control character (one left over from an "
            "env file, say), which the calls' paths would be appended after: remove it, or "
            "percent-encode it (%20)"
        )
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise errors.ConfigurationError(
            f"{PREFIX}POS_URL: it has a query or a fragment (?... or #...), which the calls' "
            f"paths would be appended to: drop it; the POS's key goes in {PREFIX}POS_API_KEY "
            f"({_PASSWORD_HINT})"
        )
    try:
        requests.Request("POST", url + "/").prepare()
    except Exception as exc:  # its message shows the URL
        raise errors.ConfigurationError(
            f"{PREFIX}POS_URL: requests cannot call it ({type(exc).__name__}): its host is no "
            "host name or address (a space in it, say)"
        ) from None


def _has_credentials(url: str) -> bool:
    """Whether ``url`` (an http(s) URL _check_base_url took) has a user or a password before
    an ``@``: what requests sends as Basic authorization (as it does, by either alone)."""
    parts = urllib.parse.urlsplit(url)
    return bool(parts.username or parts.password)


def _check_ca_file(path: str) -> None:
    """ConfigurationError unless ``path`` (TEVO_HOLD_POS_CA_FILE) is a readable file of PEM
    certificates: else every call to the POS would fail its TLS handshake, one by one."""
    try:
        with open(path, "rb"):
            pass
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as exc:  # before OSError, which it is a kind of
        raise errors.ConfigurationError(
            f"{PREFIX}POS_CA_FILE={path!r}: it holds no PEM certificate that can be loaded "
            f"({exc.reason or exc}): expected the POS's CA certificate(s), -----BEGIN "
            "CERTIFICATE-----"
        ) from None
    except OSError as exc:
        raise errors.ConfigurationError(
            f"{PREFIX}POS_CA_FILE={path!r}: it cannot be read ({exc.strerror or exc}): expected "
            "the path of a PEM file of the POS's CA certificate(s)"
        ) from None


#: A header's name: an HTTP token (RFC 9110, 5.1 and 5.6.2).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _check_auth_header(name: str, key: str | None) -> None:
    """ConfigurationError unless ``key`` can be sent in the header ``name``, naming the setting
    at fault and never showing the key.

    Either was taken as it was, and then every call failed: requests refuses a value with a line
    break or a blank at its start (InvalidHeader, as http.client does), http.client one outside
    Latin-1; the POS refuses a name that is no token (a blank in it: requests lets it through)
    and sees another key than one with a blank at its end (HTTP strips it) or a control
    character. Every hold, release and invoice answered 502, for a CR at the end of the key
    that an env file written on Windows leaves there.
    """
    if not _TOKEN.fullmatch(name):
        raise errors.ConfigurationError(
            f"{PREFIX}POS_AUTH_HEADER={name!r}: not a header name (letters, digits and "
            "!#$%&'*+-.^_`|~ only: no blank, colon or line break), e.g. X-API-Key or "
            "Authorization"
        )
    if not key:
        return
    if "\r" in key or "\n" in key:
        held = "a line break (a CR or LF that an env file written on Windows leaves, say)"
    elif key != key.strip():
        held = "a blank at its start or end, which HTTP strips: the POS would see another key"
    elif any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
        held = "a control character"
    elif not all(ord(ch) < 0x100 for ch in key):
        held = "a character outside Latin-1, which a header cannot carry"
    else:
        try:
            requests.utils.check_header_validity((name, key))
        except requests.exceptions.InvalidHeader:  # what requests refuses, should it refuse more
            held = "something requests refuses in a header"
        else:
            return
    raise errors.ConfigurationError(
        f"{PREFIX}POS_API_KEY cannot be sent in the {name} header: it holds {held}; fix the "
        "value (it is not shown)"
    )


#: Why a URL with a password may not read as meant.
_PASSWORD_HINT = "a password holding /, ? or # must be percent-encoded: %2F, %3F, %23"


def _check_path(setting: str, path: str) -> None:
    """ConfigurationError unless ``path`` starts with "/". It is appended to the base URL as it
    is: ``releases`` made ``{base}releases`` (``/apireleases``), where a POS answers 404, which
    a release counts as done: TEvo was told "released" while the POS kept the tickets."""
    if not path.startswith("/"):
        raise errors.ConfigurationError(
            f"{setting}={path!r}: a path must start with '/' (it is appended to "
            f"{PREFIX}POS_URL): write {'/' + path!r}"
        )


def _outcome_unknown(error: errors.TevoHoldError) -> bool:
    """True when the attempt that failed so may have acted: no answer, or a 5xx."""
    return isinstance(error, errors.PosTimeout) or (
        isinstance(error, errors.PosError) and error.outcome_unknown
    )


def _unless_unknown(
    final: errors.TevoHoldError, operation: str, unknown: list[errors.TevoHoldError]
) -> errors.TevoHoldError:
    """``final``, unless an attempt may have acted (``unknown``: what those attempts got).

    Whatever a later attempt was answered (a refusal, a 409 of a POS that acted on the first, a
    connection refused) says nothing of that attempt: its outcome decides, and is unknown. A
    PosTimeout if an attempt got no answer, else a PosError whose ``outcome_unknown`` is set
    (a 5xx); the service compensates a hold, and retries an invoice, after either.
    """
    if not unknown or isinstance(final, errors.PosTimeout):
        return final
    if any(isinstance(error, errors.PosTimeout) for error in unknown):
        return errors.PosTimeout(
            f"An attempt at the {operation} got no answer and a retry was answered {final.code}: "
            "the outcome is unknown."
        )
    if _outcome_unknown(final):
        return final
    return errors.PosError(
        f"An attempt at the {operation} failed (5xx) and a retry was answered {final.code}: "
        "the outcome is unknown.",
        outcome_unknown=True,
    )


def _never_sent(exc: requests.ConnectionError) -> bool:
    """True when the connection was never made (refused, DNS, connect timeout), or TLS refused
    the POS's certificate (the handshake fails before a byte of the request is sent)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    seen: BaseException | None = exc
    while seen is not None:
        reason = getattr(seen, "reason", None)
        for error in (seen, reason):
            if isinstance(error, NewConnectionError | ssl.SSLCertVerificationError):
                return True
        if isinstance(reason, urllib3.exceptions.SSLError) and reason.args:
            seen = reason.args[0] if isinstance(reason.args[0], BaseException) else None
            continue
        seen = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
    return False


def _read_body(response: requests.Response, until: float, watchdog: _Watchdog) -> bytes:
    """The body of ``response``, as much of it as comes by ``until`` (``_MAX_BODY`` at most).

    The status line has already told what the POS did; the body only adds a detail (a 409's
    ``available``, what the log shows). A read timeout bounds each socket read, not the body: one
    sent a byte at a time would hold the call (and the worker's lease, which assumes a call ends
    within the budget) as long as the POS likes. So at ``until`` the attempt's ``watchdog`` shuts
    the socket down, which ends the read in progress; such a connection is closed, never reused.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(_CHUNK):
            chunks.append(chunk)
            size += len(chunk)
            if size >= _MAX_BODY or time.monotonic() >= until:
                break  # the rest unread: closing the response closes the connection
    except requests.RequestException:
        pass  # cut off at the deadline, or by the POS: what came is all there is
    if watchdog.fired:
        response.raw.close()
    return b"".join(chunks)


#: The watchdog of the attempt the current thread is making, if any (see _Watchdog).
_current = threading.local()


class _Watchdog:
    """While in its ``with`` block (one attempt, made by the current thread), shuts the socket of
    the attempt down at ``until``, unless its answer has come whole by then.

    A timeout bounds each socket operation, never a whole attempt: a POS (or a proxy) that sends
    its status line, its headers or its body a byte at a time, each in time, would hold the call
    (and the worker's lease, which assumes a call ends within the budget) as long as it likes.
    Shutting the socket down ends whatever read or write is in progress on it.

    The socket is handed to it by the connection that the attempt uses (:class:`_Watched`, the
    connections of the pools of :class:`_DeadlineTransport`): a new one as soon as it is
    connected (before a TLS handshake), a reused one as the request is sent on it. It holds a
    duplicate of the socket's descriptor, so that the socket stays this attempt's to shut down
    even when urllib3 closes its own descriptor (whose number another socket may then get).
    Once the body is whole, urllib3 hands the connection back to the pool, inside the last read,
    for another call to take: the watchdog then leaves it alone (it looks before it shuts; what
    it shuts a moment before that hand-back is a connection the pool finds dead and replaces).
    Before the answer is handed to it (:meth:`attach`), the connection is the attempt's alone:
    urllib3 gives it back only once the body has been read.
    """

    def __init__(self, until: float) -> None:
        self.fd: int | None = None
        self._watched: int | None = None  # the descriptor number the duplicate is of
        self._raw: Any = None  # the answer's urllib3 response, once attached
        self.fired = False  # the socket was shut down at the deadline
        self._expired = False  # the deadline has passed
        self._over = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(until - time.monotonic(), 0.0), self._shut)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        _current.watchdog = self
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        _current.watchdog = None
        self._timer.cancel()
        with self._lock:
            self._over = True
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None

    def watch(self, fileno: int) -> bool:
        """Watch the socket whose descriptor is ``fileno`` (the attempt's connection). False if
        the deadline has already passed: the socket is shut down at once."""
        with self._lock:
            if self._over or self._raw is not None or fileno == self._watched:
                return not self._expired
            if self.fd is not None:
                os.close(self.fd)
            self.fd, self._watched = os.dup(fileno), fileno
            if self._expired:
                self._shutdown()
            return not self._expired

    def attach(self, response: requests.Response) -> bool:
        """The answer's headers have come: from now on the socket is shut down only while the
        body is not whole. False if it was shut down already (the headers were cut off)."""
        with self._lock:
            self._raw = response.raw
            return not self.fired

    def _shut(self) -> None:
        with self._lock:
            self._expired = True
            if self._over or self.fd is None:
                return  # over, or no socket yet (the name of the POS is being resolved)
            if self._raw is not None:
                original = getattr(self._raw, "_original_response", None)
                if original is None or original.isclosed():
                    return  # the body is whole: the connection may be another call's now
            self._shutdown()

    def _shutdown(self) -> None:
        self.fired = True
        with contextlib.suppress(OSError):
            assert self.fd is not None
            sock = socket.socket(fileno=self.fd)  # borrows the duplicate, never closes it
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the read or write in progress on it ends
            finally:
                sock.detach()


def _watch(sock: socket.socket) -> bool:
    """Hand ``sock`` to the watchdog of the current thread's attempt, if any; see _Watchdog."""
    watchdog: _Watchdog | None = getattr(_current, "watchdog", None)
    return watchdog is None or watchdog.watch(sock.fileno())


class _Watched(urllib3.connection.HTTPConnection):
    """A connection that hands its socket to the current attempt's watchdog: a new one once
    connected (before any TLS handshake), a reused one before each request is sent on it."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        if not _watch(sock):  # the deadline passed while the POS's name was being resolved
            sock.close()
            raise ConnectTimeoutError(self, "the deadline passed before the POS was connected to")
        return sock

    def send(self, data: Any) -> None:
        if self.sock is not None:
            _watch(self.sock)
        super().send(data)


class _WatchedHTTPS(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _WatchedPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _Watched


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPS


class _DeadlineTransport(HTTPAdapter):
    """requests' transport, its pools making :class:`_Watched` connections (directly or through
    an HTTP proxy; a SOCKS proxy's pools are left as they are, and bound each read only)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        _watched_pools(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        _watched_pools(manager)
        return manager


def _watched_pools(manager: urllib3.PoolManager) -> None:
    if manager.pool_classes_by_scheme == urllib3.poolmanager.pool_classes_by_scheme:
        manager.pool_classes_by_scheme = {"http": _WatchedPool, "https": _WatchedHTTPSPool}


def _redirected(operation: str, url: str, response: requests.Response) -> NoReturn:
    """Refuse the 3xx ``response`` to the call of ``operation`` at ``url``, unfollowed and not
    retried (the next attempt would be redirected too).

    A 303 (See Other) points to the outcome of a request the server did act on, whatever that
    outcome was: a PosError whose outcome is unknown (a hold is compensated). Any other 3xx says
    the call belongs elsewhere (a moved URL, an http-to-https front, a single sign-on proxy's
    login page) and that nothing was done: a definite refusal. Where it points goes to the log
    (without a password), never to TEvo."""
    status = response.status_code
    location = response.headers.get("Location")
    target = redact_url(urllib.parse.urljoin(url, location))[:500] if location else "nowhere"
    acted = status == 303
    log.warning(
        "the POS answered %s %s, a redirect to %s: not followed, %s; TEVO_HOLD_POS_URL (or the "
        "path setting of the call) should name where the POS answers",
        operation,
        status,
        target,
        "the outcome is unknown" if acted else "nothing was done",
    )
    if acted:
        raise errors.PosError(
            f"The POS answered the {operation} with a redirect (303), which is not followed: "
            "the outcome is unknown.",
            outcome_unknown=True,
        )
    raise errors.PosError(
        f"The POS answered the {operation} with a redirect ({status}), which is not followed: "
        "nothing was done."
    )


def _available(content: bytes) -> Any:
    """The ``available`` member of a 409's body as the POS sent it (InsufficientQuantity keeps
    only a count of tickets of it), or None if the body is not a JSON object."""
    try:
        payload = json.loads(content)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return None
    return payload.get("available") if isinstance(payload, dict) else None


def _check(operation: str, status: int, content: bytes) -> None:
    if 200 <= status < 300:
        return
    # What the POS said goes to the log, for its operators: the errors' details reach TEvo (and
    # the audit trail), and a POS's error page may show its internals.
    text = content[:2000].decode("utf-8", "replace")[:500].strip()
    log.warning("the POS answered %s %s: %s", operation, status, text)
    if status == 404:
        raise errors.ListingNotFound(f"The POS knows no such listing ({operation}: {status}).")
    if status == 409:
        raise errors.InsufficientQuantity(
            f"The POS has not enough tickets ({operation}: {status}).",
            available=_available(content),
        )
    if status >= 500:  # it may have acted before it failed (or a gateway lost its answer)
        failed = f"The POS failed the {operation}: {status}."
        raise _Retryable(errors.PosError(failed, outcome_unknown=True))
    raise errors.PosError(f"The POS refused the {operation}: {status}.")
