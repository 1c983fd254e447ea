"""The Redis ledger of holds: one record per ``global_id``, changed only by ``ledger.lua``."""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import redis.exceptions
from redis.cluster import ClusterNode, RedisCluster

from . import errors
from ._redis import SCRIPT_ERRORS, RedisClient, Script, _is_outage, _name, translate_errors
from .keys import SHARDS, KeySpace, shard_of
from .models import Event, Hold, HoldStatus

__all__ = ["Backlog", "Claim", "DueItem", "Ledger"]

log = logging.getLogger("tevo_hold")

#: Kinds of due work: release a lapsed hold, compensate an unknown outcome, retry an invoice.
DueKind = Literal["l", "c", "i"]


@dataclass(frozen=True, slots=True)
class Claim:
    """A ledger reply: the record as it now stands, and whether the call changed it.

    ``at`` is when the call ran, in ms since the epoch by the Redis server's clock (what
    :meth:`Ledger.released_in_pos` is told of the release or claim before its POS call).
    """

    hold: Hold
    changed: bool
    at: int = 0
    #: The record says the hold was released in the POS (by the worker, after it lapsed, or
    #: after a release call): a release that finds it lapsed then finds a lapse counted already.
    pos_released: bool = False


@dataclass(frozen=True, slots=True)
class DueItem:
    """A piece of work in a shard's due set: ``kind`` for the hold ``global_id``."""

    kind: DueKind
    global_id: str


@dataclass(frozen=True, slots=True)
class Backlog:
    """The worker's outstanding work: ``items`` due now that no worker has taken, and how long
    the oldest of them has waited past its time, in seconds (``oldest_seconds``, 0 for none)."""

    items: int
    oldest_seconds: float


def _ms(value: str) -> datetime:
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


class Ledger:
    """Hold records in Redis, each in its own hash, with its audit trail and its shard's outbox.

    Every method is one script call: one round trip, atomic, and safe to repeat with the same
    arguments. Times come from the Redis server's clock, so every process agrees on them.
    ``actor`` (who acts: ``"api"``, ``"worker"``, ``"cli"``) goes into the audit trail.
    Methods raise the typed errors of :mod:`tevo_hold.errors` that the script answers with, and
    :class:`~tevo_hold.errors.Unavailable` when Redis cannot be reached.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        keys: KeySpace | None = None,
        retention: float = 7 * 24 * 3600,
    ) -> None:
        self.client = client
        self.keys = keys or KeySpace()
        self.retention_ms = int(retention * 1000)
        self._script = Script(client, "ledger")
        self._due_keys = [self.keys.due(shard) for shard in range(SHARDS)]
        #: The masters (of a cluster) whose due sets the last reading could not read.
        self._unreachable: set[str] = set()
        self._unreachable_lock = threading.Lock()

    # -- hold ------------------------------------------------------------------------------
    def claim_hold(
        self,
        global_id: str,
        remote_id: str,
        quantity: int,
        *,
        ttl: float,
        lease: float,
        token: str,
        actor: str = "api",
    ) -> Claim:
        """Start a hold: create its ``pending`` record leased to ``token`` for ``lease`` seconds.

        A compensation (a release in the POS) is scheduled for the lease's end, and cancelled by
        :meth:`finish_hold` or :meth:`abort_hold`: if the request dies half-way, the worker gives
        back whatever the POS may have held. ``changed`` is False when a hold with this
        ``global_id`` already finished (a retry to replay). Raises GlobalIdConflict (other
        remote_id or quantity) and RequestInProgress (another request holds the lease).
        """
        return self._call(
            global_id,
            actor,
            "claim_hold",
            remote_id,
            quantity,
            _ms_of(ttl),
            _ms_of(lease),
            token,
            self.retention_ms,
        )

    def finish_hold(
        self, global_id: str, token: str, *, track_lapse: bool = False, actor: str = "api"
    ) -> Claim | None:
        """Mark the pending hold of ``token`` as ``held``.

        With ``track_lapse`` the worker is to release the hold in the POS when it lapses.
        None when the claim was lost: its lease ended while the POS call ran, and the hold was
        compensated, released or is being compensated meanwhile (see :meth:`lost_hold`).
        Raises RequestInProgress when a retry has taken the claim over and is still running.
        """
        reply = self._run(
            global_id, actor, "finish_hold", token, self.retention_ms, "1" if track_lapse else "0"
        )
        if reply[0] == "lost":
            return None
        return self.claim_from_reply(reply, global_id)

    def abort_hold(
        self, global_id: str, token: str, detail: str = "", *, lease: float, actor: str = "api"
    ) -> None:
        """Forget the pending hold of ``token``: the POS refused it (``detail``), a retry starts
        afresh. If the claim took over one whose POS call has no known outcome, the hold is
        compensated instead, as after :meth:`unknown_hold` (``lease`` seconds from now): the
        refusal does not undo that call.
        """
        self._run(global_id, actor, "abort_hold", token, detail, _ms_of(lease))

    def lost_hold(
        self,
        global_id: str,
        remote_id: str,
        quantity: int,
        *,
        ttl: float,
        detail: str,
        actor: str = "api",
    ) -> None:
        """The POS answered a hold after its claim was lost (:meth:`finish_hold` said None):
        the worker is to release it in the POS once more, unless a retry has taken the hold over
        and owns the tickets.
        """
        self._run(global_id, actor, "lost_hold", remote_id, quantity, _ms_of(ttl), detail)

    def unknown_hold(
        self, global_id: str, token: str, detail: str, *, lease: float, actor: str = "api"
    ) -> bool:
        """The POS call of ``token``'s hold has no known outcome: compensate it later.

        The lease ends at once, so a retry of the hold may take it over (the POS is idempotent per
        global_id); unless one finishes it, the worker releases the hold in the POS ``lease``
        seconds from now (the claims' lease, which outlasts the POS's slowest call): not sooner,
        since the POS may still be making the hold, and a release that came first would give
        back nothing. False when the claim was lost meanwhile, as for :meth:`finish_hold`: call
        :meth:`lost_hold`.
        """
        outcome: str = self._run(global_id, actor, "unknown_hold", token, detail, _ms_of(lease))[0]
        return outcome != "lost"

    # -- release ---------------------------------------------------------------------------
    def release(
        self,
        global_id: str,
        *,
        lease: float = 10,
        track_release: bool = False,
        actor: str = "api",
    ) -> Claim:
        """Mark a held hold ``released`` (``expired`` if it had lapsed).

        With ``track_release`` a POS release is due at the lease's end, unless
        :meth:`released_in_pos` confirms first that it happened: for a ``pending`` hold (its POS
        call timed out, or its request died), only by a POS release that began ``lease``
        seconds from now or later, once that call has landed in the POS or never will.
        ``changed`` is False when it was already released. Raises HoldNotFound,
        HoldAlreadyInvoiced (invoiced, or its invoice failed and is being retried),
        RequestInProgress (its hold or invoice call is running).
        """
        track = "1" if track_release else "0"
        return self._call(global_id, actor, "release", self.retention_ms, _ms_of(lease), track)

    def released_in_pos(self, global_id: str, *, since: int, actor: str = "api") -> bool:
        """The hold was released in the POS, by a call made after the ledger call whose
        :attr:`Claim.at` is ``since`` (the release, or the worker's claim): no POS release is due
        any more. Unless a POS hold that answered late asked for the release again after
        ``since`` (:meth:`lost_hold`): that call may have reached the POS first, and the release
        stays due.

        True when this call recorded the hold lapsed: still held past its deadline, released in
        the POS before any release call (a release that comes later finds
        :attr:`Claim.pos_released`)."""
        return int(self._run(global_id, actor, "released_in_pos", since, self.retention_ms)[2]) == 1

    # -- invoice ---------------------------------------------------------------------------
    def claim_invoice(
        self,
        global_id: str,
        tevo_order_id: int | str,
        *,
        lease: float,
        token: str,
        actor: str = "api",
    ) -> Claim:
        """Start an invoice: ``held`` (lapsed or not) or ``invoice_failed`` becomes ``invoicing``.

        From then on the hold can neither lapse nor be released, and the invoice is due at the
        lease's end: if the request dies, the worker retries it. The record is kept (no TTL)
        until the invoice is finished or aborted, however long the POS fails it. ``changed`` is
        False when it was already invoiced under this order id. Raises HoldNotFound,
        HoldReleased, OrderIdConflict, RequestInProgress.
        """
        return self._call(
            global_id,
            actor,
            "claim_invoice",
            str(tevo_order_id),
            json.dumps(tevo_order_id),
            _ms_of(lease),
            token,
        )

    def finish_invoice(
        self,
        global_id: str,
        token: str,
        tevo_order_id: int | str | None = None,
        *,
        actor: str = "api",
    ) -> Claim:
        """Mark the invoice of ``token`` done: the hold is ``invoiced``.

        Given the order ``tevo_order_id`` that the POS sold the tickets under, the sale counts
        whoever claims the invoice now: a POS call that answered after its lease, when another
        attempt at that order had taken the invoice over (and perhaps failed it since), made the
        sale (the POS is idempotent per global_id, so the other attempt sells nothing more).
        Without it, only ``token``'s own claim. ``changed`` is False when it was invoiced
        already. Raises RequestInProgress when the record is another attempt's (or was given
        back meanwhile), HoldNotFound when there is none.
        """
        order = "" if tevo_order_id is None else str(tevo_order_id)
        return self._call(global_id, actor, "finish_invoice", token, self.retention_ms, order)

    def abort_invoice(
        self, global_id: str, token: str, *, lapsed: bool, detail: str = "", actor: str = "api"
    ) -> Claim:
        """Give the hold back the state it had before the invoice of ``token``.

        With ``lapsed`` (the POS said its tickets are gone) the hold's deadline is brought
        forward to now, so it reads ``expired``. ``changed`` is False when ``token``'s claim
        was taken over meanwhile (its lease ended during the POS call) and that attempt is done
        with it: the record is then as that attempt left it (``invoiced``, ``invoice_failed``:
        kept and retried, or given back). Raises RequestInProgress while that attempt runs.
        """
        becomes = "lapsed" if lapsed else "held"
        return self._call(
            global_id, actor, "abort_invoice", token, becomes, detail, self.retention_ms
        )

    def fail_invoice(
        self, global_id: str, token: str, detail: str, *, retry_in: float, actor: str = "api"
    ) -> Claim:
        """The POS failed the invoice of ``token``: it is retried after ``retry_in`` seconds."""
        return self._call(global_id, actor, "fail_invoice", token, detail, _ms_of(retry_in))

    # -- the worker's outbox ---------------------------------------------------------------
    def _now_ms(self) -> int:
        """This Redis's clock in ms, as the scripts read it."""
        seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def due_items(self, *, limit: int = 100, past: Iterable[DueItem] = ()) -> list[DueItem]:
        """Due work across every shard, oldest first within a shard, at most ``limit`` per shard
        beyond the items of ``past`` (two round trips; on a cluster, two per master).

        ``past`` names items the caller knows to stay due (those it could not claim, say): as
        long as they do, they sit at the front of their shard, and ``limit`` items after them
        are read too, so that no number of them hides the shard's other work.

        On a cluster, the shards of a master that does not answer are skipped, and logged once
        per outage (see :meth:`_read_due_sets`): the other masters' work is done meanwhile.
        Raises Unavailable when no shard could be read.
        """
        extra = Counter(self.keys.due(shard_of(item.global_id)) for item in past)

        def queue(pipe: Any, key: str, now: int) -> None:
            pipe.zrangebyscore(key, "-inf", now, 0, limit + extra[key])

        items = []
        for _, replies in self._read_due_sets(queue, partial=True):
            for members in replies:
                for member in members:
                    text = member.decode("utf-8") if isinstance(member, bytes) else member
                    if len(text) < 2:  # no kind and global_id: no item of ours (hand-written)
                        self._note_malformed(text)
                        continue
                    items.append(DueItem(text[0], text[1:]))  # type: ignore[arg-type]
        return items

    def _note_malformed(self, member: str) -> None:
        """Log, once per process, a due-set member that names no item (it is left as it is)."""
        if member in _MALFORMED_SEEN:
            return
        _MALFORMED_SEEN.add(member)
        log.warning(
            "a due set holds %r, which names no work (a kind and a global_id): left alone; "
            "remove it from the due sets (%s:{h<n>}:due) if it was written by hand",
            member,
            self.keys.prefix,
        )

    def backlog(self) -> Backlog:
        """How much due work waits for a worker, across every shard (two round trips, two per
        master on a cluster; for monitoring, not the hot path). An item a worker has taken is
        not due until its lease ends, and one whose POS call failed not until its retry, so a
        backlog that grows old means no worker is doing the work (none runs, or each is
        stuck). Raises Unavailable, also when a single master of a cluster does not answer:
        a backlog that leaves a master's shards out would hide the work waiting there.
        """

        def queue(pipe: Any, key: str, now: int) -> None:
            pipe.zcount(key, "-inf", now)
            pipe.zrangebyscore(key, "-inf", now, 0, 1, withscores=True)

        items, waited = 0, 0.0
        for now, replies in self._read_due_sets(queue, partial=False):
            items += sum(replies[0::2])
            oldest = min((score for first in replies[1::2] for _, score in first), default=now)
            waited = max(waited, now - oldest)
        return Backlog(items, waited / 1000)

    def scheduled(self, kind: DueKind) -> Iterator[str]:
        """The global_ids with work of ``kind`` scheduled, due or not (e.g. failed invoices)."""

        def queue(pipe: Any, key: str, now: int) -> None:
            pipe.zrange(key, 0, -1)

        for _, replies in self._read_due_sets(queue, partial=False):
            for members in replies:
                for member in members:
                    text = member.decode("utf-8") if isinstance(member, bytes) else member
                    if text[0] == kind:
                        yield text[1:]

    def _read_due_sets(
        self, queue: Callable[[Any, str, int], None], *, partial: bool
    ) -> list[tuple[int, list[Any]]]:
        """Read every shard's due set: ``queue(pipe, key, now)`` queues a shard's commands on a
        pipeline, ``now`` the clock (in ms) of the Redis that holds the shard. Returns a list of
        (now, the replies of its shards' commands, in order), one per Redis read.

        One Redis: its clock, then one pipeline (two round trips). A cluster: the same for each
        master, which the shards' due sets are grouped by, so that a master that does not answer
        fails its own shards only. (redis-py's cluster pipeline fails as a whole, after sending
        each of the stalled master's commands again one by one: about 86 timeouts.) Each
        master's clock is its own, as its scripts read it, so no master is needed for the clock
        of the others. With ``partial`` the shards of a master that does not answer are skipped
        (logged once per outage, and when it answers again); else, and when no master answers,
        Unavailable is raised.
        """
        with translate_errors():
            if not isinstance(self.client, RedisCluster):
                now = self._now_ms()
                pipe = self.client.pipeline(transaction=False)
                for key in self._due_keys:
                    queue(pipe, key, now)
                return [(now, pipe.execute())]
            return self._read_due_sets_per_master(self.client, queue, partial=partial)

    def _read_due_sets_per_master(
        self, client: RedisCluster, queue: Callable[[Any, str, int], None], *, partial: bool
    ) -> list[tuple[int, list[Any]]]:
        groups: dict[str, tuple[ClusterNode, list[str]]] = {}
        failed: dict[str, tuple[int, BaseException]] = {}  # node: (shards, error)
        for key in self._due_keys:
            try:
                node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
            except redis.exceptions.SlotNotCoveredError as exc:  # no master serves its slot
                if not partial:
                    raise
                shards, _ = failed.get(_NO_MASTER, (0, exc))
                failed[_NO_MASTER] = (shards + 1, exc)
                continue
            groups.setdefault(f"Redis Cluster master {node.name}", (node, []))[1].append(key)
        found = []
        for name, (node, keys) in groups.items():
            try:
                found.append(self._read_master(client, node, keys, queue))
            except Exception as exc:
                if not partial or not _is_outage(exc):
                    raise
                failed[name] = (len(keys), exc)
        if partial:
            self._note_unreachable(failed)
            if not found and failed:  # nothing answered: the cluster is down, not a master
                raise next(iter(failed.values()))[1]
        return found

    @staticmethod
    def _read_master(
        client: RedisCluster,
        node: ClusterNode,
        keys: list[str],
        queue: Callable[[Any, str, int], None],
    ) -> tuple[int, list[Any]]:
        """The due sets ``keys``, all on master ``node``, read there: its clock, then one
        pipeline. A due set whose slot moved since the client last read the topology (MOVED)
        is read again through the cluster's client, which follows it."""
        # Through the cluster's client, so that a master that does not answer has the client
        # read the topology again (in the background), as for any command: a failover is seen.
        seconds, micros = client.execute_command("TIME", target_nodes=node)  # type: ignore[no-untyped-call]
        now = int(seconds) * 1000 + int(micros) // 1000
        pipe = client.get_redis_connection(node).pipeline(transaction=False)
        for key in keys:
            queue(pipe, key, now)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        per_key = len(replies) // len(keys)
        moved = [
            i
            for i in range(len(keys))
            if any(isinstance(r, Exception) for r in replies[i * per_key : (i + 1) * per_key])
        ]
        if moved:
            again = client.pipeline(transaction=False)  # type: ignore[no-untyped-call]
            for i in moved:
                queue(again, keys[i], now)
            fresh = again.execute()
            for n, i in enumerate(moved):
                replies[i * per_key : (i + 1) * per_key] = fresh[n * per_key : (n + 1) * per_key]
        return now, replies

    def _note_unreachable(self, failed: dict[str, tuple[int, BaseException]]) -> None:
        """Log the masters whose due sets could not be read, once per outage, and again when
        their shards are read again (the master is back, or its slots failed over)."""
        with self._unreachable_lock:
            before, self._unreachable = self._unreachable, set(failed)
        for name in sorted(set(failed) - before):
            shards, exc = failed[name]
            log.warning(
                "the due sets of %d of %d shards, on %s, could not be read "
                "(%s): their work (POS releases, invoice retries) waits until they can; the "
                "other masters' is done meanwhile",
                shards,
                SHARDS,
                name,
                _name(exc),
            )
        for name in sorted(before - set(failed)):
            log.warning("the due sets on %s are read again", name)

    def claim_due(
        self, item: DueItem, token: str, *, lease: float, actor: str = "worker"
    ) -> Claim | None:
        """Take ``item`` for ``lease`` seconds, or None if it is not due or needs no work.

        Taking it hides it from other workers until the lease ends (then it is due again, so a
        worker that dies loses nothing). For a compensation or an invoice retry the record is
        leased to ``token`` too, so TEvo's own retries wait (``request_in_progress``).
        """
        reply = self._run(
            item.global_id,
            actor,
            "claim_due",
            item.kind,
            token,
            _ms_of(lease),
            self.retention_ms,
        )
        if reply[0] == "skip":
            return None
        return self.claim_from_reply(reply, item.global_id)

    def compensated(self, global_id: str, token: str, *, actor: str = "worker") -> None:
        """The worker released the hold of unknown outcome in the POS: forget the hold."""
        self._run(global_id, actor, "compensated", token, self.retention_ms)

    def retry_due(
        self,
        item: DueItem,
        token: str,
        detail: str,
        *,
        retry_in: float,
        retry_cap: float | None = None,
        actor: str = "worker",
    ) -> None:
        """The POS call for ``item`` failed (``detail``): it is due again in ``retry_in`` s,
        doubled for each earlier failure of the hold's POS releases, at most ``retry_cap`` s
        (``retry_in`` when not given). The record outlives the retry by the retention period."""
        cap = retry_in if retry_cap is None else max(retry_cap, retry_in)
        self._run(
            item.global_id,
            actor,
            "retry_due",
            item.kind,
            token,
            detail,
            _ms_of(retry_in),
            _ms_of(cap),
            self.retention_ms,
        )

    # -- read ------------------------------------------------------------------------------
    def get(self, global_id: str, *, history: bool = False) -> Hold:
        """The hold as it stands now, with its audit trail if ``history``. Raises HoldNotFound."""
        return self._call(global_id, "api", "get", "1" if history else "0").hold

    def scan(self, *, count: int = 500) -> Iterator[Hold]:
        """Every hold record, in no order (a SCAN: for operators, not for the hot path)."""
        with translate_errors():
            for key in self.client.scan_iter(match=self.keys.hold_pattern(), count=count):
                global_id = self.keys.global_id_of(_text(key))
                if global_id is None:  # another key the pattern matched (a prefix with globs)
                    continue
                try:
                    yield self.get(global_id)
                except errors.HoldNotFound:
                    continue  # expired between the scan and the read

    # -- plumbing --------------------------------------------------------------------------
    def _call(self, global_id: str, actor: str, command: str, *args: str | int) -> Claim:
        return self.claim_from_reply(self._run(global_id, actor, command, *args), global_id)

    def _run(self, global_id: str, actor: str, command: str, *args: str | int) -> list[Any]:
        return self._script(list(self.keys.hold(global_id)), [command, global_id, actor, *args])

    def claim_from_reply(
        self, reply: list[Any], global_id: str, remote_id: str | None = None
    ) -> Claim:
        """Decode a reply of a script built on ``_ledger.lua``: a Claim, or its typed error.

        ``remote_id`` names the listing in the messages of listing errors.
        """
        outcome, now, extra = reply[0], int(reply[1]), int(reply[2])
        if outcome not in ("ok", "replay"):
            if remote_id is None and reply[3] != "{}":  # a record came with the error
                remote_id = orjson.loads(reply[3]).get("rid")
            raise _script_error(outcome, global_id, remote_id, extra)
        fields: dict[str, str] = orjson.loads(reply[3])
        if not fields:
            raise errors.HoldNotFound(f"No hold has global_id {global_id!r}.")
        events = tuple(_event(entry) for entry in reply[4]) if len(reply) > 4 else ()
        hold = _to_hold(global_id, fields, now, events)
        return Claim(hold, changed=outcome == "ok", at=now, pos_released="pr" in fields)


#: Where the shards whose slot no master serves lie, for the log (see Ledger._note_unreachable).
_NO_MASTER = "no master (their slots are not covered)"
#: The due-set members naming no work that this process has logged (see _note_malformed).
_MALFORMED_SEEN: set[str] = set()


def _ms_of(seconds: float) -> int:
    return int(seconds * 1000)


def _text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _event(entry: str | bytes) -> Event:
    """One entry of the audit trail: the JSON array [at, event, status, by, detail]."""
    at, name, status, by, detail = orjson.loads(entry)
    return Event(_ms(at), name, status, by, detail)


#: Each status by its value: a dict lookup, where HoldStatus(value) goes through Enum's machinery.
_STATUS = {status.value: status for status in HoldStatus}


def _to_hold(global_id: str, f: dict[str, str], now: int, events: tuple[Event, ...]) -> Hold:
    status = _STATUS[f["st"]]
    if status is HoldStatus.HELD and now >= int(f["ea"]):
        status = HoldStatus.EXPIRED
    invoicing = status in (HoldStatus.INVOICING, HoldStatus.INVOICED, HoldStatus.INVOICE_FAILED)
    return Hold(
        global_id=global_id,
        remote_id=f["rid"],
        quantity=int(f["qty"]),
        status=status,
        created_at=_ms(f["ca"]),
        expires_at=_ms(f["ea"]),
        tevo_order_id=orjson.loads(f["oj"]) if invoicing and "oj" in f else None,
        invoiced_at=_ms(f["ia"]) if "ia" in f else None,
        released_at=_ms(f["ra"]) if "ra" in f else None,
        last_error=f.get("le") if status is HoldStatus.INVOICE_FAILED else None,
        invoice_attempts=int(f.get("na", 0)),
        events=events,
    )


_DETAILS = {
    "hold_not_found": "No hold has global_id {gid!r}.",
    "global_id_conflict": (
        "global_id {gid!r} already names a hold of another remote_id or quantity."
    ),
    "hold_released": "The hold {gid!r} was released; its tickets went back to the listing.",
    "hold_already_invoiced": (
        "The hold {gid!r} was invoiced (or its invoice is being retried); a sale is not undone "
        "by a release."
    ),
    "order_id_conflict": "The hold {gid!r} is invoiced under another tevo_order_id.",
    "request_in_progress": "Another request for global_id {gid!r} is running; retry shortly.",
    "listing_not_found": "No listing has remote_id {rid!r}.",
    "insufficient_quantity": "Listing {rid!r} has {extra} tickets available.",
    "hold_expired": "The hold {gid!r} lapsed and its tickets are no longer available.",
}


def _script_error(
    code: str, global_id: str, remote_id: str | None, extra: int
) -> errors.TevoHoldError:
    """The exception for a script's error ``code``; ``extra`` is its third reply item."""
    cls = SCRIPT_ERRORS.get(code)
    if cls is None:  # pragma: no cover - a script answering an unknown code is a bug
        return errors.InternalError(f"a ledger script answered an unknown outcome {code!r}")
    detail = _DETAILS.get(code, cls.title).format(gid=global_id, rid=remote_id, extra=extra)
    if cls is errors.RequestInProgress:
        return errors.RequestInProgress(detail, retry_after=math.ceil(extra / 1000))
    if cls is errors.InsufficientQuantity:
        return errors.InsufficientQuantity(detail, available=extra)
    return cls(detail)
