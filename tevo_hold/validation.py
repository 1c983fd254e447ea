"""The bounds of every input, checked the same way by the core and by the HTTP schemas."""

from __future__ import annotations

import math
from typing import Any

from .errors import InvalidRequest

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_QUANTITY",
    "MAX_STOCK",
    "check_id",
    "check_id_bytes",
    "check_order_id",
    "check_quantity",
]

#: Longest id (remote_id, global_id, a string tevo_order_id), in characters.
MAX_ID_LENGTH = 255
#: Most tickets one hold may take.
MAX_QUANTITY = 10_000
#: Most unsold tickets a listing of the reference inventory may have: the largest whole number
#: the Lua scripts' numbers (doubles) hold exactly. A larger one was rounded, and from 2^63 on
#: read back as a negative stock.
MAX_STOCK = 2**53 - 1


def _fail(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {message}", {field: [message]})


def check_id(field: str, value: Any) -> str:
    """A non-empty string of at most MAX_ID_LENGTH characters that UTF-8 can encode."""
    if not isinstance(value, str):
        raise _fail(field, "must be a string")
    if not value:
        raise _fail(field, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise _fail(field, f"must be at most {MAX_ID_LENGTH} characters")
    if not value.isascii():  # (isascii is a flag CPython keeps: no scan, no copy)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _fail(field, "must be valid Unicode (no lone surrogates)") from None
    return value


def check_id_bytes(field: str, raw: bytes) -> str:
    """An id sent as bytes (a percent-decoded URL path segment): strict UTF-8, then check_id.

    Bytes that are not UTF-8 are refused, never replaced (two different ids would read as the
    same one); a lone surrogate's encoding (``%ED%A0%80``) is refused as check_id refuses the
    same surrogate in a JSON body (``"\\ud800"``).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        try:
            text = raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise _fail(field, "must be valid UTF-8 (percent-encode its UTF-8 bytes)") from None
    return check_id(field, text)


def _integer(value: Any) -> int | None:
    """``value`` as an int if it is a JSON integer (``2.0`` counts, booleans do not), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def check_quantity(value: Any, field: str = "quantity") -> int:
    """An integer from 1 to MAX_QUANTITY."""
    number = _integer(value)
    if number is None:
        raise _fail(field, "must be an integer")
    if not 1 <= number <= MAX_QUANTITY:
        raise _fail(field, f"must be between 1 and {MAX_QUANTITY}")
    return number


def check_order_id(value: Any, field: str = "tevo_order_id") -> int | str:
    """A positive integer, or an id string (see check_id)."""
    if isinstance(value, str):
        return check_id(field, value)
    number = _integer(value)
    if number is None:
        raise _fail(field, "must be a positive integer or a non-empty string")
    if not 1 <= number < 2**63:
        raise _fail(field, "must be a positive integer below 2**63")
    return number
