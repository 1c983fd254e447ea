"""Ids that must be unique, and need not be secret: request ids and lease tokens."""

from __future__ import annotations

import random

__all__ = ["unique_hex"]


def unique_hex() -> str:
    """32 hex digits: 128 random bits from :mod:`random`, which every forked process reseeds
    from the system (``os.register_at_fork``), so that no two processes share a sequence.

    Not :mod:`secrets`: no such id is ever a credential (a request id is sent back to the
    client, a lease token never leaves the server and its Redis), and ``os.urandom`` is a system
    call that also lets go of the GIL, on every request.
    """
    return f"{random.getrandbits(128):032x}"
