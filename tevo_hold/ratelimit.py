"""Rate limits per API key, shared by every process through the deployment's Redis.

``TEVO_HOLD_RATE_LIMIT`` (``600 per minute`` by default; ``20/second; 1000/hour`` for two limits;
``off``) is one budget per API key *name*, whatever the number of workers and hosts. Each limit
is a GCRA (generic cell rate algorithm) with a burst of its amount N: a key may send up to N calls
at once, then one call every period / N on average. So over any window of one period at most
2N - 1 calls pass (a burst, then the steady rate), and in the long run N per period. A period is
at most :data:`MAX_PERIOD_SECONDS` (a year), an amount at most :data:`MAX_AMOUNT`: the charge's
arithmetic in Redis is exact within those.

The charge rides on the request's first script call (:func:`tevo_hold._redis.charge_next_call`,
``lua/_charge.lua``): checked and counted in the same atomic step as the call's own work, in the
same round trip. A refused call runs nothing and is not counted; the answer is ``429
rate_limited`` with ``Retry-After``. Requests refused before they reach Redis (no key, a bad body)
cost Redis nothing and are not counted. A hold's first invoice over the budget is sold all the
same (see ``create_invoice`` in :mod:`tevo_hold.web`): its buyer has paid. On a Redis Cluster
the charge is a call of its own, just before the request's first (its keys and the call's lie
in different slots).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._redis import Charge
from .keys import KeySpace

__all__ = ["MAX_AMOUNT", "MAX_PERIOD_SECONDS", "Limit", "Limits", "parse"]

#: The largest amount of one limit.
MAX_AMOUNT = 10**9
#: The longest period of one limit: a year of 365 days.
MAX_PERIOD_SECONDS = 365 * 86400

_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_LIMIT = re.compile(
    r"^\s*(\d+)\s*(?:/|per)\s*(\d*)\s*(second|minute|hour|day)s?\s*$", re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class Limit:
    """``amount`` calls per ``count`` ``unit`` (``600 per 1 minute``)."""

    amount: int
    count: int
    unit: str

    @property
    def period_ms(self) -> int:
        return self.count * _UNITS[self.unit] * 1000

    def __str__(self) -> str:
        return f"{self.amount} per {self.count} {self.unit}"


def parse(text: str) -> tuple[Limit, ...]:
    """The limits of ``text``: ``N per [M] second|minute|hour|day`` (or ``N/[M]unit``), several
    separated by ``;`` or ``,``. Raises ValueError naming the part it cannot read, or cannot use:
    an amount or period of 0, an amount over :data:`MAX_AMOUNT`, a period over
    :data:`MAX_PERIOD_SECONDS`."""
    limits = []
    for part in re.split(r"[;,]", text):
        if not part.strip():
            continue
        match = _LIMIT.match(part)
        if match is None:
            raise ValueError(
                f"{part.strip()!r} is not a limit: write 'N per minute', 'N/second', "
                "'N per 2 hours', ... (units: second, minute, hour, day)"
            )
        amount, count, unit = int(match[1]), int(match[2] or 1), match[3].lower()
        if amount < 1 or count < 1:
            raise ValueError(
                f"{part.strip()!r} is not a usable limit: amounts and periods must be at least 1"
            )
        if amount > MAX_AMOUNT or count * _UNITS[unit] > MAX_PERIOD_SECONDS:
            raise ValueError(
                f"{part.strip()!r} is not a usable limit: amounts are at most {MAX_AMOUNT:,} "
                "and periods at most 365 days"
            )
        limits.append(Limit(amount, count, unit))
    if not limits:
        raise ValueError("no limit given")
    return tuple(limits)


class Limits:
    """The charges of ``limits`` for each API key name, in the keys of ``keys``."""

    def __init__(self, limits: tuple[Limit, ...], keys: KeySpace) -> None:
        self.limits = limits
        self.keys = keys
        self._charges: dict[str, Charge] = {}

    def charge(self, name: str) -> Charge:
        """The charge of one call of the key named ``name`` (made once per name, then reused)."""
        charge = self._charges.get(name)
        if charge is None:
            charge = Charge(
                keys=tuple(self.keys.quota(name, lim.amount, lim.period_ms) for lim in self.limits),
                limits=tuple((lim.amount, lim.period_ms) for lim in self.limits),
                names=tuple(str(lim) for lim in self.limits),
            )
            if len(self._charges) < 10_000:  # key names are few; never grow without bound
                self._charges[name] = charge
        return charge
