"""The support bundle: planted secrets stay out, leaks refuse the export, the cap trims."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from pathlib import Path

import apsw
import orjson
import pytest

import palyra
from palyra.cli import main as cli
from palyra.support_bundle import (
    ARCHIVE_ROOT,
    MANIFEST,
    MIN_MAX_BYTES,
    build_bundle,
    export_bundle,
)

API_KEY = "sk-live-PLANTEDproviderKEY0123456789"
ADMIN_TOKEN = "admin-PLANTED-token-0123456789abcdef"
ENV_TOKEN = "env-PLANTED-admin-token-9876543210"
DB_PASSWORD = "hunter2-PLANTED-db-pass"
FREE_TEXT_KEY = "sk-projPLANTEDfreeTextKey0123456789"
QUERY_TOKEN = "tok-PLANTED-query-0123456789"
ERROR_KEY = "errkey-PLANTED-0123456789"
PROXY_PASSWORD = "pw-PLANTED-proxy-pass"
BEARER = "eyJPLANTEDbearer.0123456789abcdef"
PLANTED = (API_KEY, ADMIN_TOKEN, ENV_TOKEN, DB_PASSWORD, FREE_TEXT_KEY, QUERY_TOKEN, ERROR_KEY,
           PROXY_PASSWORD, BEARER)

CONFIG_TOML = f"""
[provider]
kind = "openai_compatible"
api_key = "{API_KEY}"
base_url = "http://127.0.0.1:9/v1"
allow_private_base_url = true
max_retries = 0
timeout_s = 2.0
"""

# Journal payloads as tools and providers produce them: free text under neutral keys.
PAYLOADS = [
    {"tool": "palyra.http", "output": f"connected to https://admin:{DB_PASSWORD}@db.example/app"},
    {"tool": "palyra.http", "output": f"my key is {FREE_TEXT_KEY}, keep it safe"},
    {"tool": "palyra.http", "download_url": f"https://files.example/x?access_token={QUERY_TOKEN}&page=2"},
    {"tool": "palyra.http", "request": {"headers": {"Authorization": f"Bearer {BEARER}"}}},
    {"provider": "upstream", "error": f"401 from https://u:{PROXY_PASSWORD}@proxy.example/v1"},
]
FAILED_RUN_ERROR = (f"provider error: upstream said api_key={ERROR_KEY} is invalid "
                    f"(https://bob:{PROXY_PASSWORD}@proxy.example/v1?token={QUERY_TOKEN})")


def _write_sql(state: Path, sql: str, *args: object) -> None:
    conn = apsw.Connection(str(state / "journal.sqlite3"))
    try:
        conn.execute(sql, args)
    finally:
        conn.close()


@pytest.fixture
def planted(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A stopped state directory full of secrets: config, admin token, env, journal
    payloads, a tool call, and a failed run whose error text quotes credentials."""
    monkeypatch.setenv("PALYRA_ADMIN_TOKEN", ENV_TOKEN)
    state, config = tmp_path / "state", tmp_path / "palyra.toml"
    config.write_text(CONFIG_TOML)
    rt = palyra.Runtime.start(state, {"tools": {"allowed": ["palyra.echo"]}})
    try:
        for payload in PAYLOADS:
            rt.journal.append("tool.output", payload)
        tool = orjson.dumps({"text": f"the password is {DB_PASSWORD} api_key={API_KEY}"}).decode()
        rt.send(f"echo this\n@tool palyra.echo {tool}", session_key="bundle").wait(10)
        failed = rt.send("@fail auth_invalid", session_key="bundle").wait(10)
        assert failed.state == "failed"
    finally:
        rt.stop()
    # An error text as an older writer (or a provider we do not redact for) stored it.
    _write_sql(state, "UPDATE orchestrator_runs SET last_error = ? WHERE run_ulid = ?",
               FAILED_RUN_ERROR, failed.run_id)
    (state / "admin.token").write_text(ADMIN_TOKEN + "\n")
    (state / "admin.token").chmod(0o600)
    return state, config


def extract(archive: Path, into: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(into, filter="data")
    root = into / ARCHIVE_ROOT
    return {p.name: p.read_bytes() for p in root.iterdir()}


def assert_no_planted_secret(members: dict[str, bytes]) -> None:
    for name, data in members.items():
        for secret in PLANTED:
            assert secret.encode() not in data, (name, secret)


def assert_manifest_matches(members: dict[str, bytes]) -> dict:
    manifest = orjson.loads(members[MANIFEST])
    assert manifest["schema_version"] == 1
    listed = {m["name"]: m for m in manifest["members"]}
    assert set(listed) | {MANIFEST} == set(members)
    for name, entry in listed.items():
        assert entry["size_bytes"] == len(members[name])
        assert entry["sha256"] == hashlib.sha256(members[name]).hexdigest()
    return manifest


def test_planted_secrets_never_reach_the_bundle_bytes(planted, tmp_path):
    state, config = planted
    out = tmp_path / "bundle.tar.gz"
    bundle = export_bundle(state, out, config_path=str(config))
    members = extract(out, tmp_path / "x")
    assert_no_planted_secret(members)
    manifest = assert_manifest_matches(members)
    assert manifest["truncated"] == [] and bundle.size_bytes == out.stat().st_size

    journal = orjson.loads(members["journal.json"])
    assert journal["verify_chain"]["ok"] is True and journal["verify_chain"]["tapes"] == 2
    assert journal["recent_events"][0]["hash"] == journal["latest_hash"]
    assert all(e["prev_hash"] for e in journal["recent_events"][:-1])
    outputs = [e["payload"] for e in journal["recent_events"] if e["kind"] == "tool.output"]
    assert "https://<redacted>@db.example/app" in str(outputs)  # redacted, still readable
    failures = orjson.loads(members["failures.json"])
    [run] = failures["failed_runs"]
    assert "api_key=<redacted>" in run["last_error"] and "proxy.example" in run["last_error"]
    assert failures["incident_summary"]["active"] == 0
    cfg = orjson.loads(members["config.json"])
    assert cfg["document"]["provider"]["api_key"] == "<redacted>"
    assert cfg["effective"]["provider"]["options"]["api_key"] == "<redacted>"
    assert len(cfg["fingerprint_sha256"]) == 64
    summary = orjson.loads(members["summary.json"])
    assert summary["source"] == "offline" and summary["build"]["python_version"]
    assert orjson.loads(members["doctor.json"])["mode"] == "diagnostics"
    assert orjson.loads(members["diagnostics.json"])["runs"]["by_state"] == {"done": 1, "failed": 1}


def test_a_known_secret_that_survives_redaction_refuses_the_export(planted, tmp_path):
    state, _ = planted
    note = "an-innocent-looking-note-value"  # under a neutral key: redaction keeps it
    rt = palyra.Runtime.start(state)
    rt.journal.append("operator.note", {"note": note})
    rt.stop()
    out = tmp_path / "out" / "bundle.tar.gz"
    out.parent.mkdir()
    with pytest.raises(palyra.SecretLeak) as caught:
        export_bundle(state, out, known_secrets=[note])
    assert "journal.json" in caught.value.message and note not in caught.value.message
    assert caught.value.details["members"] == {"journal.json": ["known_secret"]}
    assert list(out.parent.iterdir()) == []  # no bundle, no temp file
    assert build_bundle(state).size_bytes > 0  # without the extra secret it is fine


def test_the_cap_trims_progressively_and_ends_in_a_minimal_stub(planted):
    state, _ = planted
    rt = palyra.Runtime.start(state)
    for i in range(80):
        rt.journal.append("bulk", {"i": i, "text": "x" * 400})
    rt.stop()
    full = build_bundle(state, max_bytes=10 * 1024 * 1024)
    total = sum(map(len, full.members.values()))
    assert full.manifest["truncated"] == []

    halved = build_bundle(state, max_bytes=total - 100)
    assert sum(map(len, halved.members.values())) <= total - 100
    assert halved.manifest["truncated"] == ["journal.recent_events: kept 32 of 64"]
    assert len(orjson.loads(halved.members["journal.json"])["recent_events"]) == 32

    previous = None
    for cap in (64 * 1024, 16 * 1024, 8 * 1024, 4 * 1024, MIN_MAX_BYTES):
        bundle = build_bundle(state, max_bytes=cap)
        assert bundle.size_bytes <= cap and sum(map(len, bundle.members.values())) <= cap
        truncated = bundle.manifest["truncated"]
        if previous is not None:  # a smaller cap never trims less
            assert len(truncated) >= len(previous) or truncated[-1].startswith("minimal_stub")
        previous = truncated
    assert set(bundle.members) == {"summary.json", MANIFEST}
    assert truncated[-1].startswith("minimal_stub") and "doctor.checks" in truncated
    stub = orjson.loads(bundle.members["summary.json"])
    assert stub["minimal_stub"] is True and stub["journal_chain_ok"] is True


def test_a_live_snapshot_is_used_and_its_bulky_parts_go_first(planted):
    state, config = planted
    rt = palyra.Runtime.start(state, palyra.cli.daemon.load_config(str(config)))
    try:
        snapshot = rt.diagnostics()
        full = build_bundle(state, config_path=str(config), config=rt.config, diagnostics=snapshot)
        assert orjson.loads(full.members["summary.json"])["source"] == "runtime"
        diag = orjson.loads(full.members["diagnostics.json"])
        assert diag["supervision"]["actors"] and API_KEY.encode() not in full.members["diagnostics.json"]
        total = sum(map(len, full.members.values()))
        trimmed = build_bundle(state, config_path=str(config), config=rt.config,
                               diagnostics=snapshot, max_bytes=total - 100)
    finally:
        rt.stop()
    assert trimmed.manifest["truncated"][:2] == ["config.document", "diagnostics.supervision.actors"]
    assert "actors" not in orjson.loads(trimmed.members["diagnostics.json"])["supervision"]


@pytest.mark.parametrize("options", [{"max_bytes": MIN_MAX_BYTES - 1}, {"max_bytes": True},
                                     {"recent_events": 501}, {"recent_events": -1}])
def test_bad_arguments_are_invalid_input(planted, options):
    with pytest.raises(palyra.InvalidInput) as caught:
        build_bundle(planted[0], **options)
    assert caught.value.details["field"] == next(iter(options))


def test_the_cli_exports_with_the_daemon_down(planted, tmp_path, capsys):
    state, config = planted
    out = tmp_path / "support.tar.gz"
    capsys.readouterr()
    rc = cli.main(["support-bundle", "export", "--state-dir", str(state), "--config", str(config),
                   "--output", str(out), "--json"])
    assert rc == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["output_path"] == str(out) and report["size_bytes"] == out.stat().st_size
    assert MANIFEST in report["members"] and report["truncated"] == []
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    members = extract(out, tmp_path / "x")
    assert_no_planted_secret(members)
    assert_manifest_matches(members)

    rc = cli.main(["support-bundle", "export", "--state-dir", str(state), "--output", str(out),
                   "--max-bytes", str(MIN_MAX_BYTES)])
    assert rc == 0 and "truncated: minimal_stub" in capsys.readouterr().out
    assert cli.main(["support-bundle", "export", "--state-dir", str(state), "--output",
                     str(out), "--max-bytes", "100"]) == 2
    assert "max_bytes" in capsys.readouterr().err
    assert cli.main(["support-bundle", "export", "--state-dir", str(tmp_path / "nope"),
                     "--output", str(out)]) == 2


def test_a_missing_or_unreadable_journal_still_yields_a_bundle_with_warnings(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    bundle = build_bundle(state)
    assert bundle.manifest["warnings"] == [f"no journal at {state / 'journal.sqlite3'}"]
    assert orjson.loads(bundle.members["journal.json"])["available"] is False
    (state / "journal.sqlite3").write_bytes(b"not a database" * 100)
    bundle = build_bundle(state)
    assert "the journal could not be read: NotADBError" in bundle.manifest["warnings"]
    assert orjson.loads(bundle.members["journal.json"])["available"] is False
