"""marshmallow schemas of the HTTP API's bodies (the OpenAPI document is generated from them)."""

from __future__ import annotations

import abc
from datetime import datetime
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields

from .errors import InvalidRequest
from .models import Hold
from .validation import MAX_ID_LENGTH, MAX_QUANTITY, check_id, check_order_id, check_quantity

__all__ = [
    "EventSchema",
    "HoldDetailSchema",
    "HoldRequestSchema",
    "HoldSchema",
    "InvoiceRequestSchema",
    "ReleaseRequestSchema",
    "RequestLoader",
    "dump_hold",
]


class _Checked(fields.Field):  # type: ignore[type-arg]
    """A field whose value is checked (and normalised) by one of :mod:`tevo_hold.validation`'s."""

    @abc.abstractmethod
    def _check(self, value: Any) -> Any:
        """The value, normalised; raises InvalidRequest naming this field."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        try:
            return self._check(value)
        except InvalidRequest as exc:
            raise ValidationError(next(iter(exc.errors.values()))) from None


class Id(_Checked):
    """A non-empty string id of at most 255 characters; any character is allowed."""

    def _check(self, value: Any) -> Any:
        return check_id(self.name or "id", value)


class Quantity(_Checked):
    """A ticket count, 1 to 10,000 (``2.0`` is 2; booleans and strings are not numbers)."""

    def _check(self, value: Any) -> Any:
        return check_quantity(value, self.name or "quantity")


class OrderId(_Checked):
    """TEvo's order id: a positive integer or a non-empty string."""

    def _check(self, value: Any) -> Any:
        return check_order_id(value, self.name or "tevo_order_id")


def _timestamp(value: datetime | None) -> str | None:
    """``2026-11-23T12:00:00.123Z`` for a UTC time (the core's times all are)."""
    if value is None:
        return None
    text = value.isoformat(timespec="milliseconds")
    return (text[:-6] if text.endswith("+00:00") else text) + "Z"


class Timestamp(fields.Field):  # type: ignore[type-arg]
    """An RFC 3339 UTC timestamp with milliseconds: ``2026-11-23T12:00:00.123Z``."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return _timestamp(value)


_TIME = {"type": "string", "format": "date-time"}
_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}
#: The largest integer tevo_order_id that check_order_id accepts (it must fit a signed 64-bit int).
MAX_ORDER_NUMBER = 2**63 - 1
_ORDER_NUMBER = {"type": "integer", "minimum": 1, "maximum": MAX_ORDER_NUMBER}

#: The values the documented examples use. The embedded default stocks this listing
#: (tevo_hold/sample_inventory.json), so the examples work as they are: the first checkout is held
#: then invoiced, the second held then released.
EXAMPLE_REMOTE_ID = "demo-1"
EXAMPLE_GLOBAL_ID = "tevo-checkout-1001"
EXAMPLE_RELEASED_GLOBAL_ID = "tevo-checkout-1002"
EXAMPLE_ORDER_ID = 734912


class _Request(Schema):
    class Meta:
        unknown = EXCLUDE  # TEvo may add attributes; they are ignored, never an error

    def handle_error(self, error: ValidationError, data: Any, **kwargs: Any) -> None:
        messages = error.normalized_messages()  # type: ignore[no-untyped-call]
        fields_ = ", ".join(sorted(messages))
        raise InvalidRequest(f"Invalid or missing field(s): {fields_}.", messages)


class RequestLoader:
    """``schema.load(body)`` of a request schema, for the hot path: the same data or the same
    InvalidRequest (message and per-field errors), without marshmallow's machinery per call.

    Every field of a request schema is a checked field, so loading one is: each declared field
    present, not null, and passing its check; unknown fields ignored. The schema stays the one
    description (the OpenAPI document is generated from it); tests hold the two equal over every
    combination of valid and invalid values.
    """

    def __init__(self, schema: _Request) -> None:
        self.schema = schema
        self._fields: list[tuple[str, str, Any, bool, str, str]] = []
        for name, field in schema.load_fields.items():
            if not isinstance(field, _Checked) or field.allow_none:
                raise TypeError(f"{type(schema).__name__}.{name}: only checked fields load fast")
            self._fields.append(
                (
                    name,
                    field.data_key or name,
                    field._check,
                    field.required,
                    str(field.error_messages["required"]),
                    str(field.error_messages["null"]),
                )
            )

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        problems: dict[str, list[str]] = {}
        for name, key, check, required, missing, null in self._fields:
            if key not in body:
                if required:
                    problems[key] = [missing]
                continue
            value = body[key]
            if value is None:
                problems[key] = [null]
                continue
            try:
                data[name] = check(value)
            except InvalidRequest as exc:
                problems[key] = next(iter(exc.errors.values()))
        if problems:
            raise InvalidRequest(
                f"Invalid or missing field(s): {', '.join(sorted(problems))}.", problems
            )
        return data


class HoldRequestSchema(_Request):
    """Body of ``POST /v1/holds``."""

    remote_id = Id(
        required=True,
        metadata={
            **_ID,
            "description": "The listing's id, as the seller gave it to TEvo (the POS's own id).",
            "examples": [EXAMPLE_REMOTE_ID],
        },
    )
    quantity = Quantity(
        required=True,
        metadata={
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_QUANTITY,
            "description": "Tickets to hold.",
            "examples": [2],
        },
    )
    global_id = Id(
        required=True,
        metadata={
            **_ID,
            "description": "TEvo's id of this checkout: links hold, release and invoice. A retry "
            "sends the same one.",
        },
    )


class ReleaseRequestSchema(_Request):
    """Body of ``POST /v1/releases``."""

    global_id = Id(
        required=True, metadata={**_ID, "description": "The global_id the hold was made with."}
    )


class InvoiceRequestSchema(_Request):
    """Body of ``POST /v1/invoices``."""

    global_id = Id(
        required=True, metadata={**_ID, "description": "The global_id the hold was made with."}
    )
    tevo_order_id = OrderId(
        required=True,
        metadata={
            "oneOf": [_ORDER_NUMBER, _ID],
            "description": "TEvo's order id: a positive integer or a string. A retry sends the "
            "same one.",
            "examples": [EXAMPLE_ORDER_ID],
        },
    )


class HoldSchema(Schema):
    """A hold, as every successful answer gives it."""

    global_id = fields.String(
        required=True,
        metadata={"description": "TEvo's id of the checkout.", "examples": [EXAMPLE_GLOBAL_ID]},
    )
    remote_id = fields.String(
        required=True,
        metadata={"description": "The listing held.", "examples": [EXAMPLE_REMOTE_ID]},
    )
    quantity = fields.Integer(
        required=True, metadata={"description": "Tickets held.", "minimum": 1, "examples": [2]}
    )
    status = fields.String(
        required=True,
        metadata={
            "enum": [
                "pending",
                "held",
                "expired",
                "released",
                "invoicing",
                "invoiced",
                "invoice_failed",
            ],
            "description": "pending: its hold call is running; held: the tickets are held until "
            "expires_at; expired: it lapsed (or was released after it lapsed); released: its "
            "tickets went back to the listing; invoicing: its invoice call is running; "
            "invoiced: sold to TEvo; invoice_failed: the POS failed the invoice, which is being "
            "retried (it can neither lapse nor be released).",
            "examples": ["held"],
        },
    )
    created_at = Timestamp(
        required=True,
        metadata={
            **_TIME,
            "description": "When the hold was made (UTC).",
            "examples": ["2026-11-23T12:00:00.123Z"],
        },
    )
    expires_at = Timestamp(
        required=True,
        metadata={
            **_TIME,
            "description": "When the hold lapses unless it is invoiced first (UTC): created_at "
            "plus the hold lifetime, 15 minutes by default.",
            "examples": ["2026-11-23T12:15:00.123Z"],
        },
    )
    # Always sent, null until set: required, so that a client may count on the member.
    tevo_order_id = fields.Raw(
        required=True,
        allow_none=True,
        metadata={
            "oneOf": [_ORDER_NUMBER, _ID, {"type": "null"}],
            "description": "The order the hold was invoiced under; null until it is invoiced.",
        },
    )
    invoiced_at = Timestamp(
        required=True,
        allow_none=True,
        metadata={**_TIME, "description": "When it was invoiced (UTC); null until then."},
    )
    released_at = Timestamp(
        required=True,
        allow_none=True,
        metadata={**_TIME, "description": "When it was released (UTC); null unless released."},
    )


class EventSchema(Schema):
    """One entry of a hold's audit trail."""

    at = Timestamp(required=True, metadata=_TIME)
    event = fields.String(
        required=True,
        metadata={
            "description": "what happened: hold_requested, held, hold_outcome_unknown, "
            "compensated, released, expired, lapsed, pos_released, pos_release_failed, "
            "invoice_requested, invoice_retry, invoiced, invoice_failed, invoice_refused, ..."
        },
    )
    status = fields.String(required=True, metadata={"description": "the hold's status after it"})
    by = fields.String(
        required=True, metadata={"description": "who acted: api, worker (its name), cli"}
    )
    detail = fields.String(
        required=True, metadata={"description": "the POS's answer or the error, if any"}
    )


class HoldDetailSchema(HoldSchema):
    """A hold as ``GET /v1/holds/{global_id}`` gives it: with its audit trail."""

    last_error = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "invoice_failed: the POS's last answer to the invoice"},
    )
    invoice_attempts = fields.Integer(
        required=True, metadata={"description": "how many times the POS failed the invoice"}
    )
    events = fields.List(fields.Nested(EventSchema), required=True)


def dump_hold(hold: Hold) -> dict[str, Any]:
    """``HoldSchema().dump(hold)``, for the hot path (tests hold the two equal)."""
    return {
        "global_id": hold.global_id,
        "remote_id": hold.remote_id,
        "quantity": hold.quantity,
        "status": str(hold.status),
        "created_at": _timestamp(hold.created_at),
        "expires_at": _timestamp(hold.expires_at),
        "tevo_order_id": hold.tevo_order_id,
        "invoiced_at": _timestamp(hold.invoiced_at),
        "released_at": _timestamp(hold.released_at),
    }
