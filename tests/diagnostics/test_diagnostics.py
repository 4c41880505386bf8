from __future__ import annotations

import time

import orjson
import pytest

import palyra

# Probes far apart, so the supervisor does not restart the hung actor mid-test.
SLOW_PROBES = {"supervision": {"probe_interval": 30.0, "shutdown_timeout": 1.0}}


def test_snapshot_names_a_hung_actor_and_still_returns_within_its_deadline(tmp_path):
    rt = palyra.Runtime.start(tmp_path / "state", SLOW_PROBES)
    try:
        rt.send("hello", session_key="diag").wait(10)
        assert rt.chaos.hang("learning", 3.0, wait=2.0)
        started = time.monotonic()
        snap = rt.diagnostics(deadline=0.3)
        elapsed = time.monotonic() - started

        assert elapsed < 1.5
        assert snap["supervision"]["unresponsive"] == ["learning"]
        statuses = {a["name"]: a["status"] for a in snap["supervision"]["actors"]}
        assert statuses["journal"] == statuses["gateway"] == "responsive"
        assert snap["journal"]["events"] > 0 and len(snap["journal"]["chain_head"]) == 64
        assert snap["runs"]["by_state"].get("done", 0) == 1
        assert snap["learning"]["error"] == "unresponsive"  # its section, not the snapshot, is lost
        assert isinstance(snap["governance"]["reserved"], dict)
        assert "error" not in snap["governance"]["reserved"]
        assert snap["governance"]["recent_routing"][0]["budget_outcome"]
        orjson.dumps(snap)  # one JSON document

        deadline = time.monotonic() + 10
        while snap["supervision"]["unresponsive"]:  # the hang ends; the actor answers again
            assert time.monotonic() < deadline
            snap = rt.diagnostics(deadline=0.5)
        assert {a["status"] for a in snap["supervision"]["actors"]} == {"responsive"}
        assert "error" not in snap["learning"]
    finally:
        rt.stop()


def test_snapshot_keeps_secrets_out_and_fingerprints_the_config(tmp_path):
    secret = "sk-live-0123456789abcdefSECRET"
    rt = palyra.Runtime.start(
        tmp_path / "state",
        {"provider": {"kind": "openai_compatible", "api_key": secret,
                      "base_url": "http://127.0.0.1:9/v1", "allow_private_base_url": True}},
    )
    try:
        snap = rt.diagnostics()
        assert secret not in orjson.dumps(snap).decode()
        assert len(snap["config"]["fingerprint"]) == 64
        assert snap["config"]["fingerprint"] == rt.diagnostics()["config"]["fingerprint"]
    finally:
        rt.stop()


def test_snapshot_of_a_stopped_runtime_is_a_clear_error(tmp_path):
    rt = palyra.Runtime.start(tmp_path / "state")
    rt.stop()
    with pytest.raises(palyra.RuntimeStopped):
        rt.diagnostics()
