"""The console commands of the ``palyra`` CLI against a real ``palyrad`` subprocess."""

from __future__ import annotations

import csv
import subprocess
import time
from pathlib import Path

import httpx
import orjson
import pytest

from palyra.cli import main as cli
from tests.http.servers import lines_of, palyrad_cmd, palyrad_env, wait_for_url


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("cli") / "state"
    proc = subprocess.Popen(palyrad_cmd(state), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=palyrad_env())
    try:
        out = lines_of(proc.stdout)
        lines_of(proc.stderr)
        url = wait_for_url(out, [])
        yield url, state
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run(capsys, base: list[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main([*base, *argv])
    return code, capsys.readouterr().out


def test_tasks_commands(daemon, capsys):
    url, state = daemon
    base = ["--url", url, "--state-dir", str(state)]
    later = str(int(time.time() * 1000) + 3_600_000)  # held back so the controls decide
    code, out = run(capsys, base, "tasks", "create", "tidy up", "--session", "bg",
                    "--priority", "3", "--not-before", later, "--json")
    assert code == 0
    task_id = orjson.loads(out)["task_id"]
    code, out = run(capsys, base, "tasks", "list")
    assert code == 0 and out.split()[:7] == ["TASK_ID", "STATE", "KIND", "PRI", "TRY",
                                             "PRINCIPAL", "TEXT"]
    assert task_id in out and "queued" in out and "tidy up" in out
    assert run(capsys, base, "tasks", "pause", task_id)[1].count("paused") == 1
    assert run(capsys, base, "tasks", "pause", task_id)[0] == 1  # 409: already paused
    for action, state_after in (("resume", "queued"), ("cancel", "cancelled"),
                                ("retry", "queued")):
        code, out = run(capsys, base, "tasks", action, task_id, "--json")
        assert code == 0 and orjson.loads(out)["state"] == state_after
    code, out = run(capsys, base, "tasks", "show", task_id, "--json")
    assert orjson.loads(out)["state"] == "queued"
    assert run(capsys, base, "tasks", "show", "01ARZ3NDEKTSV4RRFFQ69G5FAV")[0] == 1
    code, out = run(capsys, base, "tasks", "list", "--state", "paused", "--json")
    assert orjson.loads(out) == {"tasks": []}


def test_incidents_budgets_learning_memory_commands(daemon, capsys):
    url, state = daemon
    base = ["--url", url, "--state-dir", str(state)]
    code, out = run(capsys, base, "incidents")
    assert code == 0 and ("(no incidents)" in out or "INCIDENT" in out)
    assert orjson.loads(run(capsys, base, "incidents", "list", "--active", "--json")[1])[
        "incidents"] == []
    code, out = run(capsys, base, "incidents", "check", "--json")
    assert code == 0 and orjson.loads(out)["loops_total"] >= 1
    assert run(capsys, base, "incidents", "attempts")[0] == 0

    policy = state.parent / "policy.json"
    policy.write_bytes(orjson.dumps({"policy_id": "cli-tokens", "scope_kind": "global",
                                     "metric_kind": "total_tokens", "interval_kind": "rolling_24h",
                                     "action": "warn", "hard_limit_value": 1000}))
    code, out = run(capsys, base, "budgets", "put", "--file", str(policy), "--hard-limit", "5000")
    assert code == 0 and "policy cli-tokens" in out and "hard 5000" in out
    code, out = run(capsys, base, "budgets", "put", "--policy-id", "cli-2", "--scope-kind",
                    "principal", "--scope-id", "user:ops", "--metric", "total_tokens",
                    "--interval", "run", "--action", "block", "--soft-limit", "10", "--json")
    assert code == 0 and orjson.loads(out)["scope_id"] == "user:ops"
    assert run(capsys, base, "budgets", "put", "--scope-kind", "global")[0] == 1  # 400
    assert run(capsys, base, "budgets", "put", "--file", str(state.parent / "none.json"))[0] == 2
    code, out = run(capsys, base, "budgets", "override", "cli-tokens", "--reason", "q4")
    assert code == 0 and "palyra approvals allow" in out
    assert run(capsys, base, "budgets", "override", "no-such-policy")[0] == 1

    code, out = run(capsys, base, "learning", "candidates", "--json")
    assert code == 0 and isinstance(orjson.loads(out)["candidates"], list)
    assert run(capsys, base, "learning", "review", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "accepted")[0] == 1

    token = (state / "admin.token").read_text().strip()
    ingested = httpx.post(f"{url}/admin/v1/memory", headers={"Authorization": f"Bearer {token}"},
                          json={"text": "the deploy window is Tuesday"}, timeout=10)
    assert ingested.status_code == 201, ingested.text
    code, out = run(capsys, base, "memory", "search", "deploy window")
    assert code == 0 and ingested.json()["memory_id"] in out and "SNIPPET" in out
    code, out = run(capsys, base, "memory", "search", "deploy", "--principal", "user:x", "--json")
    assert orjson.loads(out) == {"hits": []}


def test_usage_export_writes_the_runs_as_csv(daemon, capsys, tmp_path: Path):
    url, state = daemon
    base = ["--url", url, "--state-dir", str(state)]
    code, out = run(capsys, base, "send", "alpha beta", "--follow", "--json")
    assert code == 0
    run_id = orjson.loads(out.splitlines()[0])["run_id"]
    target = tmp_path / "usage.csv"
    code, out = run(capsys, base, "usage", "export", "--output", str(target))
    assert code == 0 and str(target) in out
    with target.open(newline="") as fh:
        rows = {row["run_id"]: row for row in csv.DictReader(fh)}
    assert rows[run_id]["state"] == "done" and rows[run_id]["total_tokens"] == "4"
    code, out = run(capsys, base, "usage", "export", "--format", "json")
    assert code == 0 and run_id in [r["run_id"] for r in orjson.loads(out)["rows"]]
    assert run(capsys, base, "usage", "export", "--format", "xml")[0] == 2
