"""kill -9 a process with runs in flight; the next start settles every one of them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import palyra
from palyra.records import Run
from tests.support.wait import holds_within, until

pytestmark = pytest.mark.chaos

DRIVER = textwrap.dedent(
    """
    import sys, palyra
    rt = palyra.Runtime.start(sys.argv[1])
    for i in range(int(sys.argv[2])):
        run = rt.send(f"resume me {i}\\n@sleep 30", session_key=f"crash-{i}")
        print(run.id, flush=True)            # printed once durably accepted
    print("ready", flush=True)
    sys.stdin.read()                          # wait to be killed
    """
)


def test_runs_in_flight_at_kill_minus_9_resume_from_their_tape(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path), "5"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert proc.stdout is not None
    accepted = []
    for line in proc.stdout:
        if line.strip() == "ready":
            break
        accepted.append(line.strip())
    # every run is inside its (sleeping) provider call now, or about to be
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert len(accepted) == 5
    with palyra.Runtime.start(tmp_path) as rt:
        names = rt.services.names
        # every interrupted run is taken over: resumed by a live actor, or settled
        def orphans() -> list[Run]:
            runs = [rt.run(run_id) for run_id in accepted]
            return [r for r in runs if not r.terminal and names.get(f"run:{r.run_id}") is None]

        assert holds_within(lambda: not orphans(), 15), f"runs left behind: {orphans()}"
        resumed = [r for r in accepted if "run.resumed" in [e.event_type for e in rt.tape(r)]
                   or not rt.run(r).terminal]
        assert resumed, "no run was resumed from its tape"
        for run_id in accepted:  # they sleep in their provider again: end them
            if not rt.run(run_id).terminal:
                rt.cancel(run_id, "test over")
                assert rt.handle(run_id).wait(10).state == "cancelled"
        report = rt.verify_journal()
        assert report.ok, report


APPROVAL_DRIVER = textwrap.dedent(
    """
    import sys, palyra
    config = {"tools": {"allowed": ["palyra.echo"], "sensitive": ["palyra.echo"]}}
    rt = palyra.Runtime.start(sys.argv[1], config)
    run = rt.send('needs approval\\n@tool palyra.echo {"text": "hi"}', session_key="approve")
    import time
    while not rt.approvals.pending(run.id):
        time.sleep(0.01)
    print(run.id, rt.approvals.pending(run.id)[0].approval_id, flush=True)
    sys.stdin.read()
    """
)


def test_a_waiting_approval_survives_kill_minus_9_and_still_resumes_the_run(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", APPROVAL_DRIVER, str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert proc.stdout is not None
    run_id, approval_id = proc.stdout.readline().split()
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    config = {"tools": {"allowed": ["palyra.echo"], "sensitive": ["palyra.echo"]}}
    with palyra.Runtime.start(tmp_path, config) as rt:
        until(lambda: "run.resumed" in [e.event_type for e in rt.tape(run_id)], timeout=10,
              what="the run to be resumed")
        assert [a.approval_id for a in rt.approvals.pending(run_id)] == [approval_id]
        until(lambda: rt.run(run_id).state != "in_progress"
              or [e for e in rt.tape(run_id) if e.payload.get("resumed")],
              timeout=10, what="the resumed run to take the approval over")
        rt.approvals.decide(approval_id, allow=True)  # the id from before the crash
        result = rt.handle(run_id).wait(10)
        assert result.state == "done"
        assert 'tool palyra.echo: {"success":true' in result.reply_text
        assert rt.verify_journal().ok
