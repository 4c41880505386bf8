"""Support-bundle jobs over HTTP: built in the background from the live runtime."""

from __future__ import annotations

import stat
import tarfile
from pathlib import Path

import orjson
import pytest
import trio

from palyra.ids import new_ulid
from palyra.support_bundle import ARCHIVE_ROOT, MANIFEST
from tests.http.conftest import STEP, serving

pytestmark = pytest.mark.trio

JOBS = "/console/v1/support-bundle/jobs"
API_KEY = "sk-live-PLANTEDhttpProviderKey0123456789"
PROVIDER = {"provider": {"kind": "openai_compatible", "api_key": API_KEY,
                         "base_url": "http://127.0.0.1:9/v1", "allow_private_base_url": True}}


async def finished(api, job_id: str) -> dict:
    with trio.fail_after(STEP):
        await api.surface.bundle_jobs.get(job_id).done.wait()
    reply = await api.get(f"{JOBS}/{job_id}")
    assert reply.status == 200, reply
    return reply.json


async def test_a_job_builds_a_private_bundle_from_the_live_runtime(tmp_path):
    state = tmp_path / "state"
    async with serving(state, PROVIDER) as api:
        reply = await api.post(JOBS, {"max_bytes": 256 * 1024})
        assert reply.status == 202, reply
        job = reply.json
        assert job["state"] in ("queued", "running") and job["output_path"] is None
        assert reply.headers["Location"] == f"{JOBS}/{job['job_id']}"
        done = await finished(api, job["job_id"])
        token = api.token
    assert done["state"] == "succeeded", done
    assert done["started_at_unix_ms"] <= done["completed_at_unix_ms"] and done["error"] is None
    path = state / "support-bundles" / f"support-bundle-{job['job_id']}.tar.gz"
    assert done["output_path"] == str(path) and done["size_bytes"] == path.stat().st_size
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with tarfile.open(path, "r:gz") as tar:
        members = {m.name.removeprefix(ARCHIVE_ROOT + "/"): tar.extractfile(m).read()
                   for m in tar.getmembers()}
    assert MANIFEST in members and "diagnostics.json" in members
    for data in members.values():
        assert API_KEY.encode() not in data and token.encode() not in data
    assert orjson.loads(members["summary.json"])["source"] == "runtime"
    diagnostics = orjson.loads(members["diagnostics.json"])
    assert {"journal", "gateway"} <= {a["name"] for a in diagnostics["supervision"]["actors"]}


async def test_jobs_are_listed_newest_first_and_trimmed_to_retain_jobs(api):
    ids, paths = [], []
    for _ in range(3):
        reply = await api.post(JOBS, {"retain_jobs": 2})
        assert reply.status == 202, reply
        ids.append(reply.json["job_id"])
        done = await finished(api, ids[-1])
        assert done["state"] == "succeeded"
        paths.append(done["output_path"])
    listed = (await api.get(JOBS)).json["jobs"]
    assert [j["job_id"] for j in listed] == ids[:0:-1]
    gone = await api.get(f"{JOBS}/{ids[0]}")
    assert gone.status == 404 and gone.error["code"] == "not_found"
    # a forgotten job's file goes with it; the retained ones stay
    assert [Path(p).exists() for p in paths] == [False, True, True]
    assert (await api.get(f"{JOBS}/{new_ulid()}")).status == 404


async def test_a_bundle_holding_the_admin_token_fails_the_job_and_writes_nothing(api):
    # The token under a neutral key: redaction cannot know it, the secret scan does.
    api.rt.journal.append("operator.note", {"note": api.token})
    reply = await api.post(JOBS, {})
    done = await finished(api, reply.json["job_id"])
    assert done["state"] == "failed" and done["output_path"] is None
    assert "journal.json" in done["error"] and api.token not in done["error"]
    folder = api.rt.state_dir / "support-bundles"
    assert list(folder.iterdir()) == []


async def test_bad_bodies_are_400_naming_the_field(api):
    cases = [
        ({"max_bytes": 100}, "max_bytes"),
        ({"max_bytes": "big"}, "max_bytes"),
        ({"max_bytes": 10**9}, "max_bytes"),
        ({"retain_jobs": 0}, "retain_jobs"),
        ({"retain_jobs": 1000}, "retain_jobs"),
        ({"colour": "red"}, "colour"),
    ]
    for body, field in cases:
        reply = await api.post(JOBS, body)
        assert reply.status == 400, (body, reply)
        assert reply.error["details"]["field"] == field
    reply = await api.get(f"{JOBS}/not-a-ulid")
    assert reply.status == 400 and reply.error["details"]["field"] == "job_id"
    assert (await api.get(JOBS)).json == {"jobs": []}
