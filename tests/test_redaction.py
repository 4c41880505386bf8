"""Tests for palyra.redaction: payload redaction (§2.4 first list), diagnostics redaction
(second list) and the support-bundle leak check."""

from __future__ import annotations

import copy
import string
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from palyra.redaction import (
    MAX_DEPTH,
    REDACTED,
    contains_secret,
    redact_diagnostics,
    redact_message,
    redact_url,
    sanitize_payload,
    sanitize_value,
)


def sanitize(obj: Any, **kwargs: Any) -> tuple[Any, bool]:
    """Sanitise a Python value through the text path and parse the result back."""
    text, redacted = sanitize_payload(orjson.dumps(obj), **kwargs)
    return orjson.loads(text), redacted


PAYLOAD_MARKERS = [
    "secret",
    "token",
    "password",
    "passwd",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "credential",
    "private_key",
    "proof",
    "signature",
]


def test_redacted_marker_is_upstream_placeholder() -> None:
    assert REDACTED == "<redacted>"


# --- sensitive keys -------------------------------------------------------------------


@pytest.mark.parametrize("marker", PAYLOAD_MARKERS)
@pytest.mark.parametrize("shape", ["{}", "{}_value", "x_{}", "X-{}-Header", "UPPER_{}"])
def test_every_sensitive_key_family_is_redacted_in_any_spelling(marker: str, shape: str) -> None:
    key = shape.format(marker)
    if shape.startswith("UPPER"):
        key = key.upper()
    out, redacted = sanitize({key: "hunter2-value", "safe": "ok"})
    assert out == {key: REDACTED, "safe": "ok"}
    assert redacted is True


@pytest.mark.parametrize(
    "key", ["x-api-key", "privateKey", "apiKey", "Set-Cookie", "clientSecret", "refreshToken"]
)
def test_hyphenated_and_camel_case_keys_are_redacted(key: str) -> None:
    out, _ = sanitize({key: "v"})
    assert out == {key: REDACTED}


@pytest.mark.parametrize(
    "value", ["s3cret", 123456, 1.5, True, None, ["a", "b"], {"nested": "object"}, []]
)
def test_sensitive_key_redacts_value_whatever_its_type(value: Any) -> None:
    out, redacted = sanitize({"password": value})
    assert out == {"password": REDACTED}
    assert redacted is True


@pytest.mark.parametrize(
    "key", ["pin", "PIN", "pin_code", "pinCode", "PinCode", "userPin", "user_pin", "pincode"]
)
def test_pin_word_keys_are_redacted(key: str) -> None:
    out, redacted = sanitize({key: "1234"})
    assert out == {key: REDACTED}
    assert redacted


@pytest.mark.parametrize("key", ["spinner", "pinned", "is_pinned", "ping", "opinion", "pins"])
def test_keys_merely_containing_pin_are_kept(key: str) -> None:
    out, redacted = sanitize({key: "1234"})
    assert out == {key: "1234"}
    assert not redacted


def test_nested_objects_are_walked() -> None:
    payload = {"a": {"b": {"c": {"password": "p", "keep": 1}}}, "d": "ok"}
    out, redacted = sanitize(payload)
    assert out == {"a": {"b": {"c": {"password": REDACTED, "keep": 1}}}, "d": "ok"}
    assert redacted


def test_list_under_sensitive_key_is_redacted_whole() -> None:
    out, _ = sanitize({"api_keys": ["k1", "k2"], "cookies": [{"name": "sid"}]})
    assert out == {"api_keys": REDACTED, "cookies": REDACTED}


def test_nested_arrays_are_walked_item_by_item() -> None:
    payload = {"items": [[{"token": "t", "n": 1}], ["plain", {"deep": [{"secret": "s"}]}]]}
    out, redacted = sanitize(payload)
    assert out == {
        "items": [[{"token": REDACTED, "n": 1}], ["plain", {"deep": [{"secret": REDACTED}]}]]
    }
    assert redacted


def test_top_level_array_payload_is_walked() -> None:
    out, redacted = sanitize([{"password": "p"}, "ok", 3])
    assert out == [{"password": REDACTED}, "ok", 3]
    assert redacted


# --- string values --------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "Bearer eyJhbGciOi",
        "authorization was BEARER abc",
        "sk-proj-abcdef",
        "SK-UPPER",
        "https://h/cb?api_key=abc",
        "db secret=shh",
        "use token=abc",
        "refresh_token rotated",
        "oauth_refresh_token present",
        "Set-Cookie: sid=1",
        "Cookie: sid=1",
    ],
)
def test_secret_looking_string_values_are_redacted(value: str) -> None:
    out, redacted = sanitize({"note": value})
    assert out == {"note": REDACTED}
    assert redacted


@pytest.mark.parametrize(
    "value", ["token bucket refilled", "skeleton key", "the cookie jar", "desk-lamp", "bearer"]
)
def test_ordinary_strings_are_kept(value: str) -> None:
    out, redacted = sanitize({"note": value})
    assert out == {"note": value}
    assert not redacted


def test_embedded_json_object_with_sensitive_key_is_reserialised_redacted() -> None:
    inner = '{"password": "hunter2", "user": "ada"}'
    text, redacted = sanitize_payload(orjson.dumps({"input_json": inner}))
    assert orjson.loads(text) == {"input_json": '{"password":"<redacted>","user":"ada"}'}
    assert "hunter2" not in text
    assert redacted


def test_embedded_json_array_is_walked() -> None:
    inner = '[{"api_key": "k"}, "x"]'
    out, redacted = sanitize({"args": inner})
    assert orjson.loads(out["args"]) == [{"api_key": REDACTED}, "x"]
    assert redacted


def test_embedded_json_nested_twice_is_walked() -> None:
    innermost = orjson.dumps({"secret": "deep"}).decode()
    middle = orjson.dumps({"blob": innermost}).decode()
    out, _ = sanitize({"outer": middle})
    assert "deep" not in orjson.dumps(out).decode()


def test_clean_embedded_json_is_left_verbatim() -> None:
    inner = '{ "user" : "ada",  "n": 1 }'
    out, redacted = sanitize({"input_json": inner})
    assert out == {"input_json": inner}
    assert not redacted


def test_string_that_only_looks_like_json_is_treated_as_text() -> None:
    out, redacted = sanitize({"a": "{not json", "b": "[token=abc"})
    assert out == {"a": "{not json", "b": REDACTED}
    assert redacted


# --- non-JSON, binary, empty ----------------------------------------------------------


def test_non_utf8_bytes_are_replaced_by_stub() -> None:
    raw = b"\xff\xfe\x00binary"
    text, redacted = sanitize_payload(raw)
    assert text == '{"redacted":true,"reason":"binary_or_non_utf8_payload","bytes":9}'
    assert redacted


def test_str_with_lone_surrogate_is_treated_as_non_utf8() -> None:
    text, redacted = sanitize_payload("abc\ud800")
    assert orjson.loads(text)["reason"] == "binary_or_non_utf8_payload"
    assert redacted


@pytest.mark.parametrize("payload", [b"api_token=SECRET", "api_token=SECRET", b"{oops", b" "])
def test_non_json_text_is_replaced_by_stub(payload: bytes | str) -> None:
    text, redacted = sanitize_payload(payload)
    size = len(payload.encode() if isinstance(payload, str) else payload)
    assert orjson.loads(text) == {"redacted": True, "reason": "non_json_payload", "bytes": size}
    assert "SECRET" not in text
    assert redacted


def test_non_json_stub_counts_utf8_bytes_not_characters() -> None:
    text, _ = sanitize_payload("héllo wörld")
    assert orjson.loads(text)["bytes"] == len("héllo wörld".encode())


@pytest.mark.parametrize("payload", [None, b"", "", bytearray()])
def test_empty_payload_is_empty_object(payload: Any) -> None:
    assert sanitize_payload(payload) == ("{}", False)


def test_clean_payload_is_compact_json_and_not_flagged() -> None:
    text, redacted = sanitize_payload(b'{ "kind" : "first", "n" : [1, 2.5, null, true] }')
    assert text == '{"kind":"first","n":[1,2.5,null,true]}'
    assert redacted is False


@pytest.mark.parametrize(
    ("payload", "expected"),
    [(b'"hello"', '"hello"'), (b"42", "42"), (b'"Bearer x"', '"<redacted>"'), (b"[]", "[]")],
)
def test_scalar_and_empty_container_payloads(payload: bytes, expected: str) -> None:
    assert sanitize_payload(payload)[0] == expected


def test_dict_input_matches_bytes_input() -> None:
    payload = {"usage": {"total_tokens": 3}, "auth": {"cookie": "c"}, "text": "hi"}
    assert sanitize_payload(payload) == sanitize_payload(orjson.dumps(payload))


def test_non_string_keys_are_serialised_as_strings() -> None:
    assert sanitize_payload({1: "a", "token": "t"}) == ('{"1":"a","token":"<redacted>"}', True)


def test_unencodable_python_object_raises_type_error() -> None:
    with pytest.raises(TypeError):
        sanitize_payload({"n": 2**70})


def test_nesting_deeper_than_bound_is_redacted_not_crashing() -> None:
    deep: Any = "leaf"
    for _ in range(MAX_DEPTH + 50):
        deep = [deep]
    text, redacted = sanitize_payload(deep)
    assert redacted
    assert "leaf" not in text
    assert sanitize_payload(text)[0] == text


# --- token counts and keep_keys -------------------------------------------------------


def test_openai_usage_token_counts_are_kept() -> None:
    usage = {
        "prompt_tokens": 12,
        "completion_tokens": 30,
        "total_tokens": 42,
        "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 8},
    }
    out, redacted = sanitize({"usage": usage, "max_tokens": 512})
    assert out == {"usage": usage, "max_tokens": 512}
    assert not redacted


@pytest.mark.parametrize(
    "key",
    [
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "max_tokens",
        "tokens",
        "token_count",
        "input_tokens",
        "output_tokens",
        "budget_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "cache_creation_input_tokens",
        "Max_Tokens",
        "promptTokenCount",
    ],
)
@pytest.mark.parametrize("value", [0, 1024, 2.5, None])
def test_numeric_token_count_fields_are_kept(key: str, value: Any) -> None:
    out, redacted = sanitize({key: value})
    assert out == {key: value}
    assert not redacted


@pytest.mark.parametrize("value", ["sk-abc", "1024", [1, 2], {"n": 1}, True])
def test_token_count_key_with_non_numeric_value_is_redacted(value: Any) -> None:
    out, redacted = sanitize({"max_tokens": value})
    assert out == {"max_tokens": REDACTED}
    assert redacted


@pytest.mark.parametrize("key", ["secret_tokens", "api_key_tokens", "access_token", "token"])
def test_counter_shaped_keys_sensitive_for_another_reason_are_redacted(key: str) -> None:
    out, _ = sanitize({key: 5})
    assert out == {key: REDACTED}


def test_tokens_details_object_keeps_only_numbers() -> None:
    out, redacted = sanitize({"prompt_tokens_details": {"cached_tokens": 4, "note": "hunter2"}})
    assert out == {"prompt_tokens_details": {"cached_tokens": 4, "note": REDACTED}}
    assert redacted


def test_model_token_text_is_redacted_by_default_like_upstream() -> None:
    out, redacted = sanitize({"is_final": False, "token": "Hello"})
    assert out == {"is_final": False, "token": REDACTED}
    assert redacted


def test_keep_keys_keeps_model_token_text() -> None:
    text, redacted = sanitize_payload(
        b'{"is_final":false,"token":"Hello"}', keep_keys=frozenset({"token"})
    )
    assert text == '{"is_final":false,"token":"Hello"}'
    assert not redacted


def test_keep_keys_applies_to_top_level_keys_only() -> None:
    out, _ = sanitize({"token": "Hi", "auth": {"token": "t"}}, keep_keys=frozenset({"token"}))
    assert out == {"token": "Hi", "auth": {"token": REDACTED}}


def test_keep_keys_value_is_still_checked_for_secrets() -> None:
    out, redacted = sanitize({"token": "Bearer abc"}, keep_keys=frozenset({"token"}))
    assert out == {"token": REDACTED}
    assert redacted


def test_keep_keys_is_exact_match() -> None:
    out, _ = sanitize({"Token": "x"}, keep_keys=frozenset({"token"}))
    assert out == {"Token": REDACTED}


def test_sanitize_value_returns_copy_and_leaves_input_alone() -> None:
    payload = {"password": "p", "items": [{"token": "t"}], "ok": "yes"}
    before = copy.deepcopy(payload)
    out, redacted = sanitize_value(payload)
    assert payload == before
    assert out == {"password": REDACTED, "items": [{"token": REDACTED}], "ok": "yes"}
    assert redacted


def test_sanitize_value_passes_keep_keys() -> None:
    assert sanitize_value({"token": "Hi"}, frozenset({"token"})) == ({"token": "Hi"}, False)


def test_sanitize_value_treats_tuples_as_lists() -> None:
    assert sanitize_value(({"secret": 1}, "a")) == ([{"secret": REDACTED}, "a"], True)


# --- diagnostics ----------------------------------------------------------------------

DIAGNOSTIC_MARKERS = [
    "access_token",
    "api_key",
    "apikey",
    "authorization",
    "bearer",
    "client_secret",
    "cookie",
    "credential",
    "password",
    "private_key",
    "refresh_token",
    "secret",
    "session",
    "set_cookie",
    "signature",
    "sig",
    "token",
    "vault_ref",
    "x_amz_credential",
    "x_amz_security_token",
    "x_amz_signature",
    "x_goog_credential",
    "x_goog_signature",
]


@pytest.mark.parametrize("marker", DIAGNOSTIC_MARKERS)
def test_every_diagnostic_key_family_is_redacted(marker: str) -> None:
    hyphenated = marker.replace("_", "-").title()
    out = redact_diagnostics({marker: "v", f"my_{marker}": 3, hyphenated: ["v"], "ok": "v"})
    assert out == {marker: REDACTED, f"my_{marker}": REDACTED, hyphenated: REDACTED, "ok": "v"}


def test_diagnostics_redacts_session_and_camel_case_vault_ref() -> None:
    out = redact_diagnostics({"session_id": "01ARZ", "vaultRef": "vault://x", "status": "ok"})
    assert out == {"session_id": REDACTED, "vaultRef": REDACTED, "status": "ok"}


def test_diagnostics_keeps_numeric_token_counters() -> None:
    doc = {"usage": {"prompt_tokens": 3, "total_tokens": None}, "token_count": 9}
    assert redact_diagnostics(doc) == doc


def test_diagnostics_redacts_counter_shaped_session_keys() -> None:
    assert redact_diagnostics({"session_tokens": 3}) == {"session_tokens": REDACTED}


def test_diagnostics_returns_a_copy() -> None:
    doc = {"token": "t", "nested": {"endpoint": "https://u:p@h"}}
    before = copy.deepcopy(doc)
    redact_diagnostics(doc)
    assert doc == before


def test_redact_url_replaces_userinfo() -> None:
    assert (
        redact_url("https://user:pa@ss@db.example:5432/x") == "https://<redacted>@db.example:5432/x"
    )
    assert (
        redact_url("https://ghp_abc@github.com/o/r.git") == "https://<redacted>@github.com/o/r.git"
    )


def test_redact_url_redacts_sensitive_query_and_keeps_the_rest() -> None:
    assert (
        redact_url("https://api.example/v1/items?api_key=abc123&page=2")
        == "https://api.example/v1/items?api_key=<redacted>&page=2"
    )


def test_redact_url_redacts_cloud_signing_params() -> None:
    url = (
        "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F&X-Amz-Signature=ff&"
        "X-Amz-Expires=60&sig=abc"
    )
    assert redact_url(url) == (
        "https://b.s3.amazonaws.com/k?X-Amz-Credential=<redacted>&X-Amz-Signature=<redacted>&"
        "X-Amz-Expires=60&sig=<redacted>"
    )


def test_redact_url_redacts_fragment_params() -> None:
    assert (
        redact_url("https://app/cb#access_token=abc&state=xyz")
        == "https://app/cb#access_token=<redacted>&state=xyz"
    )


def test_redact_url_decodes_param_names_before_checking() -> None:
    assert redact_url("https://h/?access%5Ftoken=abc") == "https://h/?access%5Ftoken=<redacted>"


def test_redact_url_keeps_empty_values_and_plain_text() -> None:
    assert redact_url("https://h/?token=&page=1") == "https://h/?token=&page=1"
    assert redact_url("us-east-1") == "us-east-1"
    assert redact_url("https://h/#section-2") == "https://h/#section-2"


def test_redact_message_redacts_sensitive_assignments() -> None:
    msg = "provider failed: authorization=topsecret token=abc code=429"
    assert (
        redact_message(msg) == "provider failed: authorization=<redacted> token=<redacted> code=429"
    )


def test_redact_message_redacts_bearer_credentials() -> None:
    assert redact_message("sent Bearer eyJ.abc.def, got 401") == "sent Bearer <redacted>, got 401"
    assert redact_message("Authorization: Bearer eyJ.abc") == "Authorization: Bearer <redacted>"


def test_redact_message_keeps_auth_scheme_and_redacts_credential() -> None:
    assert redact_message("Authorization: Basic dXNlcjpw") == "Authorization: Basic <redacted>"


def test_redact_message_redacts_urls_inside_text() -> None:
    msg = "GET https://u:p@h.io/x?sig=AAA&page=2. failed"
    assert redact_message(msg) == "GET https://<redacted>@h.io/x?sig=<redacted>&page=2. failed"


def test_redact_message_handles_quoted_and_json_values() -> None:
    assert (
        redact_message('body {"password": "hunter 2", "ok": 1}')
        == 'body {"password": "<redacted>", "ok": 1}'
    )
    assert redact_message("x-api-key = 'abc def'") == "x-api-key = '<redacted>'"
    assert (
        redact_message('raw {\\"client_secret\\": \\"zz top\\"}')
        == 'raw {\\"client_secret\\": \\"<redacted>\\"}'
    )


def test_redact_message_non_sensitive_key_does_not_hide_next_assignment() -> None:
    assert redact_message("error: token=abc") == "error: token=<redacted>"


def test_redact_message_cookie_header_loses_whole_line() -> None:
    assert redact_message("Cookie: sid=1; other=2\nnext") == "Cookie: <redacted>\nnext"


def test_redact_message_keeps_numeric_token_counts() -> None:
    assert redact_message("max_tokens=4096 token=5") == "max_tokens=4096 token=<redacted>"


def test_redact_message_leaves_ordinary_text_alone() -> None:
    msg = "rate limited at 12:30, retry_after=5 (mode: fast)"
    assert redact_message(msg) == msg


def test_redact_diagnostics_applies_url_and_message_redaction_by_key() -> None:
    doc = {
        "endpoint": "https://u:p@h/v1?api_key=k&page=2",
        "redirect_uri": "https://app/cb#access_token=t",
        "last_error": "upstream said token=abc",
        "reason": "Bearer xyz rejected",
        "detail_text": "password: hunter2",
        "status": "degraded",
    }
    assert redact_diagnostics(doc) == {
        "endpoint": "https://<redacted>@h/v1?api_key=<redacted>&page=2",
        "redirect_uri": "https://app/cb#access_token=<redacted>",
        "last_error": "upstream said token=<redacted>",
        "reason": "Bearer <redacted> rejected",
        "detail_text": "password: <redacted>",
        "status": "degraded",
    }


def test_redact_diagnostics_lists_and_nested_objects_inherit_key_context() -> None:
    doc = {
        "endpoints": ["https://h?api_key=k", "https://u:p@h"],
        "errors": [{"text": "token=abc", "at": 1}],
    }
    assert redact_diagnostics(doc) == {
        "endpoints": ["https://h?api_key=<redacted>", "https://<redacted>@h"],
        "errors": [{"text": "token=<redacted>", "at": 1}],
    }


def test_redact_diagnostics_redacts_urls_under_any_key() -> None:
    out = redact_diagnostics({"base": {"v": "see https://u:p@h/?sig=s"}})
    assert out == {"base": {"v": "see https://<redacted>@h/?sig=<redacted>"}}


def test_redact_diagnostics_passes_scalars_through() -> None:
    doc = {"n": 1, "f": 1.5, "b": True, "none": None, "s": "text"}
    assert redact_diagnostics(doc) == doc


# --- contains_secret ------------------------------------------------------------------


def test_contains_secret_reports_known_values_present() -> None:
    text = '{"config": "key is abcdefgh12", "other": "zzzzzzzz"}'
    assert contains_secret(text, ["abcdefgh12", "notthere99", "zzzzzzzz"]) == [
        "abcdefgh12",
        "zzzzzzzz",
    ]


def test_contains_secret_ignores_short_and_empty_values() -> None:
    assert contains_secret("pin 1234 and admin", ["1234", "admin", "", "1234567"]) == []


def test_contains_secret_finds_json_escaped_form_and_deduplicates() -> None:
    secret = 'pa"ss\\word!'
    text = orjson.dumps({"leak": secret}).decode()
    assert contains_secret(text, [secret, secret]) == [secret]


def test_sanitized_payload_passes_contains_secret() -> None:
    secret = "ghp_0123456789abcdef"
    text, _ = sanitize_payload({"github_token": secret, "note": f"Bearer {secret}"})
    assert contains_secret(text, [secret]) == []


# --- properties -----------------------------------------------------------------------

# Ordinary content never contains upper-case letters, so the planted secret (which does)
# cannot occur in the output by coincidence.
_TEXT_ALPHABET = string.ascii_lowercase + string.digits + " _-=:{}[]\"'"
_json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=_TEXT_ALPHABET, max_size=12)
)
_json_keys = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=10)
_json_trees = st.recursive(
    _json_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_json_keys, children, max_size=4)
    ),
    max_leaves=20,
)
_secrets = st.text(alphabet=string.ascii_uppercase + string.digits, min_size=8, max_size=16).map(
    lambda s: "ZQX" + s
)


@st.composite
def _sensitive_keys(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return draw(st.sampled_from(["pin", "PIN", "pin_code", "userPin", "pinCode", "pincode"]))
    marker = draw(st.sampled_from(PAYLOAD_MARKERS))
    prefix = draw(st.sampled_from(["", "x_", "user", "X-"]))
    suffix = draw(st.sampled_from(["", "_value", "s", "-Header"]))
    key = prefix + marker + suffix
    return draw(st.sampled_from([key, key.upper(), key.title()]))


def _planted_value(draw: st.DrawFn, key: str, secret: str) -> tuple[str, Any]:
    """A (key, value) pair hiding ``secret`` in one of the ways redaction must catch."""
    how = draw(st.sampled_from(["key", "key_list", "key_object", "embedded", "looks_secret"]))
    if how == "key":
        return key, secret
    if how == "key_list":
        return key, [secret, {"inner": secret}]
    if how == "key_object":
        return key, {"inner": secret}
    if how == "embedded":
        return "blob", orjson.dumps({"wrap": [{key: secret}]}).decode()
    prefix = draw(st.sampled_from(["Bearer ", "sk-", "token=", "api_key=", "Cookie: "]))
    return "note", prefix + secret


def _plant(draw: st.DrawFn, node: Any, key: str, value: Any) -> Any:
    """Return a copy of ``node`` with ``{key: value}`` planted at a random depth."""
    if isinstance(node, dict) and node and draw(st.booleans()):
        child = draw(st.sampled_from(sorted(node)))
        return {**node, child: _plant(draw, node[child], key, value)}
    if isinstance(node, list) and node and draw(st.booleans()):
        index = draw(st.integers(min_value=0, max_value=len(node) - 1))
        return [*node[:index], _plant(draw, node[index], key, value), *node[index + 1 :]]
    if isinstance(node, dict):
        return {**node, key: value}
    return [node, {key: value}]


@st.composite
def _planted_payloads(draw: st.DrawFn) -> tuple[Any, str]:
    secret = draw(_secrets)
    key, value = _planted_value(draw, draw(_sensitive_keys()), secret)
    return _plant(draw, draw(_json_trees), key, value), secret


_PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@_PROPERTY_SETTINGS
@given(_planted_payloads())
def test_property_planted_secret_never_survives_and_sanitising_is_idempotent(
    planted: tuple[Any, str],
) -> None:
    payload, secret = planted
    once, redacted = sanitize_payload(orjson.dumps(payload))
    assert secret not in once
    assert redacted
    twice, _ = sanitize_payload(once)
    assert twice == once
    # The dict path and the bytes path are the same redactor.
    assert sanitize_payload(payload)[0] == once


@_PROPERTY_SETTINGS
@given(_json_trees)
def test_property_sanitising_arbitrary_json_is_idempotent(tree: Any) -> None:
    once, _ = sanitize_payload(orjson.dumps(tree))
    assert sanitize_payload(once)[0] == once


@_PROPERTY_SETTINGS
@given(
    _json_trees,
    _secrets,
    st.sampled_from(["token", "client_secret", "X-Amz-Signature", "password", "sig"]),
)
def test_property_diagnostics_hide_secret_in_keys_and_urls(
    tree: Any, secret: str, key: str
) -> None:
    doc = {
        "tree": tree,
        key: secret,
        "endpoint": f"https://user:{secret}@h/p?{key}={secret}&page=2",
        "last_error": f"failed with {key}={secret} and Bearer {secret}",
    }
    once = redact_diagnostics(doc)
    text = orjson.dumps(once).decode()
    assert secret not in text
    assert "page=2" in text
    assert redact_diagnostics(once) == once


def test_palyra_api_tokens_are_redacted_in_payloads_and_diagnostics():
    from palyra.access.tokens import generate

    token = generate()
    payload, redacted = sanitize_payload({"note": f"use {token} for the bot", "count": 3})
    assert redacted and token not in payload
    assert orjson.loads(payload) == {"note": REDACTED, "count": 3}
    assert sanitize_payload(orjson.loads(payload))[0] == payload  # idempotent
    doc = redact_diagnostics({"status": f"auth with {token}", "last_error": f"bad {token}!"})
    assert doc == {"status": f"auth with {REDACTED}", "last_error": f"bad {REDACTED}!"}
    assert redact_message(f"Authorization header held {token}") == \
        f"Authorization header held {REDACTED}"
    # our own identifiers are not tokens
    for text in ("palyra_console_session", "palyra_http_requests_total_by_route_and_status"):
        assert sanitize_payload({"name": text}) == (orjson.dumps({"name": text}).decode(), False)
