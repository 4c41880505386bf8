"""The official ``openai`` Python client against a real ``palyrad`` subprocess, and a
tool call approved through the admin API of the same daemon."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.http.servers import Palyrad

CONFIG = """
[supervision]
probe_interval = 0.1
shutdown_timeout = 1.0

[tools]
allowed = ["palyra.echo"]
sensitive = ["palyra.echo"]

[runs]
approval_timeout_ms = 30000
"""
DEADLINE = 15.0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Palyrad]:
    root: Path = tmp_path_factory.mktemp("openai-client")
    config = root / "palyra.toml"
    config.write_text(CONFIG)
    with Palyrad(root / "state", "--config", str(config)) as served:
        yield served
        assert served.terminate() == 0


@pytest.fixture
def client(daemon: Palyrad) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=daemon.token, max_retries=0,
                       timeout=DEADLINE) as c:
        yield c


def test_models_and_a_chat_completion(client: openai.OpenAI):
    assert [m.id for m in client.models.list()] == ["deterministic"]
    completion = client.chat.completions.create(
        model="deterministic", temperature=0, user="user:sdk",
        messages=[{"role": "system", "content": "be terse"},
                  {"role": "user", "content": "hello from the sdk"}])
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "hello from the sdk"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 4


def test_a_streamed_chat_completion(client: openai.OpenAI):
    stream = client.chat.completions.create(
        model="deterministic", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "one two three four"}])
    chunks = list(stream)
    assert {c.id for c in chunks} == {chunks[0].id}
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 4
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_sdk_errors_map_to_its_exception_classes(daemon: Palyrad, client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-nothing",
                                       messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["code"] == "not_found"  # the SDK unwraps {"error": ...}
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="deterministic", messages=[])
    with (openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="wrong", max_retries=0) as bad,
          pytest.raises(openai.AuthenticationError)):
        bad.models.list()


def test_a_tool_call_waits_for_approval_through_the_admin_api(daemon: Palyrad):
    with daemon.client(timeout=DEADLINE) as http:
        accepted = http.post("/admin/v1/runs", json={
            "text": 'please echo\n@tool palyra.echo {"text": "hi"}', "session_key": "sdk-tools"})
        assert accepted.status_code == 202, accepted.text
        run_id = accepted.json()["run_id"]

        deadline = time.monotonic() + DEADLINE
        pending: list[dict] = []
        while not pending:
            assert time.monotonic() < deadline, "no approval was requested"
            reply = http.get("/admin/v1/approvals", params={"pending": "true", "run_id": run_id})
            assert reply.status_code == 200, reply.text
            pending = reply.json()["approvals"]
            time.sleep(0.02)
        [approval] = pending
        assert http.get(f"/admin/v1/runs/{run_id}").json()["state"] == "in_progress"

        decided = http.post(f"/admin/v1/approvals/{approval['approval_id']}/decision",
                            json={"approved": True, "reason": "looks fine"})
        assert decided.status_code == 200, decided.text
        assert decided.json()["decision"] == "allow"

        run = {}
        while run.get("state") not in ("done", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"the run did not finish: {run}"
            run = http.get(f"/admin/v1/runs/{run_id}").json()
            time.sleep(0.02)
        assert run["state"] == "done", run
        assert "tool palyra.echo:" in run["reply_text"] and "hi" in run["reply_text"]
        tape = http.get(f"/admin/v1/runs/{run_id}/tape", params={"limit": "1000"}).json()
        kinds = [(e["event_type"], e["payload"].get("kind")) for e in tape["events"]]
        assert ("tool_decision", "allow") in kinds
        assert not http.get("/admin/v1/approvals", params={"pending": "true"}).json()["approvals"]


def test_the_sdk_with_an_api_token_runs_as_the_tokens_principal(daemon: Palyrad):
    with daemon.client(timeout=DEADLINE) as http:
        made = http.post("/admin/v1/api-tokens", json={
            "name": "sdk", "scopes": ["compat.*"], "principal": "team:sdk"})
        assert made.status_code == 201, made.text
        token, token_id = made.json()["token"], made.json()["token_id"]
        with openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=token, max_retries=0,
                           timeout=DEADLINE) as sdk:
            assert [m.id for m in sdk.models.list()] == ["deterministic"]
            raw = sdk.chat.completions.with_raw_response.create(
                model="deterministic", user="user:someone-else",
                messages=[{"role": "user", "content": "via an api token"}])
            assert raw.parse().choices[0].message.content == "via an api token"
            run = http.get(f"/admin/v1/runs/{raw.headers['X-Palyra-Run-Id']}").json()
            assert run["identity"]["principal"] == "team:sdk"
            stream = sdk.chat.completions.create(
                model="deterministic", stream=True,
                messages=[{"role": "user", "content": "streamed with a token"}])
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) \
                == "streamed with a token"
            assert http.post(f"/admin/v1/api-tokens/{token_id}/revoke").status_code == 200
            with pytest.raises(openai.AuthenticationError) as revoked:
                sdk.models.list()
            assert revoked.value.body["code"] == "invalid_api_token"
