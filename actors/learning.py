"""The learning actor: post-run reflection and candidate review (spec 6).

Scheduling (quirk 13.6 fixed): a run tells :class:`RunFinished` once its ``done`` state
is durable. The actor checks the run really is ``done``, applies sampling (``hash % 100``,
quirk 13.5) and the identity+session cooldown, and inserts a ``post_run_reflection``
background task (priority 25, one attempt, due in 250 ms) whose payload carries what
extraction needs. The background queue is woken when the task falls due.

Processing: the queue marks a due reflection task running and tells :class:`ReflectTask`.
The actor extracts candidates from the payload, then in *one* journal transaction
upserts them (with history) and auto-applies every stored durable fact at or above
``durable_fact_auto_write_threshold_bps``: the fact is ingested into the memory store
(principal scope, source ``learning``, no expiry) and the candidate is marked
``auto_applied`` by ``system:reflection`` with the memory id in the history payload.
It then reports :class:`~actors.background_queue.TaskFinished` to the queue, which
moves the task to succeeded/failed.

Recovery: reflection tasks left ``running`` (a ``ReflectTask`` lost in a restart) are
picked up again when the actor starts. Reflection is idempotent: candidates dedupe on
their key and only a still-``queued`` candidate can be auto-applied.

Review (:class:`Review`): accept/reject/... with history. An accepted durable fact is
ingested into memory; rejecting or rolling it back deletes that memory item again. An
accepted preference is put in force as a learning preference (and retired again by a
later reject/rollback), see :func:`palyra.learning.store.save_review`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import orjson

from actors.background_queue import BACKGROUND, TaskFinished, Wake
from actors.writing import AsyncJournalWrites, tell_by_name
from palyra.background import store as bstore
from palyra.background import tasks as t
from palyra.errors import InvalidInput, NotFound, PalyraError
from palyra.journal.store import Txn, connect
from palyra.learning import candidates as c
from palyra.learning import review as rv
from palyra.learning.candidates import Candidate, HistoryEntry, Preference
from palyra.learning.config import LearningConfig
from palyra.learning.extract import RunLearningInput, extract_candidates
from palyra.learning.sampling import plan_reflection
from palyra.learning.store import LearningQueries, save_review, upsert_candidates
from palyra.memory import MemoryItem, ingest_op
from palyra.memory.store import delete_op
from palyra.orchestrator import store
from palyra.redaction import sanitize_value
from supervisors.request import Request
from supervisors.supervised import Supervised

log = logging.getLogger("palyra.learning")

LEARNING = "learning"
# Memory items written by learning say so. ``MemoryItem.build`` only accepts the spec's
# sources, so items are built as ``manual`` and relabelled (the column is free text).
MEMORY_SOURCE = "learning"
MEMORY_TAGS = ("learning", c.DURABLE_FACT)
WAKE_SLACK_S = 0.01
REPORT_RETRY_S = 0.05
REPORT_RETRIES = 200  # ~10 s of the queue being between incarnations


# --------------------------------------------------------------------------- messages


@dataclasses.dataclass(frozen=True)
class RunFinished:
    """From a run whose ``done`` state is durable (told from its finalisation)."""

    run_id: str
    session_id: str
    principal: str
    device_id: str
    channel: str | None
    text: str
    reply: str
    tools: tuple[str, ...] = ()  # the tools it ran successfully, in order (procedures)
    # A session made for this one run (no key, no label), as every OpenAI-compatible call
    # gets: its principal's anonymous runs share one cooldown, or each would reflect.
    anonymous: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class ReflectTask:
    """From the background queue: this reflection task is now running; do it."""

    task: t.BackgroundTask


class Review(Request):
    """Review one candidate on ``principal``'s behalf; replies with the updated
    :class:`~palyra.learning.candidates.Candidate`. Fails with NotFound (unknown id, or
    not the principal's), InvalidInput (unknown status), InvalidTransition (a move the
    review rules forbid, e.g. reviewing a rejected candidate again) or Conflict (the
    candidate moved meanwhile)."""

    __slots__ = ("candidate_id", "status", "principal", "reason")

    def __init__(self, candidate_id: str, status: str, principal: str,
                 reason: str | None = None) -> None:
        super().__init__()
        self.candidate_id, self.status = candidate_id, status
        self.principal, self.reason = principal, reason


# --------------------------------------------------------------------------- reads


def candidates(conn: Any, *, principal: str | None = None, status: str | None = None,
               session_id: str | None = None, limit: int = 100) -> list[Candidate]:
    """Candidates, newest first (``status`` accepts console aliases)."""
    return LearningQueries(conn).candidates(owner_principal=principal, status=status,
                                            session_id=session_id, limit=limit)


def candidate(conn: Any, candidate_id: str) -> Candidate:
    found = LearningQueries(conn).candidate(candidate_id)
    if found is None:
        raise NotFound(f"learning candidate {candidate_id} not found",
                       details={"candidate_id": candidate_id})
    return found


def history(conn: Any, candidate_id: str) -> list[HistoryEntry]:
    """A candidate's review history, oldest first (creation included)."""
    candidate(conn, candidate_id)
    return LearningQueries(conn).history(candidate_id)


def preferences(conn: Any, principal: str, *, include_retired: bool = False) -> list[Preference]:
    return LearningQueries(conn).preferences(principal, include_retired=include_retired)


# --------------------------------------------------------------------------- helpers


def learning_config(config: Any) -> LearningConfig:
    """``config.learning`` as a :class:`LearningConfig` (defaults when absent)."""
    raw = getattr(config, "learning", None)
    if raw is None:
        return LearningConfig()
    if isinstance(raw, LearningConfig):
        return raw
    if isinstance(raw, dict):
        values = raw
    else:
        values = {f.name: getattr(raw, f.name) for f in dataclasses.fields(LearningConfig)
                  if hasattr(raw, f.name)}
    return LearningConfig(**{k: v for k, v in values.items()
                             if k in {f.name for f in dataclasses.fields(LearningConfig)}})


def memory_item(cand: Candidate, now_ms: int) -> MemoryItem:
    """The principal-scoped, non-expiring memory item a durable fact becomes."""
    text = cand.content.get("fact") if isinstance(cand.content, dict) else None
    if not isinstance(text, str) or not text.strip():
        text = cand.summary
    item = MemoryItem.build(text, principal=cand.owner_principal, now_ms=now_ms, scope="principal",
                            source="manual", tags=MEMORY_TAGS, confidence=cand.confidence,
                            default_ttl_ms=None)
    return dataclasses.replace(item, source=MEMORY_SOURCE)


def _memory_ids(entries: list[HistoryEntry]) -> list[str]:
    out = []
    for entry in entries:
        mid = (entry.action_payload or {}).get("memory_id")
        if isinstance(mid, str) and mid not in out:
            out.append(mid)
    return out


def learning_input(task: t.BackgroundTask, prior_sequence_occurrences: int = 0) -> RunLearningInput:
    payload = task.payload or {}
    sequence = [name for name in payload.get("tool_sequence") or () if isinstance(name, str)]
    run_id = payload.get("run_id") or task.parent_run_id
    text, reply = payload.get("text"), payload.get("reply", "")
    if not isinstance(run_id, str) or not isinstance(text, str) or not isinstance(reply, str):
        raise InvalidInput("reflection task payload lacks run_id/text/reply",
                           details={"task_id": task.task_id})
    return RunLearningInput(
        run_id=run_id, session_id=task.session_id, owner_principal=task.owner_principal,
        device_id=task.device_id, channel=task.channel, user_texts=(text,), reply_text=reply,
        source_task_id=task.task_id, tool_sequence=tuple(sequence),
        prior_sequence_occurrences=prior_sequence_occurrences,
    )


def prior_sequences(conn: Any, task: t.BackgroundTask) -> int:
    """Other finished reflections of this principal that saw the same tool sequence."""
    sequence = (task.payload or {}).get("tool_sequence") or []
    if not sequence:
        return 0
    row = conn.execute(
        "SELECT count(*) FROM orchestrator_background_tasks WHERE task_kind = 'post_run_reflection'"
        " AND owner_principal = ? AND task_ulid != ? AND state = 'succeeded'"
        " AND json_extract(payload_json, '$.tool_sequence') = json(?)",
        (task.owner_principal, task.task_id, orjson.dumps(sequence).decode()),
    ).fetchone()
    return int(row[0])


@dataclasses.dataclass(frozen=True, slots=True)
class ReflectionOutcome:
    candidate_ids: list[str]
    auto_applied_ids: list[str]


def reflection_op(found: list[Candidate], items: dict[str, MemoryItem], *, now_ms: int,
                  config: LearningConfig) -> Any:
    """Upsert ``found`` and auto-apply the eligible stored durable facts (``items`` maps a
    dedupe key to its prebuilt memory item), each in its own savepoint. Pure in ``txn``."""
    upsert = upsert_candidates(found)

    def op(txn: Txn) -> ReflectionOutcome:
        ids = upsert(txn)
        queries = LearningQueries(txn.conn)
        applied: list[str] = []
        for cid in ids:
            stored = queries.candidate(cid)
            item = items.get(stored.dedupe_key) if stored is not None else None
            if stored is None or item is None or not rv.auto_apply_eligible(stored, config):
                continue
            outcome = rv.review(
                stored, c.AUTO_APPLIED, reviewer=c.SYSTEM_REVIEWER, now_ms=now_ms,
                summary=f"auto-applied to memory ({stored.target_path})",
                payload={"target_path": stored.target_path, "memory_id": item.memory_id},
            )
            txn.conn.execute("SAVEPOINT learning_auto_apply")
            try:
                ingest_op(item)(txn)
                save_review(stored, outcome)(txn)
            except PalyraError as exc:
                txn.conn.execute("ROLLBACK TO learning_auto_apply")
                txn.conn.execute("RELEASE learning_auto_apply")
                log.warning("learning candidate %s not auto-applied: %s", cid, exc)
                continue
            txn.conn.execute("RELEASE learning_auto_apply")
            applied.append(cid)
        return ReflectionOutcome(ids, applied)

    return op


def review_op(candidate_id: str, status: str, *, reviewer: str, now_ms: int,
              reason: str | None, item: MemoryItem | None) -> Any:
    """Read, review and write one candidate in one transaction; an accepted durable fact
    is ingested (``item``), a rejected or rolled-back one removed from memory again."""

    def op(txn: Txn) -> Candidate:
        queries = LearningQueries(txn.conn)
        before = queries.candidate(candidate_id)
        if before is None:
            raise NotFound(f"learning candidate {candidate_id} not found",
                           details={"candidate_id": candidate_id})
        target = c.normalize_status(status)
        ingest = item is not None and target == c.ACCEPTED \
            and before.candidate_kind == c.DURABLE_FACT
        payload = {k: v for k, v in (("reason", reason),
                                     ("memory_id", item.memory_id if ingest else None)) if v}
        outcome = rv.review(before, target, reviewer=reviewer, now_ms=now_ms,
                            payload=payload or None)
        after = save_review(before, outcome)(txn)
        if ingest:
            ingest_op(item)(txn)  # type: ignore[arg-type]
        elif after.candidate_kind == c.DURABLE_FACT and after.status in (c.REJECTED,
                                                                          c.ROLLED_BACK):
            for mid in _memory_ids(queries.history(candidate_id)):
                delete_op(mid, after.owner_principal)(txn)
        return after

    return op


def _report(names: Any, timers: Any, message: TaskFinished, tries: int = 0) -> None:
    """Deliver to the queue, retrying on a timer while it is between incarnations."""
    if tell_by_name(names, BACKGROUND, message) or tries >= REPORT_RETRIES:
        if tries >= REPORT_RETRIES:
            log.warning("reflection task %s: result not delivered", message.task_id)
        return
    timers.call_later(REPORT_RETRY_S, lambda: _report(names, timers, message, tries + 1))


# --------------------------------------------------------------------------- actor


class LearningActor(AsyncJournalWrites, Supervised):
    def init(self) -> None:
        svc = self.services
        self.clock = svc.clock
        self.config = learning_config(svc.config)
        self.conn = connect(svc.state_dir, svc.config.journal)
        self.tasks = bstore.TaskQueries(self.conn)
        self.learning = LearningQueries(self.conn)
        self.runs = store.Queries(self.conn)
        self._scheduling: set[str] = set()  # runs whose task insert is in flight
        self._cooling: dict[tuple[str, str, str | None, str], int] = {}  # in-flight inserts
        # last reflection per session seen by this incarnation (a cache: the tasks table is
        # the truth after a restart)
        self._recent: dict[tuple[str, str, str | None, str], int] = {}
        self._reflecting: set[str] = set()  # task ids being processed
        self.counters = {"reflections_scheduled": 0, "reflections_completed": 0,
                         "reflections_failed": 0, "candidates_created": 0,
                         "candidates_auto_applied": 0}
        # A ReflectTask lost in a restart would leave its task running forever.
        for task in self.tasks.tasks(states=[t.RUNNING], limit=1000):
            if task.task_kind == t.POST_RUN_REFLECTION:
                self.actor_ref.tell(ReflectTask(task))

    def terminate(self) -> None:
        self.fail_waiting_callers()
        self.close_reader()

    def handlers(self) -> dict[type, Any]:
        return {
            RunFinished: self._run_finished,
            ReflectTask: self._reflect,
            Review: self._review,
        }

    def stats(self) -> dict[str, int]:
        return dict(self.counters)

    # -- scheduling ---------------------------------------------------------------------

    def _run_finished(self, msg: RunFinished) -> None:
        if msg.run_id in self._scheduling:
            return
        now = self.clock.now_ms()
        key = (msg.principal, msg.device_id, msg.channel, None if msg.anonymous else msg.session_id)
        recent = self._recent.get(key)
        if not self.config.enabled or (recent is not None and now - recent < self.config.cooldown_ms):
            return  # cooling down (known from memory): no database reads for busy sessions
        run = self.runs.run(msg.run_id)
        if run is None or run.state != "done":
            log.warning("run %s finished but is %s: no reflection", msg.run_id,
                        "missing" if run is None else run.state)
            return
        last = self.tasks.last_reflection_ms(owner_principal=msg.principal,
                                             device_id=msg.device_id, channel=msg.channel,
                                             session_id=msg.session_id)
        pending = self._cooling.get(key)
        if pending is not None and (last is None or pending > last):
            last = pending
        task = plan_reflection(
            run_id=msg.run_id, run_state=run.state, session_id=msg.session_id,
            owner_principal=msg.principal, device_id=msg.device_id, channel=msg.channel,
            now_ms=now, already_scheduled=self.tasks.reflection_for_run(msg.run_id) is not None,
            last_reflection_ms=last, config=self.config,
        )
        if last is not None:
            self._recent[key] = max(last, self._recent.get(key, last))
        if task is None:
            return
        self._recent[key] = now
        carried, _ = sanitize_value({"text": msg.text, "reply": msg.reply,
                                     "tool_sequence": list(msg.tools)})
        task = dataclasses.replace(task, payload={**(task.payload or {}), **carried})
        self._scheduling.add(msg.run_id)
        self._cooling[key] = now
        names, timers = self.services.names, self.services.timers
        delay = max(0, (task.not_before_unix_ms or now) - now) / 1000 + WAKE_SLACK_S

        def done(write: Any) -> None:
            self._scheduling.discard(msg.run_id)
            if self._cooling.get(key) == now:
                del self._cooling[key]
            if write.error is not None:
                log.warning("reflection for run %s not scheduled: %s", msg.run_id, write.error)
                return
            self.counters["reflections_scheduled"] += 1
            # due in 250 ms: wake the queue then rather than wait for its next poll
            timers.call_later(delay, lambda: tell_by_name(names, BACKGROUND, Wake()))

        self.write_async([bstore.insert_task(task)], done)

    # -- processing ---------------------------------------------------------------------

    def _reflect(self, msg: ReflectTask) -> None:
        task = msg.task
        if task.task_id in self._reflecting:
            return
        now = self.clock.now_ms()
        try:
            found = extract_candidates(learning_input(task, prior_sequences(self.conn, task)), now_ms=now, config=self.config)
            items: dict[str, MemoryItem] = {}
            for cand in found:
                if cand.candidate_kind == c.DURABLE_FACT and cand.risk_level not in c.BLOCKING_RISKS:
                    try:
                        items[cand.dedupe_key] = memory_item(cand, now)
                    except PalyraError as exc:  # e.g. too large for a memory item
                        log.info("candidate %s cannot become memory: %s", cand.candidate_id, exc)
        except PalyraError as exc:
            self._finish(task, None, str(exc))
            return
        if not found:
            self._finish(task, self._result(task, ReflectionOutcome([], [])), None)
            return
        self._reflecting.add(task.task_id)

        def done(write: Any) -> None:
            self._reflecting.discard(task.task_id)
            if write.error is not None:
                self._finish(task, None, f"reflection failed: {write.error}")
                return
            outcome: ReflectionOutcome = write.value
            self.counters["candidates_created"] += len(outcome.candidate_ids)
            self.counters["candidates_auto_applied"] += len(outcome.auto_applied_ids)
            self._finish(task, self._result(task, outcome), None)

        self.write_async([reflection_op(found, items, now_ms=now, config=self.config)], done)

    @staticmethod
    def _result(task: t.BackgroundTask, outcome: ReflectionOutcome) -> dict[str, Any]:
        return {
            "status": t.SUCCEEDED,
            "task_id": task.task_id,
            "task_kind": task.task_kind,
            "run_id": (task.payload or {}).get("run_id", task.parent_run_id),
            "session_id": task.session_id,
            "candidate_count": len(outcome.candidate_ids),
            "auto_applied_count": len(outcome.auto_applied_ids),
            "candidate_ids": list(outcome.candidate_ids),
            "auto_applied_ids": list(outcome.auto_applied_ids),
            "blocked_reason": None,
        }

    def _finish(self, task: t.BackgroundTask, result: dict[str, Any] | None,
                error: str | None) -> None:
        ok = error is None
        self.counters["reflections_completed" if ok else "reflections_failed"] += 1
        if not ok:
            log.warning("reflection task %s failed: %s", task.task_id, error)
        _report(self.services.names, self.services.timers,
                TaskFinished(task.task_id, ok, result, error))

    # -- review -------------------------------------------------------------------------

    def _review(self, req: Review) -> None:
        now = self.clock.now_ms()
        try:
            target = c.normalize_status(req.status)
            if not isinstance(req.principal, str) or not req.principal.strip():
                raise InvalidInput("principal must be a non-empty string",
                                   details={"field": "principal"})
            found = self.learning.candidate(req.candidate_id)
            if found is None or found.owner_principal != req.principal:
                raise NotFound(f"learning candidate {req.candidate_id} not found",
                               details={"candidate_id": req.candidate_id})
            item = None
            if found.candidate_kind == c.DURABLE_FACT and target == c.ACCEPTED \
                    and found.risk_level not in c.BLOCKING_RISKS:
                item = memory_item(found, now)
        except PalyraError as exc:
            req.fail(exc)
            return
        op = review_op(req.candidate_id, target, reviewer=req.principal, now_ms=now,
                       reason=req.reason, item=item)

        def done(write: Any) -> None:
            if write.error is not None:
                req.fail(write.error)
            else:
                req.reply(write.value)

        self.write_async([op], done, caller=req)
