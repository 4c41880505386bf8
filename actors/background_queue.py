"""The background queue actor: durable tasks that become real runs.

Tasks live in ``orchestrator_background_tasks``; this actor's memory holds nothing it
could not re-read. It polls on an interval (3 s by default, as upstream) and is woken
at once when a task is created or controlled. Each poll applies the pure rules of
:mod:`palyra.background.tasks` to every non-terminal task: expiry, ``not_before``,
parent cancellation, finalisation from the target run, retries. A due prompt task is
dispatched as a run through the gateway (origin ``background``): the task is marked
running with its new run id *before* the run is started, so a crash in between leaves
a task whose run is missing, which the next poll requeues.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from actors.gateway import GATEWAY, CancelRun, StartRun
from actors.writing import AsyncJournalWrites, replying, tell, tell_by_name
from palyra.background import store as bstore
from palyra.background import tasks as t
from palyra.errors import PalyraError
from palyra.ids import new_ulid
from palyra.journal.store import connect
from palyra.orchestrator import store
from palyra.orchestrator.sessions import SessionSelector
from palyra.records import Identity
from supervisors.request import Request
from supervisors.supervised import Supervised

log = logging.getLogger("palyra.background")

BACKGROUND = "background_queue"


class CreateTask(Request):
    __slots__ = ("body", "session_id", "identity", "parent_run_id")

    def __init__(self, body: dict[str, Any], session_id: str, identity: Identity,
                 parent_run_id: str | None = None) -> None:
        super().__init__()
        self.body, self.session_id, self.identity = body, session_id, identity
        self.parent_run_id = parent_run_id


class ControlTask(Request):
    __slots__ = ("task_id", "action")

    def __init__(self, task_id: str, action: str) -> None:
        super().__init__()
        self.task_id, self.action = task_id, action


class _Poll:
    pass


class Wake:
    """Look at the tasks now (e.g. a task was inserted elsewhere), as a poll does."""


@dataclasses.dataclass(frozen=True, slots=True)
class TaskFinished:
    """From the worker of a task without a target run (post-run reflection): the
    running task succeeded (``ok``) or failed (``error``)."""

    task_id: str
    ok: bool
    result: dict[str, Any] | None = None
    error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Started:
    task_id: str
    request: StartRun


class BackgroundQueueActor(AsyncJournalWrites, Supervised):
    def init(self) -> None:
        svc = self.services
        self.clock = svc.clock
        self.conn = connect(svc.state_dir, svc.config.journal)
        self.tasks = bstore.TaskQueries(self.conn)
        self.runs = store.Queries(self.conn)
        self.interval = svc.config.background.poll_interval_ms / 1000
        self._timer: Any = None
        self._writing: set[str] = set()  # tasks with a write in flight: skip them
        self.actor_ref.tell(_Poll())  # tasks survive restarts: look at once

    def terminate(self) -> None:
        self.fail_waiting_callers()
        if self._timer is not None:
            self._timer.cancel()
        self.close_reader()

    def handlers(self) -> dict[type, Any]:
        return {
            _Poll: self._poll,
            Wake: self._poll,
            TaskFinished: self._task_finished,
            CreateTask: self._create,
            ControlTask: self._control,
            _Started: self._started,
        }

    def _wake(self) -> None:
        self.actor_ref.tell(_Poll())

    # -- requests -----------------------------------------------------------------------

    def _create(self, req: CreateTask) -> None:
        try:
            task = t.validate_create(
                req.body, session_id=req.session_id, owner_principal=req.identity.principal,
                device_id=req.identity.device_id, channel=req.identity.channel,
                now_ms=self.clock.now_ms(), task_id=new_ulid(), parent_run_id=req.parent_run_id,
            )
        except PalyraError as exc:
            req.fail(exc)
            return

        def created() -> t.BackgroundTask:
            self._wake()
            return task

        self.write_async([bstore.insert_task(task)], replying(req, created), caller=req)

    def _control(self, req: ControlTask) -> None:
        op = bstore.control_task(req.task_id, req.action, now_ms=self.clock.now_ms())

        def done(write: Any) -> None:
            if write.error is not None:
                req.fail(write.error)
                return
            outcome = write.value
            if outcome.cancel_run_id:
                tell_by_name(self.services.names, GATEWAY,
                             CancelRun(outcome.cancel_run_id, outcome.cancel_run_reason or "task cancelled"))
            self._wake()
            req.reply(outcome.task)

        self.write_async([op], done, caller=req)

    # -- polling -------------------------------------------------------------------------

    def _poll(self, _: _Poll | Wake) -> None:
        if self._timer is not None:
            self._timer.cancel()
        now = self.clock.now_ms()
        for task in self.tasks.pollable(now_ms=now):
            if task.task_id in self._writing:
                continue
            parent = target = None
            if t.needs_runs(task, now_ms=now):
                parent = self.runs.run(task.parent_run_id) if task.parent_run_id else None
                target = self.runs.run(task.target_run_id) if task.target_run_id else None
            step = t.poll_step(task, now_ms=now, parent=parent, target=target)
            self._beat(step, now)
            if step.action == t.UPDATE:
                self._save(task, step.task)
                if step.cancel_run is not None:
                    tell_by_name(self.services.names, GATEWAY, CancelRun(*step.cancel_run))
            elif step.action == t.DISPATCH_NOW:
                self._dispatch_task(task, now)
        ref = self.actor_ref
        self._timer = self.services.timers.call_later(
            self.interval, lambda: tell_by_name(self.services.names, BACKGROUND, _Poll())
            if ref.is_alive() else None)

    def _beat(self, step: Any, now: int) -> None:
        """Running tasks beat while the queue sees them progress; self-healing reads it."""
        beats, task = self.services.heartbeats, step.task
        if step.heartbeat == t.HEARTBEAT_RECORD and task.state == t.RUNNING:
            first = beats.get(task.task_id, (None, None, now))[2]
            beats[task.task_id] = ("background_task", now, first, task.session_id)
        elif step.heartbeat == t.HEARTBEAT_CLEAR or task.terminal:
            beats.pop(task.task_id, None)

    def _save(self, before: t.BackgroundTask, after: t.BackgroundTask, then: Any = None) -> None:
        self._writing.add(before.task_id)

        def done(write: Any) -> None:
            self._writing.discard(before.task_id)
            if write.error is not None:
                log.warning("background task %s not updated: %s", before.task_id, write.error)
            elif then is not None:
                then()

        self.write_async([bstore.update_task(before, after)], done)

    def _dispatch_task(self, task: t.BackgroundTask, now: int) -> None:
        if task.task_kind == t.POST_RUN_REFLECTION:
            from actors.learning import LEARNING, ReflectTask  # imports this module

            running = t.dispatch(task, now_ms=now)
            names = self.services.names
            # running is durable before the work starts; the learning actor picks up a
            # running reflection whose ReflectTask was lost when it (re)starts.
            self._save(task, running, then=lambda: tell_by_name(names, LEARNING, ReflectTask(running)))
            return
        if task.task_kind not in t.PROMPT_KINDS or not task.input_text:
            self._save(task, t.fail(task, now_ms=now, error=f"{task.task_kind} has no runner yet"))
            return
        run_id = new_ulid(now)
        running = t.dispatch(task, now_ms=now, target_run_id=run_id)
        # it beats from its dispatch on (each later poll that sees it progress beats again)
        self.services.heartbeats[task.task_id] = ("background_task", now, now, task.session_id)
        request = StartRun(
            task.input_text, SessionSelector(session_id=task.session_id),
            Identity(task.owner_principal, task.device_id, task.channel), run_id,
            origin_kind="background",
        )
        ref = self.actor_ref
        # on_done runs in the gateway's thread: it must never raise there
        request.on_done = lambda r: tell(ref, _Started(task.task_id, r))
        names = self.services.names

        def on_event(event: Any) -> bool:  # finalise as soon as the run ends, not next poll
            if event.terminal:
                tell_by_name(names, BACKGROUND, _Poll())
                return False
            return True

        self.services.hub.subscribe(run_id, on_event)
        # running (with its run id) is durable before the run is asked for: see the module doc
        self._save(task, running, then=lambda: self._start_run(task.task_id, run_id, request))

    def _start_run(self, task_id: str, run_id: str, request: StartRun) -> None:
        """Ask for the attempt's run, unless the attempt was superseded meanwhile (e.g.
        self-healing requeued it while this actor was stuck): never two runs per task."""
        current = self.tasks.task(task_id)
        if current is None or current.state != t.RUNNING or current.target_run_id != run_id:
            log.info("background task %s: attempt with run %s superseded; not started", task_id, run_id)
            self._wake()
            return
        if not tell_by_name(self.services.names, GATEWAY, request):
            self._wake()

    def _task_finished(self, msg: TaskFinished) -> None:
        if msg.task_id in self._writing:  # e.g. the dispatch write: look again shortly
            names = self.services.names
            self.services.timers.call_later(0.02, lambda: tell_by_name(names, BACKGROUND, msg))
            return
        task = self.tasks.task(msg.task_id)
        if task is None or task.state != t.RUNNING:
            log.info("background task %s finished while %s: result dropped", msg.task_id,
                     "missing" if task is None else task.state)
            return
        now = self.clock.now_ms()
        if msg.ok:
            result = msg.result or {"status": t.SUCCEEDED, "task_id": task.task_id}
            after = t.transition(task, t.SUCCEED, now_ms=now, result=result, last_error=None)
        else:
            after = t.fail(task, now_ms=now, error=msg.error or f"{task.task_kind} failed",
                           result=msg.result)
        self._save(task, after)

    def _started(self, msg: _Started) -> None:
        if msg.request.error is not None:
            log.warning("background task %s: run not started: %s", msg.task_id, msg.request.error)
        self._wake()  # a run that never started is requeued by the next poll's rules
