from __future__ import annotations

import os
import socket
import stat
import subprocess

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
    assert len(report["checks"]) == 11


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
    from palyra.cli.doctor import run_doctor, run_rollback

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
        undone = run_rollback(state, report["run_id"])  # nothing to undo: same content
        assert undone["actions"][0].startswith(f"keep {state / 'journal.sqlite3'}: a checkpoint")
    finally:
        holder.close()


# -- repair runs, manifests and rollback ------------------------------------------------


def files(*roots) -> dict[str, tuple[bytes, int]]:
    """Every file and directory under ``roots`` with its bytes and mode (a byte-exact
    picture of what a preview must not change and a rollback must restore). SQLite's
    shared-memory index, and an empty WAL, are left out: any read-only reader creates
    them and they hold no data."""
    out = {}
    for root in roots:
        paths = [root, *root.rglob("*")] if root.is_dir() else [root] if root.exists() else []
        for p in paths:
            if p.name.endswith("-shm") or (p.name.endswith("-wal") and p.stat().st_size == 0):
                continue
            mode = stat.S_IMODE(p.stat().st_mode)
            out[str(p)] = (p.read_bytes() if p.is_file() else b"", mode)
    return out


def journal_files(state) -> dict[str, tuple[bytes, int]]:
    return {k: v for k, v in files(state).items() if "/recovery" not in k}


def rollback(capsys, state, run_id, *extra: str) -> tuple[int, dict, str]:
    """Exit code, the JSON printed and stderr (where a refusal is explained)."""
    capsys.readouterr()
    rc = cli.main(["doctor", "--state-dir", str(state), "--json", "--rollback", run_id, *extra])
    out = capsys.readouterr()
    return rc, orjson.loads(out.out) if out.out.strip() else {}, out.err


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_repair_of_a_healthy_install_writes_nothing(capsys, state):
    before = files(state)
    rc, report = doctor(capsys, state, "--repair")
    assert rc == 0 and report["run_id"] is None
    assert files(state) == before and not (state / "recovery").exists()


def test_loose_permissions_are_rolled_back_to_the_exact_modes(capsys, state):
    state.chmod(0o755)
    (state / "journal.sqlite3").chmod(0o644)
    before = journal_files(state)
    rc, applied = doctor(capsys, state, "--repair")
    manifest = orjson.loads((state / "recovery" / "runs" / applied["run_id"] / "manifest.json").read_bytes())
    assert {e["change"] for e in manifest["entries"]} == {"chmod"}
    assert [s["id"] for s in manifest["steps"]] == ["permissions.tighten"]
    rc, undone, _ = rollback(capsys, state, applied["run_id"])
    assert rc == 0 and undone["mode"] == "rollback_apply"
    assert journal_files(state) == before


def test_a_stale_lock_is_named_removed_and_restored(capsys, state):
    pid = dead_pid()
    lock = state / "runtime.lock"
    lock.write_text(str(pid))
    rc, report = doctor(capsys, state, "--only", "state_lock")
    assert rc == 0 and report["warnings"] == ["state_lock"]
    assert by_id(report)["state_lock"]["message"] == f"stale lock file (pid {pid} not running)"

    before = files(state)
    rc, preview = doctor(capsys, state, "--dry-run", "--only", "state_lock")
    assert by_id(preview)["state_lock"]["repair_step"] == "state_lock.remove_stale"
    assert files(state) == before  # a preview writes nothing, not even a recovery dir

    rc, applied = doctor(capsys, state, "--repair", "--only", "state_lock")
    assert by_id(applied)["state_lock"]["repaired"] is True and not lock.exists()
    (entry,) = orjson.loads((state / "recovery" / "runs" / applied["run_id"] / "manifest.json")
                            .read_bytes())["entries"]
    assert entry["change"] == "deleted" and entry["after_sha256"] is None
    before = files(state)
    rc, preview, _ = rollback(capsys, state, applied["run_id"], "--dry-run")
    assert rc == 0 and preview["mode"] == "rollback_preview" and files(state) == before
    rc, _, _ = rollback(capsys, state, applied["run_id"])
    assert rc == 0 and lock.read_bytes() == str(pid).encode() and stat.S_IMODE(lock.stat().st_mode) == 0o600


def test_a_clean_stop_leaves_no_stale_lock(capsys, state):
    assert (state / "runtime.lock").read_bytes() == b""  # released: emptied
    rc, report = doctor(capsys, state, "--only", "state_lock")
    assert by_id(report)["state_lock"]["ok"]


def test_stuck_runs_are_failed_the_way_self_healing_fails_them(capsys, state):
    from palyra.healing.remediation import STALE_RUN_REASON
    from palyra.journal.store import Reader

    _write(state, "UPDATE orchestrator_runs SET state = 'in_progress'")
    before = journal_files(state)
    rc, preview = doctor(capsys, state, "--dry-run", "--only", "stuck_runs")
    assert STALE_RUN_REASON in by_id(preview)["stuck_runs"]["repair_actions"][0]
    assert journal_files(state) == before

    rc, applied = doctor(capsys, state, "--repair", "--only", "stuck_runs")
    assert rc == 0 and by_id(applied)["stuck_runs"]["repaired"] is True
    with Reader.inspect(state / "journal.sqlite3") as reader:
        assert reader.verify_chain().ok
        (run_id, run_state, error), = reader.conn.execute(
            "SELECT run_ulid, state, last_error FROM orchestrator_runs").fetchall()
        assert (run_state, error) == ("failed", STALE_RUN_REASON)
        (payload,) = reader.conn.execute(
            "SELECT payload_json FROM orchestrator_tape WHERE run_ulid = ? ORDER BY seq DESC LIMIT 1",
            (run_id,)).fetchone()
        assert orjson.loads(payload)["termination_reason"] == "stale_heartbeat"
        assert reader.conn.execute("SELECT count(*) FROM run_lifecycle_events WHERE run_ulid = ?"
                                   " AND to_state = 'failed' AND reason = ?",
                                   (run_id, STALE_RUN_REASON)).fetchone() == (1,)
    (entry,) = orjson.loads((state / "recovery" / "runs" / applied["run_id"] / "manifest.json")
                            .read_bytes())["entries"]
    assert entry["kind"] == "sqlite" and entry["content_before_sha256"] != entry["content_after_sha256"]

    rc, _, _ = rollback(capsys, state, applied["run_id"])
    assert rc == 0
    from palyra.cli.doctor.recovery import sqlite_content_sha256

    assert sqlite_content_sha256(state / "journal.sqlite3", state) == entry["content_before_sha256"]
    rc, report = doctor(capsys, state, "--only", "stuck_runs", "--only", "journal_chain")
    assert report["warnings"] == ["stuck_runs"] and report["blocking"] == []


def test_with_a_runtime_up_stuck_runs_are_left_to_self_healing(capsys, state):
    rt = palyra.Runtime.start(state)
    try:
        rc, report = doctor(capsys, state, "--repair", "--only", "stuck_runs")
        check = by_id(report)["stuck_runs"]
        assert check["ok"] and "self-healing (watchdog auto)" in check["message"]
        assert "repair_step" not in check and report["run_id"] is None  # the journal is the runtime's
    finally:
        rt.stop()


def test_a_journal_too_big_to_back_up_needs_force_and_cannot_be_rolled_back(capsys, state, monkeypatch):
    from palyra.cli.doctor import recovery

    monkeypatch.setattr(recovery, "JOURNAL_BACKUP_LIMIT", 1)
    _write(state, "UPDATE orchestrator_runs SET state = 'in_progress'")
    rc, report = doctor(capsys, state, "--repair", "--only", "stuck_runs")
    check = by_id(report)["stuck_runs"]
    assert check["repair_status"] == "needs_force" and not check.get("repaired")
    rc, report = doctor(capsys, state, "--repair", "--force", "--only", "stuck_runs")
    assert by_id(report)["stuck_runs"]["repaired"] is True
    rc, _, err = rollback(capsys, state, report["run_id"])
    assert rc == 1 and "no backup: " in err


def test_rollback_refuses_while_a_runtime_holds_the_journal(capsys, state):
    _write(state, "UPDATE orchestrator_runs SET state = 'in_progress'")
    rc, applied = doctor(capsys, state, "--repair", "--only", "stuck_runs")
    rt = palyra.Runtime.start(state)
    try:
        rc, _, err = rollback(capsys, state, applied["run_id"])
        assert rc == 1 and f"in use by pid {os.getpid()}" in err
    finally:
        rt.stop()


def test_a_missing_config_is_initialized_and_the_rollback_deletes_it(capsys, state, tmp_path):
    from palyra.cli.daemon import load_config
    from palyra.config import Config

    path = tmp_path / "palyra.toml"
    rc, report = doctor(capsys, state, "--config", str(path), "--only", "config")
    assert rc == 1 and report["blocking"] == ["config"] and "does not exist" in report["checks"][0]["message"]
    rc, preview = doctor(capsys, state, "--config", str(path), "--dry-run", "--only", "config")
    assert preview["checks"][0]["repair_step"] == "config.initialize" and not path.exists()

    rc, applied = doctor(capsys, state, "--config", str(path), "--repair", "--only", "config")
    assert rc == 0 and applied["checks"][0]["repaired"] is True
    assert load_config(str(path)) == Config() and stat.S_IMODE(path.stat().st_mode) == 0o600
    rc, _, _ = rollback(capsys, state, applied["run_id"])
    assert rc == 0 and not path.exists()


def test_an_invalid_config_is_restored_from_the_last_good_copy(capsys, state, tmp_path):
    path = tmp_path / "palyra.toml"
    good = b"[runs]\nmax_tool_calls = 2  # kept by the first repair run\n"
    path.write_bytes(good)
    rc, first = doctor(capsys, state, "--config", str(path), "--repair", "--only", "config")
    assert rc == 0 and first["run_id"]  # a repair run keeps a copy of a config that loads

    broken = b"[runs]\nmax_tool_calls = -1\n"
    path.write_bytes(broken)
    rc, report = doctor(capsys, state, "--config", str(path), "--only", "config")
    assert rc == 1 and "max_tool_calls" in report["checks"][0]["message"]
    assert report["checks"][0]["repair"] == "config.restore_latest_backup"
    rc, preview = doctor(capsys, state, "--config", str(path), "--dry-run", "--only", "config")
    assert path.read_bytes() == broken

    rc, applied = doctor(capsys, state, "--config", str(path), "--repair", "--only", "config")
    assert rc == 0 and path.read_bytes() == good

    path.write_bytes(good + b"# edited after the repair\n")
    rc, refusal, err = rollback(capsys, state, applied["run_id"])
    assert rc == 1 and f"changed since the repair: {path}" in err and refusal["changed"] == [str(path)]
    rc, _, _ = rollback(capsys, state, applied["run_id"], "--force")
    assert rc == 0 and path.read_bytes() == broken
    rc, _, err = rollback(capsys, state, applied["run_id"])
    assert rc == 1 and "already rolled back" in err


def test_an_invalid_config_without_a_backup_only_gets_a_hint(capsys, state, tmp_path):
    path = tmp_path / "palyra.toml"
    path.write_text("[nope]\n")
    rc, report = doctor(capsys, state, "--config", str(path), "--repair", "--only", "config")
    check = report["checks"][0]
    assert rc == 1 and check["repair"] == "" and "unknown config key nope" in check["message"]
    assert report["run_id"] is None


def test_recovery_runs_are_private(capsys, state):
    (state / "runtime.lock").write_text(str(dead_pid()))
    rc, applied = doctor(capsys, state, "--repair", "--only", "state_lock")
    for path in (state / "recovery").rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    assert stat.S_IMODE((state / "recovery").stat().st_mode) == 0o700


def test_the_default_config_loads_to_the_defaults():
    import tomllib

    from palyra.cli.doctor.config_template import default_config_toml
    from palyra.config import Config

    text = default_config_toml()
    assert Config.from_mapping(tomllib.loads(text)) == Config()
    uncommented = "\n".join(line[2:] if line.startswith("# ") and " = " in line or line.startswith("# [")
                            else line for line in text.splitlines()
                            if "kind = " not in line and "base_url" not in line and "model =" not in line
                            and "api_key" not in line)
    assert Config.from_mapping(tomllib.loads(uncommented)) == Config()


def test_human_output_names_each_check_and_the_run_id(capsys, state):
    (state / "runtime.lock").write_text(str(dead_pid()))
    capsys.readouterr()
    assert cli.main(["doctor", "--state-dir", str(state), "--repair"]) == 0
    out = capsys.readouterr().out
    assert "[ok] config: config (defaults) is valid" in out
    assert "[ok] state_lock: no runtime holds the state directory (repaired" in out
    assert "palyra doctor --rollback " in out


# -- provider ---------------------------------------------------------------------------


def _provider_config(tmp_path, base_url: str) -> str:
    path = tmp_path / "provider.toml"
    path.write_text(f'[provider]\nkind = "openai_compatible"\nbase_url = "{base_url}"\n'
                    f'api_key = "{SECRET}"\nallow_private_base_url = true\n')
    return str(path)


SECRET = "sk-doctor-test-0123456789abcdef"


def test_a_reachable_provider_passes_and_the_key_never_shows(capsys, state, tmp_path):
    from tests.support.openai_server import OpenAIServer

    with OpenAIServer() as server:
        capsys.readouterr()
        rc = cli.main(["doctor", "--state-dir", str(state), "--config", _provider_config(tmp_path, server.base_url),
                       "--only", "provider_reachable"])
        out = capsys.readouterr()
    assert rc == 0 and "[ok] provider_reachable:" in out.out and "HTTP 200" in out.out
    assert SECRET not in out.out + out.err


def test_an_unreachable_provider_is_a_warning_without_the_key(capsys, state, tmp_path):
    with socket.socket() as sock:  # a port nobody listens on once it is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = _provider_config(tmp_path, f"http://127.0.0.1:{port}/v1?api_key={SECRET}")
    rc, report = doctor(capsys, state, "--config", config, "--only", "provider_reachable")
    check = report["checks"][0]
    assert rc == 0 and report["warnings"] == ["provider_reachable"] and "ConnectError" in check["message"]
    assert SECRET not in orjson.dumps(report).decode()


def test_a_config_path_that_is_a_directory_is_a_finding_not_a_crash(capsys, state, tmp_path):
    rc, report = doctor(capsys, state, "--config", str(tmp_path), "--only", "config",
                        "--only", "provider_reachable")
    assert rc == 1 and report["blocking"] == ["config"] and report["warnings"] == ["provider_reachable"]
