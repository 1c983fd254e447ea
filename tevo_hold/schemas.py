"""marshmallow schemas of the HTTP API's bodies (the OpenAPI document is generated from them)."""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields

from .errors import InvalidRequest
from .validation import MAX_ID_LENGTH, MAX_QUANTITY, check_id, check_order_id, check_quantity

__all__ = [
    "EventSchema",
    "HoldDetailSchema",
    "HoldRequestSchema",
    "HoldSchema",
    "InvoiceRequestSchema",
    "ReleaseRequestSchema",
]


class _Checked(fields.Field):  # type: ignore[type-arg]
    """A field whose value is checked (and normalised) by one of :mod:`tevo_hold.validation`'s."""

    def _check(self, value: Any) -> Any:
        raise NotImplementedError  # pragma: no cover - each subclass has its own

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


class Timestamp(fields.Field):  # type: ignore[type-arg]
    """An RFC 3339 UTC timestamp with milliseconds: ``2026-11-23T12:00:00.123Z``."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        text: str = value.strftime("%Y-%m-%dT%H:%M:%S.")
        return f"{text}{value.microsecond // 1000:03d}Z"


_TIME = {"type": "string", "format": "date-time"}
_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}


class _Request(Schema):
    class Meta:
        unknown = EXCLUDE  # TEvo may add attributes; they are ignored, never an error

    def handle_error(self, error: ValidationError, data: Any, **kwargs: Any) -> None:
        messages = error.normalized_messages()  # type: ignore[no-untyped-call]
        fields_ = ", ".join(sorted(messages))
        raise InvalidRequest(f"Invalid or missing field(s): {fields_}.", messages)


class HoldRequestSchema(_Request):
    """Body of ``POST /v1/holds``."""

    remote_id = Id(
        required=True,
        metadata={**_ID, "description": "The listing's id, as the seller gave it to TEvo."},
    )
    quantity = Quantity(
        required=True,
        metadata={
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_QUANTITY,
            "description": "Tickets to hold.",
        },
    )
    global_id = Id(
        required=True,
        metadata={
            **_ID,
            "description": "TEvo's id of this checkout: links hold, release and invoice.",
        },
    )


class ReleaseRequestSchema(_Request):
    """Body of ``POST /v1/releases``."""

    global_id = Id(required=True, metadata={**_ID, "description": "The hold's global_id."})


class InvoiceRequestSchema(_Request):
    """Body of ``POST /v1/invoices``."""

    global_id = Id(required=True, metadata={**_ID, "description": "The hold's global_id."})
    tevo_order_id = OrderId(
        required=True,
        metadata={
            "oneOf": [{"type": "integer", "minimum": 1}, _ID],
            "description": "TEvo's order id (integer or string).",
        },
    )


class HoldSchema(Schema):
    """A hold, as every successful answer gives it."""

    global_id = fields.String(required=True)
    remote_id = fields.String(required=True)
    quantity = fields.Integer(required=True)
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
            "description": "pending: its hold call is running; held; expired: lapsed "
            "(or released after it lapsed); released; invoicing: its invoice call is "
            "running; invoiced; invoice_failed: the POS failed the invoice, which is "
            "being retried (it can neither lapse nor be released).",
        },
    )
    created_at = Timestamp(required=True, metadata=_TIME)
    expires_at = Timestamp(required=True, metadata=_TIME)
    tevo_order_id = fields.Raw(allow_none=True)
    invoiced_at = Timestamp(allow_none=True, metadata=_TIME)
    released_at = Timestamp(allow_none=True, metadata=_TIME)


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
        allow_none=True,
        metadata={"description": "invoice_failed: the POS's last answer to the invoice"},
    )
    invoice_attempts = fields.Integer(
        required=True, metadata={"description": "how many times the POS failed the invoice"}
    )
    events = fields.List(fields.Nested(EventSchema), required=True)
