from __future__ import annotations

import os
import stat

import apsw
import orjson
import pytest

import palyra
from palyra.cli import main as cli


@pytest.fixture
def state(tmp_path):
    """A state directory a runtime has used and stopped, with an admin token."""
    path = tmp_path / "state"
    rt = palyra.Runtime.start(path)
    rt.send("hello", session_key="doc").wait(10)
    rt.stop()
    token = path / "admin.token"
    token.write_text("t" * 32)
    token.chmod(0o600)
    return path


def doctor(capsys, state, *extra: str) -> tuple[int, dict]:
    capsys.readouterr()
    rc = cli.main(["doctor", "--state-dir", str(state), "--json", *extra])
    return rc, orjson.loads(capsys.readouterr().out)


def by_id(report: dict) -> dict[str, dict]:
    return {c["id"]: c for c in report["checks"]}


def _write(state, sql: str) -> None:
    conn = apsw.Connection(str(state / "journal.sqlite3"))
    conn.execute(sql)
    conn.close()


def test_a_healthy_install_passes_every_check(capsys, state):
    rc, report = doctor(capsys, state)
    assert rc == 0 and report["ok"] and report["mode"] == "diagnostics"
    assert [c["id"] for c in report["checks"] if not c["ok"]] == []
    assert len(report["checks"]) == 10


def test_loose_permissions_are_named_previewed_and_repaired(capsys, state):
    state.chmod(0o755)
    (state / "journal.sqlite3").chmod(0o644)
    rc, report = doctor(capsys, state)
    assert rc == 1 and report["blocking"] == ["permissions"]
    assert "journal.sqlite3" in by_id(report)["permissions"]["message"]

    rc, preview = doctor(capsys, state, "--dry-run")
    assert rc == 1 and by_id(preview)["permissions"]["repair_actions"]
    assert stat.S_IMODE(state.stat().st_mode) == 0o755  # a preview changes nothing

    rc, applied = doctor(capsys, state, "--repair")
    assert rc == 0 and by_id(applied)["permissions"]["repaired"] is True
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state / "journal.sqlite3").st_mode) == 0o600


def test_a_tampered_journal_breaks_the_chain_check(capsys, state):
    _write(state, "DROP TRIGGER journal_events_no_update")  # only an outside hand can do this
    _write(state, "UPDATE journal_events SET payload_json = '{\"forged\": true}' WHERE seq = 1")
    rc, report = doctor(capsys, state)
    assert rc == 1 and "journal_chain" in report["blocking"]
    assert "seq 1" in by_id(report)["journal_chain"]["message"]


def test_runs_left_in_progress_without_a_runtime_are_reported(capsys, state):
    _write(state, "UPDATE orchestrator_runs SET state = 'in_progress'")
    rc, report = doctor(capsys, state, "--only", "stuck_runs")
    assert rc == 0 and report["warnings"] == ["stuck_runs"]  # a warning: recovery fixes it on start
    assert "1 run(s)" in by_id(report)["stuck_runs"]["message"]
    rt = palyra.Runtime.start(state)  # the recovery path the hint names
    rt.stop()
    rc, report = doctor(capsys, state, "--only", "stuck_runs")
    assert report["warnings"] == []


def test_a_held_lock_is_named_and_unknown_ids_are_usage_errors(capsys, state):
    rt = palyra.Runtime.start(state)
    try:
        rc, report = doctor(capsys, state, "--only", "state_lock")
        assert f"pid {os.getpid()}" in by_id(report)["state_lock"]["message"]
    finally:
        rt.stop()
    assert cli.main(["doctor", "--state-dir", str(state), "--only", "nope"]) == 2
    assert "unknown check id(s): nope" in capsys.readouterr().err


def test_a_large_wal_is_checkpointed_and_truncated(state):
    from palyra.cli.doctor import run_doctor

    holder = apsw.Connection(str(state / "journal.sqlite3"))  # keeps the WAL from being cleaned up
    try:
        holder.execute("PRAGMA wal_autocheckpoint=0")
        holder.execute("CREATE TABLE scratch (x BLOB)")
        holder.execute("INSERT INTO scratch VALUES (zeroblob(200000))")
        wal = state / "journal.sqlite3-wal"
        assert wal.stat().st_size > 100_000
        report = run_doctor(state, only=["wal_size"], wal_warn_bytes=100_000)
        assert report["warnings"] == ["wal_size"]
        report = run_doctor(state, only=["wal_size"], wal_warn_bytes=100_000, repair=True)
        assert report["checks"][0]["repaired"] is True and report["warnings"] == []
        assert wal.stat().st_size == 0
    finally:
        holder.close()
