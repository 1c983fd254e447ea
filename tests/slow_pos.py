"""A POS for tests of real processes: the reference inventory, never fused, with slow calls.

Name it in ``TEVO_HOLD_ADAPTER=tests.slow_pos:SlowInventory`` (gunicorn runs from the project
root). Every call takes the step-by-step path (claim in the ledger, POS call, finish), as a POS
of one's own does. The first hold or invoice of a ``global_id`` on a listing whose ``remote_id``
starts with ``slow-`` moves the tickets, then writes the worker's pid to the key
``slow-pos:<call>:<global_id>`` and sleeps ``TEST_POS_DELAY`` seconds (2) before it answers: a
test knows the call is in flight (and that the POS acted), and which process to kill. Retries
do not sleep. An invoice on a listing whose ``remote_id`` starts with ``exit-`` raises
``SystemExit(3)``, every time, selling nothing: an adapter's bug (a ``sys.exit`` in a vendor's
code), which must end neither the server nor the worker.
"""

from __future__ import annotations

import os
import time
from datetime import datetime

from tevo_hold import Ledger, RedisInventoryAdapter, Settings
from tevo_hold._redis import translate_errors
from tevo_hold.connection import connect
from tevo_hold.keys import KeySpace

__all__ = ["SlowInventory", "marker"]


def marker(call: str, global_id: str) -> str:
    """The key where the first slow ``call`` ("hold", "invoice") of ``global_id`` puts its pid."""
    return f"slow-pos:{call}:{global_id}"


class SlowInventory(RedisInventoryAdapter):
    """:class:`RedisInventoryAdapter` on a client of its own, slow for ``slow-*`` listings."""

    @classmethod
    def from_settings(cls, settings: Settings) -> SlowInventory:
        return cls(
            connect(settings), keys=KeySpace(settings.key_prefix), retention=settings.retention
        )

    def fuses_with(self, ledger: Ledger) -> bool:
        return False

    def _first_call_sleeps(self, call: str, global_id: str, remote_id: str) -> None:
        if not remote_id.startswith("slow-"):
            return
        with translate_errors():
            first = self.client.set(marker(call, global_id), os.getpid(), nx=True)
        if first:
            time.sleep(float(os.environ.get("TEST_POS_DELAY", "2")))

    def hold(self, *, global_id: str, remote_id: str, quantity: int, expires_at: datetime) -> None:
        super().hold(
            global_id=global_id, remote_id=remote_id, quantity=quantity, expires_at=expires_at
        )
        self._first_call_sleeps("hold", global_id, remote_id)

    def invoice(
        self, *, global_id: str, remote_id: str, quantity: int, tevo_order_id: int | str
    ) -> None:
        if remote_id.startswith("exit-"):
            raise SystemExit(3)  # gunicorn's exit code for "Worker failed to boot"
        super().invoice(
            global_id=global_id,
            remote_id=remote_id,
            quantity=quantity,
            tevo_order_id=tevo_order_id,
        )
        self._first_call_sleeps("invoice", global_id, remote_id)

    def close(self) -> None:
        self.client.close()
