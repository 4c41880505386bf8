"""Planted secrets (config, tool output, provider errors, URLs) never reach the
diagnostics snapshot, the observability counters and failure ring, or the logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest

import palyra
from tests.support.openai_server import OpenAIServer

CONFIG_KEY = "sk-plantedCONFIGKEY0001"
TOOL_SECRET = "plantedTOOLSECRET0002"
ERROR_KEY = "plantedERRORKEY0003"
URL_PASSWORD = "plantedURLPASS0004"
URL_TOKEN = "plantedURLTOKEN0005"
BEARER = "plantedBEARER0006"
CORPUS = (CONFIG_KEY, TOOL_SECRET, ERROR_KEY, URL_PASSWORD, URL_TOKEN, BEARER)


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv


def leaks(text: str) -> list[str]:
    return [secret for secret in CORPUS if secret in text]


def test_no_planted_secret_reaches_diagnostics_counters_or_logs(tmp_path, server, caplog):
    caplog.set_level(logging.DEBUG)
    rt = palyra.Runtime.start(tmp_path / "state", {
        "provider": {"kind": "openai_compatible", "base_url": server.base_url, "api_key": CONFIG_KEY,
                     "model": "gpt-test", "allow_private_base_url": True, "max_retries": 0},
        "tools": {"allowed": ["palyra.echo"]},
    })
    try:
        server.enqueue_tool_call("palyra.echo", {"text": f"here is token={TOOL_SECRET}"})
        server.enqueue_text("done")
        assert rt.send("use the tool", session_key="corpus").wait(10).state == "done"

        server.enqueue_status(401, {"error": {"message": (
            f"invalid api_key={ERROR_KEY} for https://alice:{URL_PASSWORD}@api.example/v1"
            f"?access_token={URL_TOKEN} (Authorization: Bearer {BEARER})"), "type": "auth"}})
        failed = rt.send("this one fails", session_key="corpus")
        assert failed.wait(10).state == "failed"

        observed = rt.observability()
        assert observed["recent_failures"], "the failed run is in the ring"
        assert observed["recent_failures"][0]["correlation"]["run_id"] == failed.id
        snapshot = rt.diagnostics()
        for name, text in (("diagnostics", orjson.dumps(snapshot).decode()),
                           ("observability", orjson.dumps(observed).decode()),
                           ("run", repr(rt.run(failed.id)))):
            assert not leaks(text), (name, leaks(text))
    finally:
        rt.stop()
    logged = "\n".join(
        record.getMessage() + (caplog.text if record.exc_info else "") for record in caplog.records)
    assert caplog.records, "the runtime logged something to check"
    assert not leaks(logged), leaks(logged)
