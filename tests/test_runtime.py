from __future__ import annotations

import threading

import pytest

import palyra
from supervisors import ChildSpec


def test_public_surface_is_pinned():
    assert sorted(palyra.__all__) == sorted(set(palyra.__all__))
    for name in palyra.__all__:
        assert getattr(palyra, name) is not None
    assert issubclass(palyra.NotFound, palyra.PalyraError)


def test_runtime_starts_tree_and_lists_actors(runtime):
    rows = {row["name"]: row for row in runtime.actors()}
    assert {"root", "journal", "core", "surfaces"} <= set(rows)
    assert rows["journal"]["path"] == "root/journal"
    assert rows["journal"]["alive"] and rows["journal"]["incarnation"] == 1


def test_context_manager_stops_cleanly_and_records_it(tmp_path):
    with palyra.Runtime.start(tmp_path) as rt:
        rt.journal.append("hello", {"x": 1})
    assert rt.stop_report.clean
    assert rt.stop_report.leaked == ()
    with palyra.Runtime.start(tmp_path) as again:
        kinds = [e["kind"] for e in again.recent_events(10)]
        assert "runtime.stopped" in kinds and "hello" in kinds
        assert again.verify_journal().ok


def test_killed_journal_restarts_and_restart_is_journalled(runtime):
    runtime.journal.append("before")
    assert runtime.chaos.kill("journal")
    runtime.journal.append("after")  # resolved through the name, new incarnation
    row = runtime.actor("journal")
    assert row["restarts"] == 1 and row["incarnation"] == 2
    assert row["last_restart_reason"].startswith("killed")
    assert runtime._recorder.flush(5)
    restarted = runtime.recent_events(10, kind="actor.restarted")
    assert restarted and '"actor":"journal"' in restarted[0]["payload_json"]


def test_hung_journal_is_replaced_and_hang_is_journalled(runtime):
    runtime.chaos.hang("journal", 3.0)
    runtime.journal.append("queued behind the hang")  # handed to the successor
    assert runtime.actor("journal")["hung"] == 1
    assert runtime._recorder.flush(5)
    assert runtime.recent_events(10, kind="actor.hung")


def test_root_past_its_limit_shuts_down_and_records_why(tmp_path):
    config = {"supervision": {"probe_interval": 0.1, "max_restarts": 1, "max_seconds": 30}}
    rt = palyra.Runtime.start(tmp_path, config)
    rt.chaos.kill("journal")
    rt.journal.append("between")
    rt.chaos.kill("journal")
    assert rt.stopped.wait(10)
    assert not rt.stop_report.clean
    assert "restart intensity exceeded" in rt.stop_report.reason
    with pytest.raises(palyra.RuntimeStopped):
        rt._check_running()
    with palyra.Runtime.start(tmp_path) as again:
        [shutdown] = again.recent_events(50, kind="runtime.shutdown")
        assert "restart intensity exceeded" in shutdown["payload_json"]
        assert again.verify_journal().ok


def test_stop_reports_a_thread_that_would_not_stop(tmp_path):
    rt = palyra.Runtime.start(tmp_path, {"supervision": {"probe_interval": 60, "shutdown_timeout": 0.2}})
    rt.chaos.hang("journal", 5.0)
    report = rt.stop()
    assert not report.clean
    assert any("journal" in item for item in report.leaked)


def test_bad_config_names_the_key(tmp_path):
    with pytest.raises(palyra.InvalidInput, match="journal.synchronus"):
        palyra.Runtime.start(tmp_path, {"journal": {"synchronus": "FULL"}})
    with pytest.raises(palyra.InvalidInput, match="unknown config key nope"):
        palyra.Config.from_mapping({"nope": 1})


def test_group_commit_batches_concurrent_writers(runtime):
    results = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        for i in range(50):
            r = runtime.journal.append("load", {"writer": n, "i": i})
            with lock:
                results.append(r.event_id)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 1000
    stats = runtime.services.names.get("journal").ask(
        __import__("pykka").messages.ProxyCall(("stats",), (), {})
    )
    assert stats["batches"] < stats["writes"]  # several writers shared a transaction
    report = runtime.verify_journal()
    assert report.ok


def test_child_spec_defaults_follow_the_issue():
    spec = ChildSpec(name="x", actor=object)  # type: ignore[arg-type]
    assert spec.shutdown_timeout == 5.0 and spec.restart == "permanent"
    assert spec.effective_probe_timeout == 0.5


def test_second_runtime_on_the_same_state_dir_is_refused(runtime):
    with pytest.raises(palyra.Conflict, match="in use by pid"):
        palyra.Runtime.start(runtime.state_dir)
    assert runtime.journal.append("still fine")


def test_a_start_that_meets_a_lock_probe_waits_for_it(tmp_path):
    """``palyra doctor`` probes the lock with a momentary shared flock; a runtime
    starting at that instant tries again instead of failing."""
    import fcntl
    import os
    import threading

    from palyra.statelock import LOCK_NAME, StateLock

    tmp_path.mkdir(exist_ok=True)
    fd = os.open(tmp_path / LOCK_NAME, os.O_RDONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a probe in progress
    released = threading.Timer(0.05, lambda: fcntl.flock(fd, fcntl.LOCK_UN))
    released.start()
    lock = StateLock(tmp_path)
    try:
        lock.acquire()
        assert lock.holder_pid() == os.getpid()
    finally:
        lock.release()
        released.join()
        os.close(fd)
