"""Every exception tevo-hold raises, in one place.

All of them derive from :class:`TevoHoldError`. Each class carries the stable machine ``code`` and
the HTTP ``status`` that the API answers with, so the HTTP contract's table of errors *is* this
module: the Flask layer turns any :class:`TevoHoldError` into an RFC 9457 problem document without a
table of its own.

Tree::

    TevoHoldError
    ├── ConfigurationError          bad settings or wiring (at start-up, never per request)
    ├── InvalidRequest              400 invalid_request
    │   └── MalformedJSON           400 malformed_json
    ├── Unauthorized                401 unauthorized
    │   └── InvalidSignature        401 invalid_signature
    ├── NotFound                    404 not_found
    │   ├── ListingNotFound         404 listing_not_found
    │   └── HoldNotFound            404 hold_not_found
    ├── MethodNotAllowed            405 method_not_allowed
    ├── Conflict                    409 (abstract)
    │   ├── InsufficientQuantity    409 insufficient_quantity
    │   ├── GlobalIdConflict        409 global_id_conflict
    │   ├── HoldReleased            409 hold_released
    │   ├── HoldAlreadyInvoiced     409 hold_already_invoiced
    │   ├── OrderIdConflict         409 order_id_conflict
    │   └── RequestInProgress       409 request_in_progress
    ├── HoldExpired                 410 hold_expired
    ├── PayloadTooLarge             413 payload_too_large
    ├── UnsupportedMediaType        415 unsupported_media_type
    ├── RateLimited                 429 rate_limited
    ├── InternalError               500 internal_error
    ├── PosError                    502 pos_error
    ├── Unavailable                 503 unavailable
    │   └── NotReady                503 unavailable (GET /readyz; ``checks`` says what is down)
    └── PosTimeout                  504 pos_timeout

Driver errors (redis-py's connection and timeout errors) are translated into :class:`Unavailable`
once, where the Redis call is made, with ``raise ... from`` so the cause stays in the traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "ConfigurationError",
    "Conflict",
    "GlobalIdConflict",
    "HoldAlreadyInvoiced",
    "HoldExpired",
    "HoldNotFound",
    "HoldReleased",
    "InsufficientQuantity",
    "InternalError",
    "InvalidRequest",
    "InvalidSignature",
    "ListingNotFound",
    "MalformedJSON",
    "MethodNotAllowed",
    "NotFound",
    "NotReady",
    "OrderIdConflict",
    "PayloadTooLarge",
    "PosError",
    "PosTimeout",
    "RateLimited",
    "RequestInProgress",
    "TevoHoldError",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
]


class TevoHoldError(Exception):
    """Root of every tevo-hold error.

    ``code`` is the stable machine code of the problem document, ``status`` the HTTP status,
    ``title`` a short human summary that does not change between occurrences; the message given
    to the constructor is the ``detail`` of this occurrence.
    """

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or self.title
        super().__init__(self.detail)

    def extra(self) -> dict[str, Any]:
        """Members added to the problem document besides type/title/status/detail/code."""
        return {}


class ConfigurationError(TevoHoldError):
    """Raised at start-up when a setting or the wiring is wrong; the message names the setting."""

    code = "configuration_error"
    title = "Configuration error"


class InvalidRequest(TevoHoldError):
    """A field is missing, of the wrong type or out of bounds, the body names a member twice, or
    the body or a path id cannot be read (a broken chunked body, an id that is not UTF-8).
    ``errors`` maps field → messages."""

    code = "invalid_request"
    status = 400
    title = "Invalid request"

    def __init__(self, detail: str | None = None, errors: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.errors = dict(errors or {})

    def extra(self) -> dict[str, Any]:
        return {"errors": self.errors} if self.errors else {}


class MalformedJSON(InvalidRequest):
    """The body is not a well-formed JSON document (or not UTF-8, uses NaN/Infinity, or nests
    deeper than the decoder goes)."""

    code = "malformed_json"
    title = "Malformed JSON"


class Unauthorized(TevoHoldError):
    """No API key was sent, or it is neither one of ``TEVO_HOLD_API_KEYS`` nor a managed key
    (``tevo-hold keys create``) that is not revoked."""

    code = "unauthorized"
    status = 401
    title = "Unauthorized"


class InvalidSignature(Unauthorized):
    """Request signing is required (``TEVO_HOLD_REQUIRE_SIGNATURE``) and ``X-Signature`` is
    missing or is not the HMAC-SHA256 of this request's method, host, path and body under the
    API key sent."""

    code = "invalid_signature"
    title = "Invalid signature"


class NotFound(TevoHoldError):
    """No resource at this URL."""

    code = "not_found"
    status = 404
    title = "Not found"


class ListingNotFound(NotFound):
    """The POS knows no listing with this ``remote_id``."""

    code = "listing_not_found"
    title = "Listing not found"


class HoldNotFound(NotFound):
    """No hold was ever made (or is still remembered) under this ``global_id``."""

    code = "hold_not_found"
    title = "Hold not found"


class MethodNotAllowed(TevoHoldError):
    """The URL exists but not for this HTTP method; ``allowed`` lists the methods it takes."""

    code = "method_not_allowed"
    status = 405
    title = "Method not allowed"

    def __init__(self, detail: str | None = None, allowed: list[str] | None = None) -> None:
        super().__init__(detail)
        self.allowed = sorted(allowed or [])


class Conflict(TevoHoldError):
    """Base of the 409 answers: the request is well formed but conflicts with the state."""

    status = 409
    code = "conflict"
    title = "Conflict"


class InsufficientQuantity(Conflict):
    """The listing has fewer tickets available than asked for. ``available`` says how many, when
    the seller's POS tells."""

    code = "insufficient_quantity"
    title = "Insufficient quantity"

    def __init__(self, detail: str | None = None, available: int | None = None) -> None:
        super().__init__(detail)
        # The problem document's schema has it an integer, 0 or more: an adapter may pass on what
        # its POS sent, so a negative count is 0, and anything but an integer (a bool, a float, a
        # string) is None, left out of the document.
        if isinstance(available, bool) or not isinstance(available, int):
            available = None
        self.available = None if available is None else max(available, 0)

    def extra(self) -> dict[str, Any]:
        return {} if self.available is None else {"available": self.available}


class GlobalIdConflict(Conflict):
    """This ``global_id`` already names a hold of another ``remote_id`` or ``quantity``."""

    code = "global_id_conflict"
    title = "Global id conflict"


class HoldReleased(Conflict):
    """Invoice of a hold that was released: its tickets went back to the listing."""

    code = "hold_released"
    title = "Hold released"


class HoldAlreadyInvoiced(Conflict):
    """Release of a hold that was already invoiced (sold): a sale is never undone by a release."""

    code = "hold_already_invoiced"
    title = "Hold already invoiced"


class OrderIdConflict(Conflict):
    """The hold was invoiced (or is being invoiced) under another ``tevo_order_id``."""

    code = "order_id_conflict"
    title = "Order id conflict"


class RequestInProgress(Conflict):
    """Another request for this ``global_id`` is running; retry after ``retry_after`` seconds."""

    code = "request_in_progress"
    title = "Request in progress"

    def __init__(self, detail: str | None = None, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = max(1, int(retry_after))


class HoldExpired(TevoHoldError):
    """The hold lapsed before the invoice and its tickets are no longer available."""

    code = "hold_expired"
    status = 410
    title = "Hold expired"


class PayloadTooLarge(TevoHoldError):
    """The request body is larger than the documented limit."""

    code = "payload_too_large"
    status = 413
    title = "Payload too large"


class UnsupportedMediaType(TevoHoldError):
    """The request body is not declared as ``application/json``."""

    code = "unsupported_media_type"
    status = 415
    title = "Unsupported media type"


class RateLimited(TevoHoldError):
    """This API key sent more requests than ``TEVO_HOLD_RATE_LIMIT`` allows; retry after
    ``retry_after`` seconds. ``limit`` is the limit that was hit (``"600 per 1 minute"``); of
    several, the one whose wait is the longest, which ``retry_after`` is for."""

    code = "rate_limited"
    status = 429
    title = "Rate limited"

    def __init__(
        self, detail: str | None = None, retry_after: int = 1, limit: str | None = None
    ) -> None:
        super().__init__(detail)
        self.retry_after = max(1, int(retry_after))
        self.limit = limit

    def extra(self) -> dict[str, Any]:
        return {} if self.limit is None else {"limit": self.limit}


class InternalError(TevoHoldError):
    """An unexpected failure. The answer never carries a trace; the server log does."""


class PosError(TevoHoldError):
    """The POS refused the call or failed (for example answered 5xx).

    ``outcome_unknown`` is True when the POS may have acted before it failed (a 5xx answer, say):
    a hold is then compensated (released in the POS) as after a :class:`PosTimeout`, where a
    plain refusal leaves nothing to give back.
    """

    code = "pos_error"
    status = 502
    title = "POS error"

    def __init__(self, detail: str | None = None, *, outcome_unknown: bool = False) -> None:
        super().__init__(detail)
        self.outcome_unknown = outcome_unknown


class Unavailable(TevoHoldError):
    """Redis or the POS could not be reached; nothing was changed. Safe to retry."""

    code = "unavailable"
    status = 503
    title = "Service unavailable"

    retry_after: int = 1


class NotReady(Unavailable):
    """``GET /readyz``: Redis (or the POS, when its adapter can tell) does not answer.
    ``checks`` maps each dependency to ``ok``, ``unavailable`` or ``unknown``."""

    def __init__(self, detail: str | None = None, checks: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.checks = dict(checks or {})

    def extra(self) -> dict[str, Any]:
        return {"checks": self.checks}


class PosTimeout(TevoHoldError):
    """The POS did not answer in time: the outcome of the call there is unknown."""

    code = "pos_timeout"
    status = 504
    title = "POS timeout"
