"""Kill, crash and hang actors while writers append; nothing acknowledged is lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import palyra
from palyra.journal.store import Reader

pytestmark = pytest.mark.chaos

CHAOS_CONFIG = {
    "supervision": {
        "probe_interval": 0.05,
        "shutdown_timeout": 1.0,
        "max_restarts": 1000,
        "max_seconds": 1.0,
        "address_retry_for": 5.0,
    }
}


def test_acknowledged_appends_survive_kill_crash_and_hang(tmp_path):
    rt = palyra.Runtime.start(tmp_path, CHAOS_CONFIG)
    acknowledged: list[str] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                result = rt.journal.append("chaos.append", {"writer": n, "i": i})
            except palyra.PalyraError as exc:  # an honest failure, never a lost success
                with lock:
                    failures.append(exc)
            else:
                with lock:
                    acknowledged.append(result.event_id)
            i += 1

    threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(8)]
    for t in threads:
        t.start()
    rng = random.Random(7)
    faults = {"kill": 0, "crash": 0, "hang": 0}
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        fault = rng.choice(list(faults))
        try:
            if fault == "kill":
                rt.chaos.kill("journal")
            elif fault == "crash":
                rt.chaos.crash("journal")
            else:
                rt.chaos.hang("journal", 0.3)
            faults[fault] += 1
        except palyra.NotFound:
            pass  # between incarnations
        time.sleep(rng.uniform(0.02, 0.15))
    stop.set()
    for t in threads:
        t.join(10)
        assert not t.is_alive(), "a writer hung"
    # the tree recovered: the journal answers through its name
    rt.journal.append("after.chaos")
    row = rt.actor("journal")
    assert row["alive"]
    assert row["restarts"] + row["hung"] >= sum(faults.values()) // 2
    rt.stop()
    with Reader(tmp_path) as reader:
        stored = reader.event_ids()
        report = reader.verify_chain()
    missing = [e for e in acknowledged if e not in stored]
    assert not missing, f"{len(missing)} acknowledged appends lost"
    assert report.ok, report
    assert len(acknowledged) > 500
    assert all(isinstance(f, palyra.ActorUnavailable) for f in failures)


def test_other_actors_recover_while_the_journal_is_hammered(tmp_path):
    rt = palyra.Runtime.start(tmp_path, CHAOS_CONFIG)
    try:
        for _ in range(5):
            wait_alive(rt, "core")
            rt.chaos.crash("core")
            wait_alive(rt, "surfaces")
            rt.chaos.kill("surfaces")
            rt.journal.append("tick")
        for row in rt.actors():
            wait_alive(rt, row["name"])
        assert rt.actor("core")["restarts"] >= 1
        assert rt.verify_journal().ok
    finally:
        rt.stop()


def wait_alive(rt: palyra.Runtime, name: str, timeout: float = 5.0) -> None:
    names = rt.services.names
    names.wait_for_change(name, None, timeout)
    ref = names.get(name)
    assert ref is not None and ref.is_alive(), f"{name} did not come back"


APPENDER = textwrap.dedent(
    """
    import sys, palyra
    rt = palyra.Runtime.start(sys.argv[1])
    i = 0
    while True:
        r = rt.journal.append("crash.append", {"i": i})
        print(r.event_id, flush=True)   # printed only after the commit
        i += 1
    """
)


def test_kill_minus_9_loses_no_acknowledged_event(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    acknowledged = []
    assert proc.stdout is not None
    for line in proc.stdout:
        acknowledged.append(line.strip())
        if len(acknowledged) >= 300:
            break
    proc.send_signal(signal.SIGKILL)
    acknowledged.extend(line.strip() for line in proc.stdout)  # what it printed before dying
    proc.wait(10)
    with palyra.Runtime.start(tmp_path) as rt:
        report = rt.verify_journal()
        with Reader(tmp_path) as reader:
            stored = reader.event_ids()
    assert report.ok, report
    assert set(acknowledged) <= stored
