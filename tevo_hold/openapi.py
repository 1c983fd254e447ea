"""The OpenAPI 3.1 document of the HTTP API, and the reference page that renders it.

The document is generated, never written by hand: apispec turns the marshmallow schemas of
:mod:`tevo_hold.schemas` into JSON Schema, and each operation's answers are built from the error
classes of :mod:`tevo_hold.errors` (their ``code``, ``status``, ``title`` and docstring), so the
codes, statuses and field bounds it states are the ones the code has. What only a person can say,
what an answer means for this call and what the caller should do next, is the :data:`OPERATIONS`
table below, one entry per view of :func:`tevo_hold.web.create_blueprint`.

The app serves the document at ``GET /v1/openapi.json`` and renders it at ``GET /docs`` with the
Swagger UI files that the ``flask-swagger-ui`` package ships (no CDN, no network). ``make docs``
writes it to ``docs/openapi.json``; a test fails when that file differs from what the app serves.
Run ``python -m tevo_hold.openapi [PATH]`` to print or write it.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Response, current_app, render_template_string, send_from_directory, url_for
from marshmallow import Schema

from . import errors
from .observability import REQUEST_ID_PATTERN
from .schemas import (
    EXAMPLE_GLOBAL_ID,
    EXAMPLE_ORDER_ID,
    EXAMPLE_RELEASED_GLOBAL_ID,
    EXAMPLE_REMOTE_ID,
    EventSchema,
    HoldDetailSchema,
    HoldRequestSchema,
    HoldSchema,
    InvoiceRequestSchema,
    ReleaseRequestSchema,
)
from .validation import MAX_ID_LENGTH
from .web import PROBLEM_TYPE, SERVER_PROBLEMS

__all__ = ["OPERATIONS", "Answer", "Operation", "build_spec", "document", "main"]

OPENAPI_VERSION = "3.1.0"
PROBLEM_JSON = "application/problem+json"
JSON = "application/json"
#: The Swagger UI files GET /docs/<asset> serves, from the flask-swagger-ui package, with the
#: media type each is served as (named here: mimetypes' guess depends on the host's tables).
DOCS_ASSETS: Mapping[str, str] = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}


@dataclass(frozen=True)
class Answer:
    """One problem ``code`` an operation can answer, and what the caller should do about it.

    ``meaning`` replaces the error class's docstring where the operation gives it a narrower
    sense; ``advice`` says what to do: retry, give up, fix the request or call the seller.
    """

    error: type[errors.TevoHoldError]
    advice: str
    meaning: str | None = None

    @property
    def code(self) -> str:
        return self.error.code

    @property
    def status(self) -> int:
        return self.error.status

    def explain(self) -> str:
        """What the code means here: ``meaning``, or the first paragraph of the class docstring."""
        if self.meaning:
            return self.meaning
        doc = (self.error.__doc__ or self.error.title).strip().split("\n\n")[0]
        return re.sub(r"``([^`]+)``", r"`\1`", " ".join(doc.split()))


@dataclass(frozen=True)
class Operation:
    """An operation of the API: the view that answers it and everything its docs say."""

    view: str
    method: str
    path: str
    operation_id: str
    tag: str
    summary: str
    description: str
    success: int
    success_description: str
    success_schema: Mapping[str, Any]
    success_example: Any
    request: type[Schema] | None = None
    request_examples: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    parameters: Sequence[Mapping[str, Any]] = ()
    answers: Sequence[Answer] = ()
    links: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    replays: bool = False
    public: bool = False
    success_media: str = "application/json"
    #: Further media types the success answer may come as (same schema; the example is
    #: success_media's).
    other_media: Sequence[str] = ()


# -- what each code means to the caller ---------------------------------------------------------

_FIX = "Do not retry it unchanged: fix the request (a bug on the caller's side)."
_SAME_BODY = "Retrying with the same body is safe: every call is idempotent per global_id."


def _invalid(body: bool = True) -> list[Answer]:
    answers = [
        Answer(
            errors.InvalidRequest,
            f"{_FIX} `errors`, present when fields are at fault, maps each offending field "
            "to its messages.",
            (
                "A field is missing, of the wrong type or out of bounds, or the body is not a "
                "JSON object, names a member twice or cannot be read (a malformed chunked "
                "encoding)."
                if body
                else "The global_id is longer than 255 characters, or its bytes are not UTF-8 "
                "(or encode a lone surrogate)."
            ),
        )
    ]
    if body:
        answers.append(
            Answer(
                errors.MalformedJSON,
                _FIX,
                "The body is not a well-formed JSON document (or not UTF-8, uses NaN/Infinity, "
                "or nests arrays and objects too deeply to read).",
            )
        )
    return answers


_UNAUTHORIZED = Answer(
    errors.Unauthorized,
    "Do not retry until the key is fixed: send one of the seller's API keys in `X-API-Key` "
    "(or `Authorization: Bearer`). The seller issues and rotates keys.",
)
_SIGNATURE = Answer(
    errors.InvalidSignature,
    "Do not retry until the signature is fixed: sign `METHOD host path?` (the `Host` header "
    "lower-cased without its port, the path as sent) followed by the body, or with none (and "
    "for a `GET`, whose body is never read) the query string, with the key: base64 "
    "HMAC-SHA256, in `X-Signature`. The README gives an example.",
    "The seller requires signed requests (TEVO_HOLD_REQUIRE_SIGNATURE) and `X-Signature` is "
    "missing or does not match the request.",
)
_RATE_LIMITED = Answer(
    errors.RateLimited,
    "Retry after the `Retry-After` seconds with the same body; nothing was changed.",
    "This key sent more requests than the seller's limit (TEVO_HOLD_RATE_LIMIT, 600 per minute "
    "by default). A hold's first invoice is never refused by it.",
)
_TOO_LARGE = Answer(
    errors.PayloadTooLarge,
    f"{_FIX} Bodies are a few hundred bytes; the limit is 64 KiB unless the seller changed it.",
    "The request body is larger than the server's limit (TEVO_HOLD_MAX_BODY, 64 KiB by default).",
)
_MEDIA_TYPE = Answer(
    errors.UnsupportedMediaType,
    f"{_FIX} Send the header `Content-Type: application/json`.",
)
_IN_PROGRESS = Answer(
    errors.RequestInProgress,
    "Retry after the `Retry-After` seconds with the same body: you then get the outcome of "
    "the request that was running (typically your own earlier attempt that timed out).",
    "Another request for this global_id is running right now.",
)


def _internal(what: str) -> Answer:
    return Answer(
        errors.InternalError,
        f"Retry with the same body after a short back-off ({what}); if it persists, call the "
        "seller: the server log has the details.",
        "An unexpected failure on the seller's side. The answer never carries a trace.",
    )


def _unavailable(what: str, meaning: str) -> Answer:
    """503: what it leaves depends on the operation (a release or an invoice has been recorded
    by the time the POS is called), so each says it in ``meaning``."""
    return Answer(
        errors.Unavailable,
        f"Retry after the `Retry-After` seconds with the same body ({what}).",
        meaning,
    )


# -- the operations -----------------------------------------------------------------------------

_HELD = {
    "global_id": EXAMPLE_GLOBAL_ID,
    "remote_id": EXAMPLE_REMOTE_ID,
    "quantity": 2,
    "status": "held",
    "created_at": "2026-11-23T12:00:00.123Z",
    "expires_at": "2026-11-23T12:15:00.123Z",
    "tevo_order_id": None,
    "invoiced_at": None,
    "released_at": None,
}
_RELEASED = {
    **_HELD,
    "global_id": EXAMPLE_RELEASED_GLOBAL_ID,
    "quantity": 1,
    "status": "released",
    "released_at": "2026-11-23T12:01:30.456Z",
}
_INVOICED = {
    **_HELD,
    "status": "invoiced",
    "tevo_order_id": EXAMPLE_ORDER_ID,
    "invoiced_at": "2026-11-23T12:02:10.789Z",
}


def _hold_in(*statuses: str, invoiced: bool = False) -> dict[str, Any]:
    """The Hold schema, narrowed to the statuses an operation's success answer can have."""
    narrowed: dict[str, Any] = {"status": {"enum": list(statuses)}}
    if invoiced:
        narrowed["tevo_order_id"] = {"not": {"type": "null"}}
        narrowed["invoiced_at"] = {"type": "string"}
    return {"allOf": [{"$ref": "#/components/schemas/Hold"}], "properties": narrowed}


_GLOBAL_ID_FROM_BODY = {"global_id": "$response.body#/global_id"}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        view="create_hold",
        method="post",
        path="/v1/holds",
        operation_id="holdInventory",
        tag="Order integration",
        summary="Hold tickets of a listing",
        description=(
            "Puts `quantity` tickets of listing `remote_id` on hold for TEvo's checkout "
            "`global_id`. On success the tickets are no longer available to anyone else until "
            "the hold is invoiced, released, or lapses at `expires_at` (15 minutes after the "
            "hold by default).\n\n"
            "Idempotent: repeating the call with the same body (after a timeout, say) answers "
            "`201` again with the same hold and the header `Idempotent-Replayed: true`, and "
            "takes no more tickets. The same `global_id` with another `remote_id` or "
            "`quantity` is a `409 global_id_conflict`. A hold that was refused leaves nothing "
            "behind: a retry tries again."
        ),
        request=HoldRequestSchema,
        request_examples={
            "hold": {
                "summary": f"Hold 2 tickets of listing {EXAMPLE_REMOTE_ID} (to invoice)",
                "value": {
                    "remote_id": EXAMPLE_REMOTE_ID,
                    "quantity": 2,
                    "global_id": EXAMPLE_GLOBAL_ID,
                },
            },
            "holdToRelease": {
                "summary": f"Hold 1 ticket of listing {EXAMPLE_REMOTE_ID} (to release)",
                "value": {
                    "remote_id": EXAMPLE_REMOTE_ID,
                    "quantity": 1,
                    "global_id": EXAMPLE_RELEASED_GLOBAL_ID,
                },
            },
        },
        success=201,
        success_description=(
            "Held: the tickets are reserved for TEvo until `expires_at`; `status` is `held`. "
            "Next, invoice (or release) with the same `global_id`. A replay of an earlier "
            "hold carries `Idempotent-Replayed: true` and the hold as it was first answered."
        ),
        success_schema=_hold_in("held"),
        success_example=_HELD,
        replays=True,
        answers=(
            *_invalid(),
            _UNAUTHORIZED,
            _SIGNATURE,
            _RATE_LIMITED,
            Answer(
                errors.ListingNotFound,
                "Do not retry: the listing is gone from the seller's inventory (sold "
                "elsewhere or delisted). Treat it as unavailable and refresh the inventory.",
            ),
            Answer(
                errors.InsufficientQuantity,
                "Do not retry the same quantity: `available` says how many tickets are left. "
                "Offer those, or treat the listing as sold out.",
            ),
            Answer(
                errors.GlobalIdConflict,
                f"{_FIX} Every checkout needs its own global_id; a retry must send the same "
                "remote_id and quantity.",
            ),
            _IN_PROGRESS,
            _TOO_LARGE,
            _MEDIA_TYPE,
            _internal("a hold that did succeed is replayed, never taken twice"),
            Answer(
                errors.PosError,
                "Retry once with the same body after a short back-off (it takes no more "
                "tickets); if it fails again, treat the listing as unavailable, and release the "
                "global_id so that no tickets stay held.",
                "Either the POS refused the hold (a 4xx, say): this attempt held nothing, and a "
                "release of the global_id answers `404 hold_not_found` (or `200` when an "
                "earlier attempt of this global_id timed out or answered late, and may have "
                "held the tickets: the seller's side releases them in the POS). Or the POS "
                "failed (a 5xx) and may have held the tickets first: unless your retry "
                "completes the hold, the seller's side releases them in the POS, and a "
                "release of the global_id answers `200` (`released`). Either answer to the "
                "release is fine.",
            ),
            _unavailable(
                "nothing was held",
                "Redis or the POS could not be reached; nothing was held.",
            ),
            Answer(
                errors.PosTimeout,
                f"Retry with the same body: you get the hold or a definite error. {_SAME_BODY} "
                "If you give up instead, release the global_id so that no tickets stay held.",
                "The POS did not answer in time: whether the tickets were held is unknown. "
                "Unless your retry completes the hold, the seller's worker releases it in the "
                "POS, so no tickets stay stranded.",
            ),
        ),
        links={
            "InvoiceHold": {
                "operationId": "invoiceHold",
                "requestBody": {**_GLOBAL_ID_FROM_BODY, "tevo_order_id": EXAMPLE_ORDER_ID},
                "description": "Sell the held tickets to TEvo: invoice with this global_id.",
            },
            "ReleaseHold": {
                "operationId": "releaseHold",
                "requestBody": _GLOBAL_ID_FROM_BODY,
                "description": "Give the tickets back: release this global_id.",
            },
            "GetHold": {
                "operationId": "getHold",
                "parameters": {"global_id": "$response.body#/global_id"},
                "description": "Read the hold's status.",
            },
            "RetryHold": {
                "operationId": "holdInventory",
                "requestBody": {
                    "remote_id": "$request.body#/remote_id",
                    "quantity": "$request.body#/quantity",
                    "global_id": "$response.body#/global_id",
                },
                "description": "A retry of the same hold: replayed, takes no more tickets.",
            },
        },
    ),
    Operation(
        view="create_release",
        method="post",
        path="/v1/releases",
        operation_id="releaseHold",
        tag="Order integration",
        summary="Release a hold",
        description=(
            "Gives the tickets of the hold `global_id` back to the listing, when TEvo could not "
            "complete the order. The hold becomes `released`, or `expired` if it had already "
            "lapsed; the tickets go back either way.\n\n"
            "Idempotent: releasing again answers `200` with the same hold and "
            "`Idempotent-Replayed: true`. A hold that was invoiced is never released "
            "(`409 hold_already_invoiced`)."
        ),
        request=ReleaseRequestSchema,
        request_examples={
            "release": {
                "summary": f"Release the hold {EXAMPLE_RELEASED_GLOBAL_ID}",
                "value": {"global_id": EXAMPLE_RELEASED_GLOBAL_ID},
            }
        },
        success=200,
        success_description=(
            "Released: the tickets are back on the listing. `status` is `released`, or "
            "`expired` when the hold had lapsed before the release. Nothing more to do."
        ),
        success_schema=_hold_in("released", "expired"),
        success_example=_RELEASED,
        replays=True,
        answers=(
            *_invalid(),
            _UNAUTHORIZED,
            _SIGNATURE,
            _RATE_LIMITED,
            Answer(
                errors.HoldNotFound,
                "Nothing to release: treat the release as done. (Holds are remembered for 7 "
                "days by default.)",
                "No hold was made under this global_id (or its hold call failed, or it is too "
                "old to be remembered).",
            ),
            Answer(
                errors.HoldAlreadyInvoiced,
                "Do not retry: the tickets are sold to TEvo (or their sale failed in the POS and "
                "is being retried). To undo the sale, call the seller.",
            ),
            _IN_PROGRESS,
            _TOO_LARGE,
            _MEDIA_TYPE,
            _internal("a release is harmless to repeat"),
            Answer(
                errors.PosError,
                "Retry with the same body after a short back-off until you get 200; if it "
                "persists, call the seller so that the tickets are given back by hand.",
                "The hold is marked released but the POS failed to take the tickets back.",
            ),
            _unavailable(
                "a release is harmless to repeat",
                "Redis could not be reached, and nothing was changed. Or the POS could not be "
                "reached after the hold was released here: the hold reads `released` (or "
                "`expired`), and its tickets go back in the POS later (the seller's worker "
                "releases them there, or the POS lets the hold lapse).",
            ),
            Answer(
                errors.PosTimeout,
                "Retry with the same body until you get 200: a release is harmless to repeat.",
                "The POS did not answer in time: whether it took the tickets back is unknown.",
            ),
        ),
        links={
            "GetHold": {
                "operationId": "getHold",
                "parameters": {"global_id": "$response.body#/global_id"},
                "description": "Read the released hold.",
            },
            "InvoiceReleasedHold": {
                "operationId": "invoiceHold",
                "requestBody": {**_GLOBAL_ID_FROM_BODY, "tevo_order_id": EXAMPLE_ORDER_ID},
                "description": "An invoice after a release: answers 409 hold_released.",
            },
        },
    ),
    Operation(
        view="create_invoice",
        method="post",
        path="/v1/invoices",
        operation_id="invoiceHold",
        tag="Order integration",
        summary="Invoice (buy) the held tickets",
        description=(
            "Sells the tickets of the hold `global_id` to TEvo as the buyer, under TEvo's order "
            "`tevo_order_id`. The hold becomes `invoiced`. A hold that lapsed but was not "
            "released is still sold if the POS has the tickets; otherwise `410 hold_expired`.\n"
            "\n"
            "Idempotent: repeating the call with the same body answers `201` again with "
            "`Idempotent-Replayed: true` and never sells twice; another `tevo_order_id` for the "
            "same hold is a `409 order_id_conflict`. If the POS fails the sale (`502`, `503`, "
            "`504`), the invoice is never dropped: the hold becomes `invoice_failed` (it can "
            "no longer lapse or be released), the seller's worker retries it with backoff, and "
            "your retry with the same body tries the POS again.\n\n"
            "The buyer has already paid: an error here that retrying does not clear is for "
            "the seller to resolve, so call them."
        ),
        request=InvoiceRequestSchema,
        request_examples={
            "invoice": {
                "summary": f"Invoice the hold {EXAMPLE_GLOBAL_ID} under order {EXAMPLE_ORDER_ID}",
                "value": {"global_id": EXAMPLE_GLOBAL_ID, "tevo_order_id": EXAMPLE_ORDER_ID},
            }
        },
        success=201,
        success_description=(
            "Invoiced: the tickets are sold to TEvo; `status` is `invoiced` and "
            "`tevo_order_id` is the order. A replay carries `Idempotent-Replayed: true`."
        ),
        success_schema=_hold_in("invoiced", invoiced=True),
        success_example=_INVOICED,
        replays=True,
        answers=(
            *_invalid(),
            _UNAUTHORIZED,
            _SIGNATURE,
            _RATE_LIMITED,
            Answer(
                errors.HoldNotFound,
                "Do not retry: nothing is held for this order. Call the seller.",
                "No hold was made under this global_id (or its hold call failed, or it is too "
                "old to be remembered).",
            ),
            Answer(
                errors.HoldReleased,
                "Do not retry: the tickets went back on sale. Call the seller (or hold again "
                "under a new global_id).",
                "The hold was released (or released after it lapsed) before this invoice.",
            ),
            Answer(
                errors.OrderIdConflict,
                f"{_FIX} Check which order owns this global_id; a retry must send the same "
                "tevo_order_id.",
            ),
            _IN_PROGRESS,
            Answer(
                errors.HoldExpired,
                "Do not retry: the tickets are gone. Call the seller.",
                "The hold lapsed before the invoice's sale reached the POS, and the POS no longer "
                "has its tickets.",
            ),
            _TOO_LARGE,
            _MEDIA_TYPE,
            _internal("an invoice is never sold twice"),
            Answer(
                errors.PosError,
                "Retry with the same body after a short back-off; if it fails again, call the "
                "seller: the buyer has paid.",
                "The POS refused the sale or failed (it knew no such listing, say, or had not "
                "the tickets of a hold that had not lapsed). The hold is now `invoice_failed`: "
                "the seller's worker retries it until the POS takes it.",
            ),
            _unavailable(
                "the invoice is kept and retried, and never sold twice",
                "Redis could not be reached, and nothing was changed. Or the POS could not be "
                "reached: the hold is now `invoice_failed`, and the seller's worker retries the "
                "sale until the POS takes it.",
            ),
            Answer(
                errors.PosTimeout,
                f"Retry with the same body: you get the sale or a definite error. {_SAME_BODY}",
                "The POS did not answer in time: whether the sale went through is unknown. The "
                "hold is `invoice_failed` and the seller's worker retries it.",
            ),
        ),
        links={
            "GetHold": {
                "operationId": "getHold",
                "parameters": {"global_id": "$response.body#/global_id"},
                "description": "Read the invoiced hold.",
            },
            "RetryInvoice": {
                "operationId": "invoiceHold",
                "requestBody": {
                    "global_id": "$response.body#/global_id",
                    "tevo_order_id": "$response.body#/tevo_order_id",
                },
                "description": "A retry of the same invoice: replayed, never sold twice.",
            },
            "ReleaseInvoicedHold": {
                "operationId": "releaseHold",
                "requestBody": _GLOBAL_ID_FROM_BODY,
                "description": "A release after the sale: answers 409 hold_already_invoiced.",
            },
        },
    ),
    Operation(
        view="get_hold",
        method="get",
        path="/v1/holds/{global_id}",
        operation_id="getHold",
        tag="Order integration",
        summary="Read a hold",
        description=(
            "The hold of `global_id` as it stands now, to check the outcome of a call whose "
            "answer was lost. Not one of TEvo's three calls; it changes nothing. Percent-encode "
            "the global_id's UTF-8 bytes (a `/` as `%2F`); bytes that are not UTF-8 are refused "
            "(`400 invalid_request`), never read as another id."
        ),
        parameters=(
            {
                "name": "global_id",
                "in": "path",
                "required": True,
                "description": "The global_id the hold was made with.",
                "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
                "example": EXAMPLE_GLOBAL_ID,
            },
        ),
        success=200,
        success_description=(
            "The hold; see `status` for where it stands. `events` is its audit trail (who did "
            "what, when, and the POS's answer); `last_error` and `invoice_attempts` tell how a "
            "failed invoice is faring."
        ),
        success_schema={"$ref": "#/components/schemas/HoldDetail"},
        success_example={
            **_HELD,
            "last_error": None,
            "invoice_attempts": 0,
            "events": [
                {
                    "at": "2026-11-23T12:00:00.123Z",
                    "event": "held",
                    "status": "held",
                    "by": "api",
                    "detail": "",
                }
            ],
        },
        answers=(
            *_invalid(body=False),
            _UNAUTHORIZED,
            _SIGNATURE,
            _RATE_LIMITED,
            Answer(
                errors.HoldNotFound,
                "No hold is known under this global_id: it was never made, its hold call "
                "failed, or it is too old to be remembered (7 days by default).",
            ),
            Answer(
                errors.NotFound,
                f"{_FIX} The global_id must not be empty.",
                "No endpoint at this URL: the global_id is missing.",
            ),
            _internal("reading changes nothing"),
            _unavailable("reading changes nothing", "Redis could not be reached."),
        ),
    ),
    Operation(
        view="readyz",
        method="get",
        path="/readyz",
        operation_id="readyz",
        tag="Operations",
        summary="Readiness check",
        description=(
            "Answers `200` when Redis answers (and the POS, when its adapter can tell); needs no "
            "API key. For load balancers: take the server out of rotation on `503`. Each server "
            "process checks at most about once a second and answers with its last reading in "
            "between; a deployment may answer it to its load balancer only."
        ),
        success=200,
        success_description=(
            "Ready: `store` says where the state lives (`redis`, or `memory` in the embedded "
            "demo mode, which has no Redis to check); `checks` says what was checked."
        ),
        success_schema={
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["ok"]},
                "store": {"type": "string", "enum": ["redis", "memory"]},
                "checks": {
                    "type": "object",
                    "additionalProperties": {"enum": ["ok", "unavailable", "unknown"]},
                },
            },
            "required": ["status", "store", "checks"],
        },
        success_example={
            "status": "ok",
            "store": "redis",
            "checks": {"redis": "ok", "pos": "unknown"},
        },
        answers=(
            Answer(
                errors.NotReady,
                "Send no traffic here until it answers `200` again.",
                "Redis (or the POS) does not answer; `checks` says which.",
            ),
        ),
        public=True,
    ),
    Operation(
        view="metrics",
        method="get",
        path="/metrics",
        operation_id="metrics",
        tag="Operations",
        summary="Prometheus metrics",
        description=(
            "Counters and histograms in Prometheus' text format, summed over every worker "
            "process; needs no API key. Its counts (holds, sales, failures) are the seller's: a "
            "deployment answers it to its own monitoring only."
        ),
        success=200,
        success_description="The metrics.",
        success_schema={"type": "string"},
        success_example="# HELP tevo_hold_requests_total Requests answered.\n",
        success_media="text/plain",
        public=True,
    ),
    Operation(
        view="healthz",
        method="get",
        path="/healthz",
        operation_id="healthz",
        tag="Operations",
        summary="Liveness check",
        description=(
            "Answers `200` while the server process runs; needs no API key. It does not check "
            "Redis: a call that cannot reach Redis answers `503 unavailable` instead."
        ),
        success=200,
        success_description="The server is up.",
        success_schema={
            "type": "object",
            "properties": {"status": {"type": "string", "enum": ["ok"]}},
            "required": ["status"],
            "additionalProperties": False,
        },
        success_example={"status": "ok"},
        public=True,
    ),
    Operation(
        view="openapi_json",
        method="get",
        path="/v1/openapi.json",
        operation_id="openapi",
        tag="Reference",
        summary="This document",
        description=(
            "This OpenAPI 3.1 document, its `servers` URL being where the API is mounted; needs "
            "no API key. Generated from the code, so it states what the server does."
        ),
        success=200,
        success_description="The document.",
        success_schema={
            "type": "object",
            "properties": {"openapi": {"const": OPENAPI_VERSION}},
            "required": ["openapi", "info", "paths"],
        },
        success_example={
            "openapi": OPENAPI_VERSION,
            "info": {"title": "tevo-hold: TEvo order integration"},
            "paths": {"/v1/holds": {"post": {"operationId": "holdInventory"}}},
        },
        public=True,
    ),
    Operation(
        view="docs",
        method="get",
        path="/docs",
        operation_id="docs",
        tag="Reference",
        summary="This document, as a page",
        description=(
            "This document rendered for people by Swagger UI, from files this server serves "
            "(`GET /docs/{asset}`: no CDN, no other host); needs no API key."
        ),
        success=200,
        success_description="The page.",
        success_schema={"type": "string"},
        success_example='<!DOCTYPE html>\n<html lang="en">…',
        success_media="text/html",
        public=True,
    ),
    Operation(
        view="docs",
        method="get",
        path="/docs/{asset}",
        operation_id="docsAsset",
        tag="Reference",
        summary="A file of the page",
        description=(
            "One of the Swagger UI files `GET /docs` loads, whole (no ranges, no conditional "
            "answers), cacheable for an hour; needs no API key."
        ),
        parameters=(
            {
                "name": "asset",
                "in": "path",
                "required": True,
                "description": "The file's name.",
                "schema": {"type": "string", "enum": sorted(DOCS_ASSETS)},
                "example": "swagger-ui.css",
            },
        ),
        success=200,
        success_description="The file.",
        success_schema={"type": "string"},
        success_example=".swagger-ui{…}",
        success_media="text/css",
        other_media=sorted(set(DOCS_ASSETS.values()) - {"text/css"}),
        answers=(
            Answer(
                errors.NotFound,
                "Do not retry: ask only for the files the page loads.",
                "No such file under `/docs`.",
            ),
        ),
        public=True,
    ),
)


# -- the document -------------------------------------------------------------------------------

_DESCRIPTION = """\
The order-integration calls of [Ticket Evolution](https://www.ticketevolution.com) (TEvo),
served by the seller's **tevo-hold**: TEvo **holds** tickets of a listing at checkout, then
**invoices** (buys) them, or **releases** them if it could not complete the order. One
`global_id` per checkout links the three calls.

**Base URL.** The seller gives you their server's base URL (for example
`https://tevo.seller.example`); every path below is relative to it.

**Authentication.** Every call of the order integration needs one of the seller's API keys, in
the header `X-API-Key: <key>` (or `Authorization: Bearer <key>`). A missing or wrong key is a
`401 unauthorized`. The operations probes and this document (with its page) need none.

**Requests and answers.** Bodies are JSON objects sent with `Content-Type: application/json`;
unknown members are ignored; a member named twice in one object is refused (`400
invalid_request`), since JSON leaves open which of the two counts. Successful answers are JSON
(`application/json`): the hold as it now stands. Every error is an [RFC
9457](https://www.rfc-editor.org/rfc/rfc9457) problem document (`application/problem+json`)
with a stable machine `code`; branch on `code`, not on `title` or `detail`. Every answer
carries `X-Request-ID`: the request's id (the one it sent, or a new one), which the seller's
log names it by. Each operation lists every status it can answer, each code it can carry, what
it means and what to do. Besides those, an unknown path answers `404 not_found` (paths are
taken as written: `/v1//holds` is unknown, never redirected to `/v1/holds`) and a method a path
does not take answers `405 method_not_allowed` with an `Allow` header that lists the methods it
does take. Every `GET` path also answers `HEAD` (the same status and headers, without the
body), as HTTP requires; `Allow` lists it. No path takes `OPTIONS`: it is a `405`. (Mounted in
a seller's own Flask app, an HTTP error that app raises on these paths keeps its status, with
the code `http_error`.)

{server_answers}

**Retries.** Every call is idempotent per `global_id`: after a timeout or a `5xx`, retry with
the *same body*; a call that already succeeded answers its success again with the header
`Idempotent-Replayed: true` and changes nothing. {retry_after} carry `Retry-After` (seconds):
retry after that long with the same body. Other `4xx` answers call for a change first: each
code says what to do.

**Hold lifetime.** A hold lasts 15 minutes by default (the seller's `TEVO_HOLD_HOLD_TTL`);
each hold's `expires_at` says when it lapses. Invoice before then: a lapsed hold is still sold
if the tickets are there, otherwise the invoice answers `410 hold_expired`.
"""


#: The errors whose answers carry ``Retry-After``: retried unchanged after that many seconds.
RETRY_AFTER: tuple[type[errors.TevoHoldError], ...] = (
    errors.RequestInProgress,
    errors.RateLimited,
    errors.Unavailable,
)


def _retry_after_answers() -> str:
    """The answers that carry ``Retry-After``: "`409 request_in_progress`, ... and ..."."""
    named = [f"`{e.status} {e.code}`" for e in RETRY_AFTER]
    return ", ".join(named[:-1]) + " and " + named[-1]


def server_answers() -> str:
    """The description's paragraph on what the HTTP server answers by itself, from
    :data:`tevo_hold.web.SERVER_PROBLEMS`."""
    lines = [
        "**Requests the server cannot read.** The HTTP server answers these itself, on any path, "
        "before any operation runs, with problem documents too (and `Connection: close`). Do "
        "not retry them unchanged; a `500` may be retried."
    ]
    lines += [f"- `{p.status} {p.code}`: {p.meaning}" for p in SERVER_PROBLEMS]
    return "\n".join(lines)


def _problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "An RFC 9457 problem document: what every error answer is.",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {
                "type": "string",
                "pattern": f"^{PROBLEM_TYPE}[a-z_]+$",  # no regex metacharacter in it
                "description": f"`{PROBLEM_TYPE}` followed by the code.",
            },
            "title": {"type": "string", "description": "A short summary of the code."},
            "status": {
                "type": "integer",
                "minimum": 400,
                "maximum": 599,
                "description": "The HTTP status.",
            },
            "detail": {"type": "string", "description": "What happened in this occurrence."},
            "code": {
                "type": "string",
                "description": "The stable machine code: branch on this.",
            },
            "errors": {
                "type": "object",
                "description": "invalid_request only, when fields are at fault: each offending "
                "field and its messages (absent when the body as a whole is refused: not a JSON "
                "object, or a member named twice).",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
            },
            "available": {
                "type": "integer",
                "minimum": 0,
                "description": (
                    "insufficient_quantity only, and only when the seller's POS tells: tickets "
                    "the listing has available."
                ),
            },
            "limit": {
                "type": "string",
                "description": (
                    "rate_limited only: the limit this key broke (of several, the one whose "
                    "wait is the longest: Retry-After is for it)."
                ),
            },
            "checks": {
                "type": "object",
                "additionalProperties": {"enum": ["ok", "unavailable", "unknown"]},
                "description": "GET /readyz only: the state of each dependency.",
            },
        },
        "additionalProperties": False,
    }


_SAMPLE_DETAILS: dict[str, str] = {
    "invalid_request": "Invalid or missing field(s): quantity.",
    "malformed_json": "The body is not valid UTF-8 JSON: Expecting value: line 1 column 1 (char 0)",
    "unauthorized": "The API key is not valid.",
    "invalid_signature": "X-Signature does not match the request.",
    "rate_limited": "Too many requests for this key (600 per 1 minute).",
    "not_found": "No endpoint at GET /v1/holds/.",
    "listing_not_found": f"No listing has remote_id '{EXAMPLE_REMOTE_ID}'.",
    "hold_not_found": f"No hold has global_id '{EXAMPLE_GLOBAL_ID}'.",
    "insufficient_quantity": f"Listing '{EXAMPLE_REMOTE_ID}' has 1 tickets available.",
    "global_id_conflict": (
        f"global_id '{EXAMPLE_GLOBAL_ID}' already names a hold of another remote_id or quantity."
    ),
    "hold_released": (
        f"The hold '{EXAMPLE_GLOBAL_ID}' was released; its tickets went back to the listing."
    ),
    "hold_already_invoiced": (
        f"The hold '{EXAMPLE_GLOBAL_ID}' was invoiced; a sale is not undone by a release."
    ),
    "order_id_conflict": (
        f"The hold '{EXAMPLE_GLOBAL_ID}' is invoiced under another tevo_order_id."
    ),
    "request_in_progress": (
        f"Another request for global_id '{EXAMPLE_GLOBAL_ID}' is running; retry shortly."
    ),
    "hold_expired": (
        f"The hold '{EXAMPLE_GLOBAL_ID}' lapsed and its tickets are no longer available."
    ),
    "payload_too_large": "The body is larger than 65536 bytes.",
    "unsupported_media_type": (
        "Send the body as JSON with the header Content-Type: application/json."
    ),
    "internal_error": "An unexpected error occurred; it was logged.",
    "pos_error": "The POS refused the call: it answered 500.",
    "unavailable": "Redis could not be reached.",
    "pos_timeout": "The POS did not answer within 4 seconds.",
}


def _problem_example(answer: Answer) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + answer.code,
        "title": answer.error.title,
        "status": answer.status,
        "detail": _SAMPLE_DETAILS[answer.code],
        "code": answer.code,
    }
    if answer.error is errors.InvalidRequest:
        body["errors"] = {"quantity": ["must be between 1 and 10000"]}
    if answer.error is errors.InsufficientQuantity:
        body["available"] = 1
    if answer.error is errors.RateLimited:
        body["limit"] = "600 per 1 minute"
    if answer.error is errors.NotReady:
        body["detail"] = "Not ready: redis unavailable."
        body["checks"] = {"redis": "unavailable", "pos": "unknown"}
    return body


def _error_response(answers: Sequence[Answer]) -> dict[str, Any]:
    status = answers[0].status
    codes = [a.code for a in answers]
    lines = [f"- `{a.code}`: {a.explain()} **What to do:** {a.advice}" for a in answers]
    response: dict[str, Any] = {
        "description": "\n".join(lines),
        "content": {
            PROBLEM_JSON: {
                "schema": {
                    "allOf": [{"$ref": "#/components/schemas/Problem"}],
                    "properties": {
                        "status": {"const": status},
                        "code": {"enum": codes},
                        "type": {"enum": [PROBLEM_TYPE + c for c in codes]},
                    },
                },
                "examples": {
                    a.code: {"summary": a.error.title, "value": _problem_example(a)}
                    for a in answers
                },
            }
        },
        "x-problem-codes": codes,
    }
    headers: dict[str, Any] = {"X-Request-ID": _REQUEST_ID_REF}
    if any(issubclass(a.error, RETRY_AFTER) for a in answers):
        headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    if status == 401:
        headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WWW-Authenticate"}
    response["headers"] = headers
    return response


#: Every answer carries the request's id (see tevo_hold.observability).
_REQUEST_ID_REF = {"$ref": "#/components/headers/Request-ID"}


def _operation(op: Operation) -> dict[str, Any]:
    success: dict[str, Any] = {
        "description": op.success_description,
        "content": {
            op.success_media: {"schema": op.success_schema, "example": op.success_example},
            **{media: {"schema": op.success_schema} for media in op.other_media},
        },
    }
    success["headers"] = {"X-Request-ID": _REQUEST_ID_REF}
    if op.replays:
        success["headers"]["Idempotent-Replayed"] = {"$ref": "#/components/headers/Replayed"}
    if op.links:
        success["links"] = {name: dict(link) for name, link in op.links.items()}
    responses: dict[str, Any] = {str(op.success): success}
    by_status: dict[int, list[Answer]] = {}
    for answer in op.answers:
        by_status.setdefault(answer.status, []).append(answer)
    for status in sorted(by_status):
        responses[str(status)] = _error_response(by_status[status])
    operation: dict[str, Any] = {
        "operationId": op.operation_id,
        "tags": [op.tag],
        "summary": op.summary,
        "description": op.description,
        "responses": responses,
    }
    if op.parameters:
        operation["parameters"] = [dict(p) for p in op.parameters]
    if op.request is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {
                JSON: {
                    "schema": _SCHEMA_NAMES[op.request],
                    "examples": {k: dict(v) for k, v in op.request_examples.items()},
                }
            },
        }
    if op.public:
        operation["security"] = []
    return operation


_SCHEMA_NAMES: dict[type[Schema], str] = {
    HoldRequestSchema: "HoldRequest",
    ReleaseRequestSchema: "ReleaseRequest",
    InvoiceRequestSchema: "InvoiceRequest",
    HoldSchema: "Hold",
    EventSchema: "Event",
    HoldDetailSchema: "HoldDetail",
}


def build_spec(server_url: str = "/") -> dict[str, Any]:
    """The OpenAPI 3.1 document, as a dict, for an API whose paths start at ``server_url``."""
    from . import __version__

    spec = APISpec(
        title="tevo-hold: TEvo order integration",
        version=__version__,
        openapi_version=OPENAPI_VERSION,
        plugins=[MarshmallowPlugin()],
        info={
            "summary": "Hold, release and invoice tickets for Ticket Evolution.",
            "description": _DESCRIPTION.format(
                server_answers=server_answers(), retry_after=_retry_after_answers()
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        servers=[{"url": server_url, "description": "The seller's tevo-hold server."}],
        tags=[
            {"name": "Order integration", "description": "The calls TEvo makes."},
            {"name": "Operations", "description": "For the seller's monitoring."},
            {"name": "Reference", "description": "This document, and its page for people."},
        ],
        security=[{"ApiKey": []}, {"Bearer": []}],
    )
    spec.components.security_scheme(
        "ApiKey",
        {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "One of the seller's API keys (TEVO_HOLD_API_KEYS).",
        },
    )
    spec.components.security_scheme(
        "Bearer",
        {
            "type": "http",
            "scheme": "bearer",
            "description": "The same key, as `Authorization: Bearer <key>`.",
        },
    )
    for schema, name in _SCHEMA_NAMES.items():
        spec.components.schema(name, schema=schema)
    spec.components.schema("Problem", _problem_schema())
    spec.components.header(
        "Replayed",
        {
            "description": "`true` when the call repeated an earlier one: it changed nothing "
            "and answers what that one did. Absent on a first call.",
            "schema": {"type": "string", "enum": ["true"]},
        },
    )
    spec.components.header(
        "Retry-After",
        {
            "description": "Seconds to wait before retrying with the same body: on "
            f"{_retry_after_answers()} only.",
            "schema": {"type": "integer", "minimum": 1},
        },
    )
    spec.components.header(
        "Request-ID",
        {
            "description": "The request's id, on every answer: the `X-Request-ID` the request "
            "sent, if it is 1 to 128 characters of `A-Z a-z 0-9 . _ : / + = @ -`, else a new "
            "one (32 hex digits). The seller's log names each request by it: quote it when "
            "asking the seller about a call.",
            "required": True,
            "schema": {"type": "string", "pattern": f"^{REQUEST_ID_PATTERN}$"},
        },
    )
    spec.components.header(
        "WWW-Authenticate",
        {"description": '`Bearer realm="tevo-hold"`.', "schema": {"type": "string"}},
    )
    for path in dict.fromkeys(op.path for op in OPERATIONS):
        spec.path(
            path=path,
            operations={op.method: _operation(op) for op in OPERATIONS if op.path == path},
        )
    document = spec.to_dict()
    order = ("openapi", "info", "servers", "tags", "security", "paths", "components")
    return {key: document[key] for key in order if key in document} | document


def to_json(spec: Mapping[str, Any]) -> str:
    """The document as the app serves it and ``docs/openapi.json`` stores it."""
    return json.dumps(spec, indent=2, ensure_ascii=False) + "\n"


@functools.lru_cache(maxsize=16)
def document(server_url: str = "/") -> str:
    """:func:`build_spec`'s document as JSON text (built once per ``server_url``)."""
    return to_json(build_spec(server_url))


# -- the views' bodies (tevo_hold.web routes GET /v1/openapi.json and GET /docs here) ----------


def document_response() -> Response:
    """``GET /v1/openapi.json``: the document, its server being where this blueprint is mounted."""
    here = url_for(".openapi_json")
    server_url = here.removesuffix("/v1/openapi.json") or "/"
    return current_app.response_class(document(server_url), 200, mimetype=JSON)


def _page() -> str:
    return resources.files("tevo_hold").joinpath("templates/docs.html").read_text("utf-8")


def _swagger_ui_dir() -> Path:
    # The Swagger UI distribution that the flask-swagger-ui package ships (we use its files only).
    return Path(str(resources.files("flask_swagger_ui") / "dist"))


def docs_response(asset: str | None) -> Response:
    """``GET /docs``: the reference page; ``GET /docs/<asset>``: the Swagger UI files it loads."""
    if asset is None:
        html = render_template_string(
            _page(),
            spec_url=url_for(".openapi_json"),
            asset=lambda name: url_for(".docs", asset=name),
        )
        return current_app.response_class(html, 200, mimetype="text/html")
    if asset not in DOCS_ASSETS:
        raise errors.NotFound(f"No file {asset!r} under /docs.")
    # Whole files only: no ranges and no conditional answers (206, 304, 416 would be statuses
    # the document does not give this path); an hour in the browser's cache instead.
    return send_from_directory(
        _swagger_ui_dir(),
        asset,
        mimetype=DOCS_ASSETS[asset],
        max_age=3600,
        conditional=False,
        etag=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tevo_hold.openapi [PATH]``: print the document, or write it to PATH."""
    args = list(sys.argv[1:] if argv is None else argv)
    text = document()
    if not args:
        sys.stdout.write(text)
    else:
        Path(args[0]).write_text(text, "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
