"""The real ``palyrad`` in a subprocess, driven over HTTP and by the ``palyra`` CLI."""

from __future__ import annotations

import signal
import stat
import subprocess
from pathlib import Path

import httpx
import orjson

from palyra.cli import daemon
from palyra.cli import main as cli
from tests.http.servers import START_TIMEOUT, lines_of, palyrad_cmd, palyrad_env, wait_for_url


def _palyrad(state: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(palyrad_cmd(state, *extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=palyrad_env())


def test_bind_and_config_errors_are_usage_errors(tmp_path, capsys, monkeypatch):
    assert daemon.main(["--state-dir", str(tmp_path), "--http", "0.0.0.0:7142"]) == 2
    assert "--allow-remote-bind" in capsys.readouterr().err
    assert daemon.main(["--state-dir", str(tmp_path), "--http", "nonsense"]) == 2
    missing = tmp_path / "missing.toml"
    assert daemon.main(["--state-dir", str(tmp_path), "--config", str(missing)]) == 2
    monkeypatch.setenv("PALYRA_RATE_LIMIT_PER_S", "lots")
    assert daemon.main(["--state-dir", str(tmp_path)]) == 2
    assert "PALYRA_RATE_LIMIT_PER_S must be a number" in capsys.readouterr().err
    assert daemon.parse_bind("[::1]:0", allow_remote=False) == ("::1", 0)
    assert daemon.parse_bind("10.0.0.5:80", allow_remote=True) == ("10.0.0.5", 80)
    assert not (tmp_path / "runtime.lock").exists()  # nothing was started


def test_palyrad_serves_refuses_a_second_daemon_and_stops_on_sigterm(tmp_path, capsys):
    state = tmp_path / "state"
    proc = _palyrad(state)
    try:
        out = lines_of(proc.stdout)
        lines_of(proc.stderr)  # drained, so a chatty daemon never blocks on a full pipe
        seen: list[str] = []
        url = wait_for_url(out, seen)
        assert any(str(state / "admin.token") in line for line in seen + [out.get(timeout=5)])
        token_file = state / "admin.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}

        with httpx.Client(base_url=url, timeout=10) as http:
            health = http.get("/healthz")
            assert health.status_code == 200 and health.json()["service"] == "palyrad"
            assert http.get("/admin/v1/status").status_code == 401
            accepted = http.post("/admin/v1/runs", json={"text": "alpha beta gamma"},
                                 headers=auth)
            assert accepted.status_code == 202
            run_id = accepted.json()["run_id"]
            with http.stream("GET", f"/admin/v1/runs/{run_id}/events", headers=auth) as sse:
                data = [orjson.loads(line[6:]) for line in sse.iter_lines()
                        if line.startswith("data: ")]
            assert data[-1]["payload"]["kind"] == "done"
            completion = http.post("/v1/chat/completions", headers=auth, json={
                "model": "deterministic", "messages": [{"role": "user", "content": "hi you"}]})
            assert completion.json()["choices"][0]["message"]["content"] == "hi you"

        # the operator CLI against the same daemon
        base = ["--url", url, "--state-dir", str(state)]
        assert cli.main([*base, "status"]) == 0
        assert cli.main([*base, "send", "one two", "--follow"]) == 0
        assert "done: one two" in capsys.readouterr().out
        assert cli.main([*base, "runs", "list", "--json"]) == 0
        runs = orjson.loads(capsys.readouterr().out)["runs"]
        assert len(runs) == 3
        assert cli.main([*base, "runs", "show", run_id]) == 0
        assert cli.main([*base, "runs", "show", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]) == 1
        assert cli.main([*base, "approvals", "list", "--json"]) == 0
        assert cli.main([*base, "usage", "summary"]) == 0
        capsys.readouterr()
        assert cli.main([*base, "diagnostics"]) == 0
        human = capsys.readouterr().out
        assert "unresponsive: none" in human and "failures: none" in human
        assert cli.main([*base, "diagnostics", "--json"]) == 0
        assert orjson.loads(capsys.readouterr().out)["runs"]["by_state"]["done"] == 3
        assert cli.main([*base, "doctor", "--json", "--only", "daemon_reachable"]) == 0
        assert "HTTP 200" in orjson.loads(capsys.readouterr().out)["checks"][0]["message"]
        dead = ["--url", "http://127.0.0.1:9", "--state-dir", str(state)]
        assert cli.main([*dead, "doctor", "--json", "--only", "daemon_reachable"]) == 0  # a warning
        assert orjson.loads(capsys.readouterr().out)["warnings"] == ["daemon_reachable"]
        assert cli.main([*base, "--token", "wrong", "status"]) == 1
        assert cli.main(["--url", "http://127.0.0.1:9", "--token", "x", "status"]) == 3
        assert cli.main([*base, "runs"]) == 2

        # a second daemon on the same state directory is refused
        second = _palyrad(state)
        try:
            _, err = second.communicate(timeout=START_TIMEOUT)
        finally:
            second.kill()
        assert second.returncode == 1, err
        assert "in use by pid" in err and str(proc.pid) in err

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        rest = []
        while (line := out.get(timeout=5)) is not None:
            rest.append(line)
        assert any("SIGTERM received" in line for line in rest), rest
        assert any("stopped (clean)" in line for line in rest), rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    # the lock is released: the state directory is usable again
    assert cli.main(["--state-dir", str(state), "journal", "verify"]) == 0
