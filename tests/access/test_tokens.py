"""The API token core with plain values, and ``rt.api_tokens`` on a real runtime with a
clock the test moves (last-use writes, expiry)."""

from __future__ import annotations

import dataclasses

import pytest

import palyra
from palyra.access import tokens as t
from palyra.access.store import TokenQueries
from palyra.clock import ManualClock
from tests.conftest import FAST

NOW = 1_700_000_000_000


def record(**changes) -> t.ApiToken:
    base = t.ApiToken("01HF7YAT00QPM1080C0N7ZSEMM", "ci", "palyra_abcde", (t.CHAT_CREATE,),
                      "api:ci", 120, NOW, _sha256=t.digest("palyra_x"))
    return dataclasses.replace(base, **changes)


def test_tokens_are_palyra_base64url_of_32_bytes_and_stored_as_sha256():
    token = t.generate()
    assert t.well_formed(token) and len(token) == 50 and token != t.generate()
    assert len(t.digest(token)) == 64 and t.display_prefix(token) == token[:12]


def test_scopes_expand_groups_in_catalogue_order_and_reject_unknowns():
    assert t.normalize_scopes(["chat.create", "models.read", "chat.create"]) == t.SCOPES
    assert t.normalize_scopes(["compat.*"]) == t.SCOPES
    for bad in ([], ["admin"], [None]):
        with pytest.raises(palyra.InvalidInput):
            t.normalize_scopes(bad)


@pytest.mark.parametrize("changes, presented, reason", [
    ({}, t.digest("palyra_y"), "unknown"),
    ({"revoked_at_unix_ms": NOW}, t.digest("palyra_x"), "revoked"),
    ({"expires_at_unix_ms": NOW}, t.digest("palyra_x"), "expired"),
])
def test_unknown_revoked_and_expired_are_one_error(changes, presented, reason):
    with pytest.raises(palyra.InvalidApiToken) as caught:
        t.authorize(record(**changes), presented, None, NOW)
    assert caught.value.code == "invalid_api_token" and caught.value.reason == reason
    assert caught.value.message == "invalid, revoked or expired API token"


def test_missing_scope_names_the_scope():
    assert t.authorize(record(), t.digest("palyra_x"), t.CHAT_CREATE, NOW).name == "ci"
    with pytest.raises(palyra.MissingScope) as caught:
        t.authorize(record(), t.digest("palyra_x"), t.MODELS_READ, NOW)
    assert caught.value.details["scope"] == "models.read"


def test_last_use_is_written_at_most_once_a_minute_and_flushed_at_stop(tmp_path):
    clock = ManualClock(NOW)
    rt = palyra.Runtime.start(tmp_path / "state", FAST, clock=clock)
    try:
        token, made = rt.api_tokens.create("ci", ["compat.*"], expires_in_s=600)

        def stored() -> int | None:
            rt.journal.append("test.barrier")  # the journal applies writes in order
            return TokenQueries(rt.services.readers.conn()).get(made.token_id).last_used_at_unix_ms

        rt.api_tokens.verify(token, t.CHAT_CREATE)
        assert stored() == NOW
        clock.advance(10)
        rt.api_tokens.verify(token)
        assert stored() == NOW  # not written again within the minute
        assert rt.api_tokens.get(made.token_id).last_used_at_unix_ms == NOW + 10_000
        clock.advance(60)
        rt.api_tokens.verify(token)
        assert stored() == NOW + 70_000
        clock.advance(5)
        rt.api_tokens.verify(token)
    finally:
        rt.stop()
    with palyra.Runtime.start(tmp_path / "state", FAST, clock=clock) as again:
        assert again.api_tokens.get(made.token_id).last_used_at_unix_ms == NOW + 75_000
        clock.advance(600)
        with pytest.raises(palyra.InvalidApiToken):
            again.api_tokens.verify(token)
