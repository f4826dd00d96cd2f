"""The order of OCPP 2.0.1 TransactionEvents (E01-E07, E11/E12 offline replays).

Every TransactionEventRequest is kept as received (:class:`csms.models.TransactionEventRecord`)
with its outcome, and each new one is judged against those of the same transaction before it
reaches the charging service:

=========================================  ==========  =====================================
the event                                  outcome     effect
=========================================  ==========  =====================================
a seqNo already applied, same eventType    replay      nothing changes; same answer again
a seqNo already applied, other eventType   conflict    nothing changes; kept for review
any event after the Ended was applied      late        nothing changes; kept for review
anything else                              applied     handed to the charging service
=========================================  ==========  =====================================

A seqNo more than one above the highest applied one is a gap: recorded as an ``OcppEvent``
``tx_seq_gap`` (with the missing numbers) and the transaction flag ``seq_gap``. A missing event
that arrives later (out of order, before the Ended) is still applied: the energy logic ignores
readings older than the newest one, so only its samples are added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from csms.db import Database
from csms.models import OcppEvent, Transaction, TransactionEventRecord

MAX_GAP_LISTED = 50


@dataclass(frozen=True, slots=True)
class Verdict:
    """How to treat one TransactionEvent. ``missing``: the seqNos of a gap it reveals."""

    outcome: str
    missing: tuple[int, ...] = ()
    ended: bool = False


@dataclass(slots=True)
class EventIn:
    """The identifying fields of a TransactionEventRequest."""

    transaction_id: str
    seq_no: int
    event_type: str
    trigger_reason: str | None
    offline: bool
    timestamp_raw: str | None
    message_id: str
    payload: dict[str, Any] = field(default_factory=dict)


class TransactionEventLog:
    """Judges and records TransactionEvents (see the module table)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def judge(self, cp_id: str, ev: EventIn) -> Verdict:
        """E01-E07: replay, conflict, late or applied (with the gap it reveals)."""

        async def fn(s: AsyncSession) -> list[tuple[int, str]]:
            rows = await s.execute(select(
                col(TransactionEventRecord.seq_no), col(TransactionEventRecord.event_type)
            ).where(
                col(TransactionEventRecord.charge_point_id) == cp_id,
                col(TransactionEventRecord.transaction_id) == ev.transaction_id,
                col(TransactionEventRecord.outcome) == "applied",
            ))
            return [(int(seq), str(kind)) for seq, kind in rows.all()]

        seen = await self.db.read(fn)
        ended = any(kind == "Ended" for _, kind in seen)
        applied = {seq: kind for seq, kind in seen if seq >= 0}  # -1: the station sent none
        if ev.seq_no < 0:
            return Verdict("late" if ended else "applied", ended=ended)
        if ev.seq_no in applied:
            same = applied[ev.seq_no] == ev.event_type
            return Verdict("replay" if same else "conflict", ended=ended)
        if ended:
            return Verdict("late", ended=True)
        top = max(applied, default=None)
        missing: tuple[int, ...] = ()
        if top is not None and ev.seq_no > top + 1:
            missing = tuple(range(top + 1, min(ev.seq_no, top + 1 + MAX_GAP_LISTED)))
        return Verdict("applied", missing)

    async def record(self, cp_id: str, ev: EventIn, verdict: Verdict, tx_pk: int | None,
                     outcome: str | None = None, extra_flags: tuple[str, ...] = ()) -> None:
        """E01-E07 / E11-E12: keep the event with its outcome (``outcome`` overrides the
        verdict's, e.g. ``failed``); an event not applied is also an ``OcppEvent``
        ``tx_event_<outcome>``; for an applied one, a gap becomes an ``OcppEvent`` ``tx_seq_gap``
        and the flag ``seq_gap``, and ``extra_flags`` (and ``offline``) go on the
        transaction."""

        final = outcome or verdict.outcome
        applied = final == "applied"

        async def unit(s: AsyncSession) -> None:
            s.add(TransactionEventRecord(
                charge_point_id=cp_id, transaction_id=ev.transaction_id, transaction_pk=tx_pk,
                seq_no=ev.seq_no, event_type=ev.event_type, trigger_reason=ev.trigger_reason,
                offline=ev.offline, timestamp_raw=ev.timestamp_raw, message_id=ev.message_id,
                outcome=final, payload=ev.payload))
            if not applied:
                s.add(OcppEvent(charge_point_id=cp_id, kind=f"tx_event_{final}",
                                transaction_pk=tx_pk, detail=_detail(ev)))
                return
            flags = set(extra_flags)
            if verdict.missing:
                s.add(OcppEvent(charge_point_id=cp_id, kind="tx_seq_gap", transaction_pk=tx_pk,
                                detail={**_detail(ev), "missing": list(verdict.missing)}))
                flags.add("seq_gap")
            if ev.offline:
                flags.add("offline")
            tx = await s.get(Transaction, tx_pk) if tx_pk is not None and flags else None
            if tx is not None and not flags <= set(tx.flags):
                tx.flags = sorted(set(tx.flags) | flags)

        await self.db.write(unit)


def _detail(ev: EventIn) -> dict[str, Any]:
    return {"transaction_id": ev.transaction_id, "seq_no": ev.seq_no,
            "event_type": ev.event_type, "message_id": ev.message_id}
