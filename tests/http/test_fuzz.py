"""Property test: no request body makes any route fail with a 5xx.

For every route in the table that takes a JSON body, Hypothesis sends generated bodies
to the real app served by hypercorn over a socket: arbitrary bytes, arbitrary JSON
values, objects with the route's own field names holding values of any type (wrong
ones, right ones, nulls), and oversized strings (over a field's max length, over the
64 KiB body cap). Every answer must be below 500, and every 4xx must be the error
envelope. Each route gets a fresh runtime so one route's accepted writes (a blocking
budget policy, say) cannot change another route's answers.

Generated text has no ``@``: the deterministic provider reads lines starting with it as
scripted directives (``@fail`` makes a run fail on purpose, which a completion reports
as 502 by design).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from palyra.ids import new_ulid
from surfaces.http import ROUTES, create_app
from surfaces.http.schema import Body, Field
from tests.http.conftest import GENEROUS, merged
from tests.http.servers import ServedApp

EXAMPLES = int(os.environ.get("PALYRA_FUZZ_EXAMPLES", "30"))
BODY_ROUTES = [r for r in ROUTES if r.body is not None]
MAX_BODY = 64 * 1024

text = st.text(st.characters(blacklist_characters="@", blacklist_categories=("Cs",)),
               max_size=40)
scalars = (st.none() | st.booleans() | st.integers() | text
           | st.floats(allow_nan=True, allow_infinity=True))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12)
oversized = st.sampled_from([300, 600, 5000, MAX_BODY + 10]).map(lambda n: "y" * n)


def plausible(field: Field) -> st.SearchStrategy[Any]:
    """Values of the field's declared type (often valid, sometimes out of range)."""
    options: list[st.SearchStrategy[Any]] = []
    if field.enum is not None:
        options.append(st.sampled_from(field.enum))
    for kind in field.type.split("|"):
        options.append({
            "string": text | st.sampled_from(["deterministic", new_ulid(), "user:ops", ""]),
            "integer": st.integers(min_value=-(2**70), max_value=2**70),
            "number": st.floats(allow_nan=False, allow_infinity=False) | st.integers(),
            "boolean": st.booleans(),
            "object": st.dictionaries(text, json_values, max_size=3),
            "array": st.lists(st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system", "assistant", "robot"]),
                 "content": text | json_values}), max_size=3) | st.lists(json_values, max_size=3),
        }[kind])
    return st.one_of(options)


def field_values(field: Field) -> st.SearchStrategy[Any]:
    return st.one_of(plausible(field), json_values, oversized)


def bodies(body: Body) -> st.SearchStrategy[bytes]:
    names = [f.name for f in body.fields]
    objects = st.fixed_dictionaries({}, optional={f.name: field_values(f) for f in body.fields})
    with_extra = st.dictionaries(st.sampled_from(names) | text, json_values, max_size=4)
    as_json = st.one_of(objects, objects, objects, with_extra, json_values).map(
        lambda value: json.dumps(value, allow_nan=True).encode())  # NaN: invalid JSON too
    return st.one_of(as_json, st.binary(max_size=64))


def concrete(path: str) -> str:
    for name in ("run_id", "approval_id", "policy_id", "token_id"):
        path = path.replace("{" + name + "}", new_ulid())
    return path


def check_envelope(response: httpx.Response) -> None:
    envelope = response.json()
    assert set(envelope) == {"error"}, envelope
    error = envelope["error"]
    assert set(error) == {"code", "message", "details"}, envelope
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    assert isinstance(error["details"], dict)


@pytest.mark.parametrize("route", BODY_ROUTES, ids=[r.name for r in BODY_ROUTES])
def test_generated_bodies_never_cause_a_server_error(route, tmp_path: Path):
    app = create_app(state_dir=tmp_path / "state", config=merged(None), rate_limits=GENEROUS)
    with ServedApp(app) as served:
        token = app.extensions["palyra"].token
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        with httpx.Client(base_url=served.url, headers=headers, timeout=15) as http:

            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(raw=bodies(route.body))
            def check(raw: bytes) -> None:
                response = http.request(route.method, concrete(route.path), content=raw)
                assert response.status_code < 500, (raw[:300], response.text[:500])
                if response.status_code >= 400:
                    check_envelope(response)

            check()
