"""Calls that outlive their lease, and the work they leave: nothing is lost, and a late call undoes
nothing that came after it.

A request or a worker that stalls (a slow POS, a paused process) past its lease loses its claim:
another attempt takes the hold or the due item over. When the stalled call lands at last, it must
neither shorten the newer attempt's hold, nor drop work another worker now owns, nor mark done a
POS release that it may have made too early. And work owed to the POS (a release, a failed sale)
outlives any retention period, however long the POS or the worker is down.

Every test runs on fakeredis, a real redis-server and a Redis Cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tevo_hold import HoldService
from tevo_hold.adapters.redis_inventory import RedisInventoryAdapter
from tevo_hold.models import HoldStatus

#: Long enough past a lease of LEASE seconds for it to have ended, whatever the machine's pace.
LEASE = 0.05
PAST_LEASE = 0.15


# -- holds -------------------------------------------------------------------------------------


def test_a_stalled_hold_attempt_never_moves_the_hold_s_deadline_back(
    make_service: Callable[..., HoldService],
) -> None:
    """Attempt A claims the hold and stalls past its lease; TEvo's retry B takes the claim over
    and holds until a later deadline. A's POS hold lands at last, with A's (earlier) deadline:
    the tickets must stay held until B's, which the ledger answered, or they would go back on
    sale while the ledger still says held (and the invoice would find them gone)."""
    service = make_service(hold_ttl=60, lease=LEASE)
    inventory = service.adapter
    assert isinstance(inventory, RedisInventoryAdapter)
    inventory.set_quantity("L", 1)
    a = service.ledger.claim_hold("g", "L", 1, ttl=60, lease=LEASE, token="attempt-a")
    time.sleep(PAST_LEASE)
    b = service.hold(remote_id="L", quantity=1, global_id="g").hold
    assert b.status is HoldStatus.HELD and b.expires_at > a.hold.expires_at

    inventory.hold(global_id="g", remote_id="L", quantity=1, expires_at=a.hold.expires_at)

    due = inventory.client.zscore(inventory.keys.listing("L")[2], "g")
    assert due == pytest.approx(b.expires_at.timestamp() * 1000, abs=1)
    assert inventory.stock("L").held == 1
