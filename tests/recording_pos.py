"""A POS adapter for tests that records its calls and moves no tickets."""

from __future__ import annotations

from datetime import datetime

from tevo_hold import PosAdapter


class RecordingPos(PosAdapter):
    """Every call appends ``(operation, global_id)`` to ``calls``, which a subclass provides
    (per instance, or on the class to see the calls of instances built elsewhere)."""

    calls: list[tuple[str, str]]

    def hold(self, *, global_id: str, remote_id: str, quantity: int, expires_at: datetime) -> None:
        self.calls.append(("hold", global_id))

    def release(self, *, global_id: str, remote_id: str, quantity: int) -> None:
        self.calls.append(("release", global_id))

    def invoice(
        self, *, global_id: str, remote_id: str, quantity: int, tevo_order_id: int | str
    ) -> None:
        self.calls.append(("invoice", global_id))
