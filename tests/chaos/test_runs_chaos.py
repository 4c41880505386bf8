"""Kill, crash and hang the gateway, the journal and run actors while ~500 runs are in
flight: no acknowledged run is lost, none is left behind a dead actor, the chain verifies.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from typing import Any

import pykka
import pytest

import palyra
from actors.run import run_actor_name
from palyra.ids import new_ulid
from palyra.journal.store import Writer
from tests.support.wait import holds_within

pytestmark = pytest.mark.chaos

SUPERVISION = {
    "probe_interval": 0.05,
    "shutdown_timeout": 1.0,
    "max_restarts": 1000,
    "max_seconds": 1.0,
    "address_retry_for": 5.0,
}
CONFIG: dict[str, Any] = {
    "tools": {"allowed": ["palyra.echo", "palyra.sleep"], "sensitive": ["palyra.echo"]},
    "runs": {"approval_timeout_ms": 60_000},
    "supervision": SUPERVISION,
}

RUNS = 500
SENDERS = 8
SEND_SPREAD_S = 3.0  # sends are paced over this long, so runs start throughout the chaos
CHAOS_SECONDS = 4.0
SETTLE_SECONDS = 30.0
SEED = 20240611
APPROVAL_TEXT = '@tool palyra.echo {"text":"x"}'
TERMINAL = ("done", "failed", "cancelled")
SLOW_PROBE = "run actor failed: hung: no answer to liveness probe"
CHAOS_FAILURE = re.compile(
    r"run actor failed: (killed: run:\w+ killed|crash: run:\w+ crashed on purpose"
    r"|hung: no answer to liveness probe)|interrupted: the run's actor is gone"
)
CORE = ("journal", "gateway", "policy")
KNOWN_BUGS = {  # category -> the deterministic regression test of that bug
    "lost_decision": "test_decision_committed_while_the_gateway_dies_reaches_the_run",
    "orphaned_admission": "test_admission_resent_after_the_gateway_died_is_not_orphaned",
}


def run_text(i: int) -> str:
    kind = i % 5
    if kind == 3:
        return f"{APPROVAL_TEXT}\napprove {i}"
    if kind == 4:
        return f"@sleep 2\nslow {i}"
    return f"hello {i}"


# -- observations -------------------------------------------------------------------------


def actor_alive(rt: palyra.Runtime, run_id: str) -> bool:
    ref = rt.services.names.get(run_actor_name(run_id))
    return ref is not None and ref.is_alive()


def all_runs(rt: palyra.Runtime) -> dict[str, Any]:
    return {run.run_id: run for run in rt.runs(limit=10_000)}


def lost_decision(rt: palyra.Runtime, run: Any) -> bool:
    """In progress with a live actor that still waits for an approval already decided
    (the known gateway bug: the decision committed, the gateway died before telling it)."""
    if run.state != "in_progress" or not actor_alive(rt, run.run_id):
        return False
    approvals = rt.approvals.list(run_id=run.run_id)
    tape = rt.tape(run.run_id)
    return bool(approvals) and all(a.decision is not None for a in approvals) \
        and tape[-1].event_type == "tool_approval_request"


def orphaned_admission(rt: palyra.Runtime, run: Any, send_errors: dict[str, Exception]) -> bool:
    """Accepted with no actor although send() said it could not be admitted (the known
    gateway bug: a resent admission collided with the first one's late commit)."""
    error = send_errors.get(run.run_id)
    return run.state == "accepted" and not actor_alive(rt, run.run_id) and error is not None \
        and "UNIQUE constraint failed: orchestrator_runs.run_ulid" in str(error)


def unsettled(rt: palyra.Runtime, send_errors: dict[str, Exception]) -> list[str]:
    """Runs neither terminal nor legitimately waiting (on a pending approval, live actor).
    Runs stuck by a known bug are left out here and reported separately."""
    pending = {a.run_id for a in rt.approvals.pending()}
    bad = []
    for run in all_runs(rt).values():
        if run.state in TERMINAL or orphaned_admission(rt, run, send_errors):
            continue
        waiting = run.run_id in pending or lost_decision(rt, run)
        if run.state == "in_progress" and actor_alive(rt, run.run_id) and waiting:
            continue
        bad.append(run.run_id)
    return bad


def describe(rt: palyra.Runtime, run_ids: list[str], limit: int = 3) -> str:
    """State, tape and approvals of a few runs, for failure messages."""
    lines = []
    for run_id in run_ids[:limit]:
        run = rt.run(run_id)
        lines.append(f"run {run_id} {run.state} actor_alive={actor_alive(rt, run_id)} error={run.last_error!r}")
        lines += [f"  {e.seq} {e.event_type} {e.payload}" for e in rt.tape(run_id)]
        lines += [f"  approval {a.approval_id} decision={a.decision} reason={a.decision_reason}"
                  for a in rt.approvals.list(run_id=run_id)]
    return "\n".join(lines)


def wait_core_alive(rt: palyra.Runtime, timeout: float = 10.0) -> None:
    def alive() -> bool:
        rows = {row["name"]: row for row in rt.actors()}
        return all(rows.get(name, {}).get("alive") for name in CORE)

    assert holds_within(alive, timeout, interval=0.1), [r for r in rt.actors() if r["name"] in CORE]


# -- the storm ----------------------------------------------------------------------------


def test_runs_survive_gateway_journal_and_run_actor_chaos(tmp_path):
    rng = random.Random(SEED)
    rt = palyra.Runtime.start(tmp_path, CONFIG)
    acknowledged: dict[str, int] = {}  # run id -> index, for every send that returned a handle
    send_errors: dict[str, palyra.PalyraError] = {}  # run id -> what send() raised
    decisions: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    targeted: set[str] = set()  # runs whose actor was killed, crashed or hung
    lock = threading.Lock()
    chaos_on = threading.Event()
    chaos_on.set()

    def sender(n: int) -> None:
        pace = random.Random(SEED + 100 + n)
        for i in range(n, RUNS, SENDERS):
            run_id = new_ulid()
            try:
                handle = rt.send(run_text(i), session_key=f"chaos-{n}-{i % 3}", run_id=run_id, timeout=30)
            except palyra.PalyraError as exc:  # an honest failure during chaos is allowed
                with lock:
                    send_errors[run_id] = exc
            else:
                assert handle.id == run_id
                with lock:
                    acknowledged[run_id] = i
            time.sleep(pace.uniform(0, 2 * SEND_SPREAD_S * SENDERS / RUNS))

    def decide(approval_id: str) -> None:
        # Its own thread: a decision whose gateway died after the commit is never
        # answered (the known bug), and must not stall the other decisions.
        try:
            rt.approvals.decide(approval_id, allow=True)
        except palyra.PalyraError as exc:  # e.g. the gateway was restarting
            outcome = type(exc).__name__
        else:
            outcome = "allowed"
        with lock:
            decisions[outcome] += 1

    def approver() -> None:
        pick = random.Random(SEED + 1)
        asked: set[str] = set()
        while chaos_on.is_set():
            try:
                pending = rt.approvals.pending()
            except palyra.PalyraError:
                pending = []
            for approval in pending:
                if approval.approval_id in asked or pick.random() < 0.7:
                    continue
                asked.add(approval.approval_id)
                thread = threading.Thread(target=decide, args=(approval.approval_id,), daemon=True)
                thread.start()
                deciders.append(thread)
            time.sleep(0.15)

    deciders: list[threading.Thread] = []
    senders = [threading.Thread(target=sender, args=(n,), daemon=True) for n in range(SENDERS)]
    approver_thread = threading.Thread(target=approver, daemon=True)
    left_waiting: list[str] = []
    known: dict[str, list[str]] = {name: [] for name in KNOWN_BUGS}
    try:
        for t in senders:
            t.start()
        approver_thread.start()

        # -- faults, while runs are admitted, call the provider and wait for approvals --
        deadline = time.monotonic() + CHAOS_SECONDS
        while time.monotonic() < deadline:
            target = rng.choice(["gateway", "journal", "run", "run"])
            if target == "run":
                runs = sorted(name for name in rt.services.names.names() if name.startswith("run:"))
                if not runs:
                    time.sleep(0.01)
                    continue
                target = rng.choice(runs)
            fault = rng.choice(["kill", "crash", "hang"])
            try:
                if fault == "kill":
                    rt.chaos.kill(target, wait=0.5)
                elif fault == "crash":
                    rt.chaos.crash(target)
                else:
                    rt.chaos.hang(target, 0.2)
            except (palyra.NotFound, pykka.ActorDeadError):
                continue  # between incarnations, or the run just finished
            faults[f"{fault}:{'run' if target.startswith('run:') else target}"] += 1
            if target.startswith("run:"):
                targeted.add(target.removeprefix("run:"))
            time.sleep(rng.uniform(0.02, 0.1))
        chaos_on.clear()
        approver_thread.join(5)
        for t in senders:
            t.join(40)
            assert not t.is_alive(), "a sender hung"
        answered_by = time.monotonic() + 3  # only a decision lost by the known bug stays unanswered
        for t in deciders:
            t.join(max(0.0, answered_by - time.monotonic()))

        # -- settle -------------------------------------------------------------------------
        wait_core_alive(rt)
        settled = holds_within(lambda: not unsettled(rt, send_errors), SETTLE_SECONDS, interval=0.2)
        runs = all_runs(rt)
        pending = {a.run_id for a in rt.approvals.pending()}
        states = Counter(r.state for r in runs.values())
        untargeted_hangs = sum(1 for r in runs.values() if r.run_id not in targeted
                               and (r.last_error or "").startswith(SLOW_PROBE))
        summary = (f"acknowledged={len(acknowledged)} untargeted_hangs={untargeted_hangs} send_errors="
                   f"{Counter(str(e)[:60] for e in send_errors.values())} decisions={dict(decisions)}"
                   f" faults={dict(faults)} states={dict(states)}")
        print(f"\nruns chaos: {summary}")

        lost = [run_id for run_id in acknowledged if run_id not in runs]
        assert not lost, f"{len(lost)} runs that send() acknowledged are missing"
        orphans = [r.run_id for r in runs.values() if r.state == "in_progress" and not actor_alive(rt, r.run_id)]
        assert not orphans, f"{len(orphans)} runs in_progress without a live actor\n{describe(rt, orphans)}"
        known["orphaned_admission"] = [r.run_id for r in runs.values() if orphaned_admission(rt, r, send_errors)]
        known["lost_decision"] = [r.run_id for r in runs.values() if lost_decision(rt, r)]
        stuck = [r.run_id for r in runs.values() if r.state == "accepted"
                 and r.run_id not in known["orphaned_admission"]]
        assert not stuck, f"{len(stuck)} runs still accepted after {SETTLE_SECONDS}s\n{describe(rt, stuck)}"
        not_waiting = [r.run_id for r in runs.values() if r.state == "in_progress"
                       and r.run_id not in pending and r.run_id not in known["lost_decision"]]
        assert not not_waiting, (f"{len(not_waiting)} runs in_progress but not waiting on an approval\n"
                                 f"{describe(rt, not_waiting)}")
        assert settled, describe(rt, unsettled(rt, send_errors))
        report = rt.verify_journal()
        assert report.ok, report
        wait_core_alive(rt)

        # the work really happened, and so did the faults
        assert len(acknowledged) >= RUNS // 2, summary
        assert states["done"] >= RUNS // 4, summary
        assert sum(faults.values()) >= 20, summary
        assert decisions["allowed"] >= 10, summary
        assert all(isinstance(e, palyra.PalyraError) for e in send_errors.values())
        # every failure is one the chaos caused: its run actor was killed, crashed or hung
        # (the gateway's recovery after a gateway restart may fail such a run first). A
        # 25 ms probe timeout also flags actors that a loaded machine did not schedule in
        # time, so a "hung" failure needs no injected fault.
        unexplained = [r.run_id for r in runs.values() if r.state == "failed"
                       and not (r.run_id in targeted and CHAOS_FAILURE.match(r.last_error or ""))
                       and not (r.last_error or "").startswith(SLOW_PROBE)]
        assert not unexplained, describe(rt, unexplained)

        # half of the runs still waiting go on once approved; the others stay in flight
        waiting = sorted(r.run_id for r in runs.values() if r.run_id in pending and r.state == "in_progress")
        resumed, left_waiting = waiting[::2], waiting[1::2]
        for approval in rt.approvals.pending():
            if approval.run_id in resumed:
                rt.approvals.decide(approval.approval_id, allow=True)
        assert holds_within(lambda: all(rt.run(run_id).terminal for run_id in resumed), 20, interval=0.1)
        assert {rt.run(run_id).state for run_id in resumed} <= {"done"}, describe(rt, resumed)
    finally:
        chaos_on.clear()
        rt.stop()

    # -- restart on the same state dir: the gateway's recovery resumes or fails the orphans --------------
    with palyra.Runtime.start(tmp_path, CONFIG) as again:
        def no_orphans() -> bool:
            return all(r.terminal or actor_alive(again, r.run_id) for r in all_runs(again).values())

        assert holds_within(no_orphans, 10, interval=0.1), describe(again, [r.run_id for r in all_runs(again).values()
                                                            if not r.terminal])
        # accepted runs are relaunched (and finish, or wait on a new approval); the rest failed
        assert holds_within(lambda: not unsettled(again, {}), 15, interval=0.1), describe(again, unsettled(again, {}))
        runs = all_runs(again)
        assert set(acknowledged) <= set(runs)
        for run_id in [*left_waiting, *known["lost_decision"]]:  # interrupted by the stop
            # resumed from the tape (asking for approval anew), or failed as interrupted
            resumed = "run.resumed" in [e.event_type for e in again.tape(run_id)]
            assert resumed or (runs[run_id].state == "failed"
                               and "interrupted" in (runs[run_id].last_error or "")), runs[run_id]
        report = again.verify_journal()
        assert report.ok, report

    hit = {name: run_ids for name, run_ids in known.items() if run_ids}
    if hit:  # these bugs are fixed; hitting one again is a failure
        pytest.fail("known BUGs hit: " + "; ".join(
            f"{name} x{len(run_ids)} (see {KNOWN_BUGS[name]})" for name, run_ids in hit.items()))


# -- the gateway dying between a decision's commit and its delivery -----------------------


APPROVAL_CONFIG: dict[str, Any] = {
    "tools": {"allowed": ["palyra.echo"], "sensitive": ["palyra.echo"]},
    "runs": {"approval_timeout_ms": 60_000},
    "supervision": {"probe_interval": 0.1, "shutdown_timeout": 1.0, "address_retry_for": 5.0},
}


def kill_gateway_after_decision_commits(rt: palyra.Runtime, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The next journal batch resolving an approval commits, then the gateway is killed
    before the journal answers it (so the gateway never sees the commit)."""
    apply = Writer.apply
    armed = threading.Event()
    armed.set()

    def resolves_approval(batch: Any) -> bool:
        return any("resolve_approval" in getattr(op, "__qualname__", "") for ops in batch for op in ops)

    def apply_then_kill(self: Writer, batch: Any) -> Any:
        outcomes = apply(self, batch)
        if armed.is_set() and resolves_approval(batch):
            armed.clear()
            rt.chaos.kill("gateway")
        return outcomes

    monkeypatch.setattr(Writer, "apply", apply_then_kill)
    return armed


def wait_for_pending_approval(rt: palyra.Runtime, run_id: str) -> Any:
    assert holds_within(lambda: bool(rt.approvals.pending(run_id=run_id)), 10, interval=0.01)
    [approval] = rt.approvals.pending(run_id=run_id)
    return approval


def decide_in_background(rt: palyra.Runtime, approval_id: str) -> tuple[threading.Thread, list[Any]]:
    box: list[Any] = []

    def decide() -> None:
        try:
            box.append(rt.approvals.decide(approval_id, allow=True))
        except palyra.PalyraError as exc:
            box.append(exc)

    thread = threading.Thread(target=decide, daemon=True)
    thread.start()
    return thread, box


def test_decision_committed_while_the_gateway_dies_reaches_the_run(tmp_path, monkeypatch):
    with palyra.Runtime.start(tmp_path, APPROVAL_CONFIG) as rt:
        run = rt.send(APPROVAL_TEXT, session_key="k")
        approval = wait_for_pending_approval(rt, run.id)
        armed = kill_gateway_after_decision_commits(rt, monkeypatch)
        thread, box = decide_in_background(rt, approval.approval_id)

        assert holds_within(lambda: not armed.is_set(), 5), "the decision was never written"
        assert rt.approvals.get(approval.approval_id).decision == "allow"  # durable
        wait_core_alive(rt)
        assert holds_within(lambda: rt.run(run.id).terminal, 5), describe(rt, [run.id])
        assert rt.run(run.id).state == "done"
        thread.join(5)
        assert not thread.is_alive(), "decide() was never answered"


def test_run_whose_decision_was_lost_does_not_wait_forever(tmp_path, monkeypatch):
    config = {**APPROVAL_CONFIG, "runs": {"approval_timeout_ms": 1000}}
    with palyra.Runtime.start(tmp_path, config) as rt:
        run = rt.send(APPROVAL_TEXT, session_key="k")
        approval = wait_for_pending_approval(rt, run.id)
        armed = kill_gateway_after_decision_commits(rt, monkeypatch)
        decide_in_background(rt, approval.approval_id)
        assert holds_within(lambda: not armed.is_set(), 5), "the decision was never written"

        # The approval timer fires 1 s after the request and finds the decision in the
        # journal: the run must act on it (or fail), not wait for the wall clock (120 s).
        assert holds_within(lambda: rt.run(run.id).terminal, 3), describe(rt, [run.id])


# -- the gateway dying while an admission is being committed --------------------------------


def test_admission_resent_after_the_gateway_died_is_not_orphaned(tmp_path, monkeypatch):
    # probe_timeout 1 s: the journal pausing below must not count as hung
    config = {"supervision": {"probe_interval": 2.0, "shutdown_timeout": 1.0, "address_retry_for": 5.0}}
    with palyra.Runtime.start(tmp_path, config) as rt:
        assert rt.send("warm up", session_key="k").wait(5).state == "done"
        apply = Writer.apply
        armed = threading.Event()
        armed.set()

        def kill_gateway_then_apply(self: Writer, batch: Any) -> Any:
            inserts_run = any("insert_run" in getattr(op, "__qualname__", "") for ops in batch for op in ops)
            if armed.is_set() and inserts_run:
                armed.clear()
                rt.chaos.kill("gateway")  # the admission fails as never handled and is resent
                time.sleep(0.3)  # ... and reaches the next gateway before this commit
            return apply(self, batch)

        monkeypatch.setattr(Writer, "apply", kill_gateway_then_apply)
        run_id = new_ulid()
        error: palyra.PalyraError | None = None
        try:
            rt.send("hello", session_key="k", run_id=run_id)
        except palyra.PalyraError as exc:
            error = exc
        assert not armed.is_set()
        run = rt.run(run_id)  # the first admission did commit
        assert error is None, f"send() raised {error!r} but run {run_id} exists ({run.state})"
        assert holds_within(lambda: rt.run(run_id).terminal, 5), describe(rt, [run_id])
        assert rt.run(run_id).state == "done"


# -- approvals of runs that ended without their actor ------------------------------------


def test_a_run_failed_from_outside_closes_its_pending_approval(tmp_path):
    with palyra.Runtime.start(tmp_path, APPROVAL_CONFIG) as rt:
        run = rt.send(APPROVAL_TEXT, session_key="k")
        approval = wait_for_pending_approval(rt, run.id)
        assert rt.chaos.kill(run_actor_name(run.id))
        result = run.wait(5)
        assert result.state == "failed" and "run actor failed" in (result.last_error or "")
        assert holds_within(lambda: not rt.approvals.pending(run_id=run.id), 2), (
            f"approval {approval.approval_id} of the failed run is still pending")
        assert rt.approvals.get(approval.approval_id).decision == "error"
