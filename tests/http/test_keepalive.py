"""Keep-alive connections survive answers given before the request body was read.

A 401, 413 or 429 from ``before_request`` answers without reading the body. Without
``CompleteRequestCycle`` about one such answer in seven left its connection unable to
serve the next request (hypercorn's close was cancelled half way by quart-trio); a
client reusing the connection then hung until its own timeout.
"""

from __future__ import annotations

import httpx
import pytest

from palyra.ids import new_ulid
from surfaces.http import create_app
from tests.http.conftest import GENEROUS, merged
from tests.http.servers import ServedApp

ROUNDS = 25


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    app = create_app(state_dir=tmp_path_factory.mktemp("keepalive") / "state",
                     config=merged(None), rate_limits=GENEROUS)
    with ServedApp(app) as server:
        yield server, app.extensions["palyra"].token


def chunks(n: int, size: int = 8192):
    for _ in range(n):
        yield b"z" * size


@pytest.mark.parametrize("case", ["413-content-length", "413-chunked", "401-big-body"])
def test_the_next_request_on_the_connection_is_served(served, case):
    server, token = served
    auth = "Bearer wrong" if case.startswith("401") else f"Bearer {token}"
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=server.url, headers={"Authorization": auth},
                      timeout=5) as http:
        for _ in range(ROUNDS):
            path = f"/admin/v1/runs/{new_ulid()}/cancel"
            if case == "413-content-length":
                first = http.post(path, content=b'{"reason": "' + b"y" * 65546 + b'"}')
            elif case == "413-chunked":
                first = http.post(path, content=chunks(40))  # no Content-Length
            else:
                first = http.post(path, content=b"y" * 60_000)
            nxt = http.post(path, content=b"[]")  # must not hang (timeout 5 s)
            for reply in (first, nxt):
                statuses[reply.status_code] = statuses.get(reply.status_code, 0) + 1
                assert reply.json()["error"]["code"]
    expected = {401: 2 * ROUNDS} if case.startswith("401") else {413: ROUNDS, 400: ROUNDS}
    assert statuses == expected
