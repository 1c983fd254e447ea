"""The hot path's loader and serialiser agree with the marshmallow schemas they stand in for."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from marshmallow import Schema

from tevo_hold import errors
from tevo_hold.models import Hold, HoldStatus
from tevo_hold.schemas import (
    HoldRequestSchema,
    HoldSchema,
    InvoiceRequestSchema,
    ReleaseRequestSchema,
    RequestLoader,
    dump_hold,
)

MISSING = object()
#: Values for any field: valid and invalid ids, quantities and order ids, and JSON's odd ones.
VALUES: list[Any] = [
    MISSING,
    None,
    "L1",
    "",
    "x" * 255,
    "x" * 256,
    "票 {a}",
    "\ud800",  # a lone surrogate: JSON can carry it, UTF-8 cannot
    2,
    2.0,
    2.5,
    0,
    -1,
    10_000,
    10_001,
    2**63,
    True,
    [],
    {},
]


def _outcome(load: Any, body: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "data", load(body)
    except errors.InvalidRequest as exc:
        return "error", (exc.detail, exc.errors)


@pytest.mark.parametrize("schema", [HoldRequestSchema, ReleaseRequestSchema, InvoiceRequestSchema])
def test_the_request_loader_answers_as_the_schema_does(schema: type[Schema]) -> None:
    marshmallow, fast = schema(), RequestLoader(schema())
    names = list(marshmallow.load_fields)
    cases = 0
    for values in itertools.product(VALUES, repeat=len(names)):
        body = {n: v for n, v in zip(names, values, strict=True) if v is not MISSING}
        body["unknown"] = "ignored"
        assert _outcome(fast, body) == _outcome(marshmallow.load, body), body
        cases += 1
    assert cases == len(VALUES) ** len(names)


def test_the_request_loader_takes_only_checked_fields() -> None:
    from marshmallow import fields

    class Loose(HoldRequestSchema):
        note = fields.String()

    with pytest.raises(TypeError, match="note"):
        RequestLoader(Loose())


def _holds() -> list[Hold]:
    at = datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=UTC)
    holds = []
    for status in HoldStatus:
        for order in (None, 734912, "A-1"):
            holds.append(
                Hold(
                    global_id="g {1}",
                    remote_id="票",
                    quantity=3,
                    status=status,
                    created_at=at,
                    expires_at=at + timedelta(minutes=15, microseconds=999),
                    tevo_order_id=order,
                    invoiced_at=at if order else None,
                    released_at=None if order else at + timedelta(seconds=1),
                )
            )
    return holds


def test_dump_hold_is_the_schemas_dump() -> None:
    schema = HoldSchema()
    for hold in _holds():
        assert dump_hold(hold) == schema.dump(hold)
        assert list(dump_hold(hold)) == list(schema.dump(hold))  # the same order too
