"""The OpenAI wire format without sockets: request bodies, completions, SSE decoding,
stream accumulation, Retry-After."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from palyra.providers import Message, ProviderRequest, ToolCall, ToolSpec, Usage
from palyra.providers._openai_wire import (
    MalformedResponse,
    SSEDecoder,
    SSEEvent,
    StreamAccumulator,
    build_chat_body,
    parse_completion,
    parse_retry_after,
)

# ------------------------------------------------------------------ requests


def test_chat_body_carries_messages_tools_and_modes():
    request = ProviderRequest(
        (
            Message("system", "sys"),
            Message("user", "hi"),
            Message("assistant", "", tool_calls=(ToolCall("c1", "echo", {"a": 1}),)),
            Message("tool", '{"ok":true}', tool_call_id="c1"),
        ),
        tools=(ToolSpec("echo", "Echo text", {"type": "object", "properties": {}}),),
        json_mode=True,
        stream=True,
    )
    body = build_chat_body(request, "m")
    assert body["model"] == "m"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["response_format"] == {"type": "json_object"}
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "echo",
                "description": "Echo text",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    assistant, tool = body["messages"][2], body["messages"][3]
    assert assistant["content"] is None
    assert assistant["tool_calls"][0]["function"] == {"name": "echo", "arguments": '{"a":1}'}
    assert tool == {"role": "tool", "content": '{"ok":true}', "tool_call_id": "c1"}


def test_plain_body_has_no_optional_fields():
    body = build_chat_body(ProviderRequest((Message("user", "hi"),)), "m")
    assert set(body) == {"model", "messages", "stream"}


# ------------------------------------------------------------------ completions


def test_completion_with_text_and_usage():
    turn = parse_completion(
        {
            "choices": [
                {"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
    )
    assert (turn.text, turn.finish_reason, turn.usage) == ("hi", "stop", Usage(3, 1, 4))


def test_completion_usage_with_a_bool_token_count_is_ignored():
    usage = {"prompt_tokens": True, "completion_tokens": 1, "total_tokens": 2}
    turn = parse_completion(
        {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], "usage": usage}
    )
    assert turn.usage is None


def test_completion_total_tokens_given_as_a_bool_is_recomputed():
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": True}
    turn = parse_completion(
        {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], "usage": usage}
    )
    assert turn.usage == Usage(3, 1, 4)


def test_completion_with_tool_calls():
    turn = parse_completion(
        {
            "choices": [
                {
                    "message": {
                        "content": None,
                        "tool_calls": [
                            {"id": "x", "function": {"name": "f", "arguments": '{"k": [1]}'}}
                        ],
                    },
                    "finish_reason": "function_call",
                }
            ]
        }
    )
    assert turn.tool_calls == (ToolCall("x", "f", {"k": [1]}),)
    assert turn.finish_reason == "tool_calls"
    assert turn.text == ""
    assert turn.usage is None


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"choices": []},
        {"choices": [{"finish_reason": "stop"}]},
        {"choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}}]},
        {
            "choices": [
                {"message": {"tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}}
            ]
        },
        {"choices": [{"message": {"tool_calls": [{"function": {"arguments": "{}"}}]}}]},
    ],
)
def test_malformed_completions_are_rejected(payload):
    with pytest.raises(MalformedResponse):
        parse_completion(payload)


# ------------------------------------------------------------------ SSE


def test_sse_decoder_handles_comments_multiline_data_and_event_names():
    decoder = SSEDecoder()
    events = decoder.feed(b": keep-alive\n\nevent: error\ndata: a\ndata: b\n\ndata:c\n\n")
    assert events == [SSEEvent("a\nb", "error"), SSEEvent("c")]


def test_sse_decoder_flushes_an_unterminated_event_at_close():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: tail") == []
    assert decoder.close() == [SSEEvent("tail")]


_payloads = st.lists(
    st.text(
        alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
        max_size=12,
    ).filter(lambda s: s.strip() != ""),
    min_size=1,
    max_size=6,
)


@given(_payloads, st.sampled_from(["\n", "\r\n", "\r"]), st.data())
def test_sse_decoding_does_not_depend_on_chunk_boundaries(payloads, eol, data):
    wire = "".join(f"data: {p}{eol}{eol}" for p in payloads).encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    decoder = SSEDecoder()
    events = []
    start = 0
    for cut in [*cuts, len(wire)]:
        events += decoder.feed(wire[start:cut])
        start = cut
    events += decoder.close()
    assert [e.data for e in events] == payloads


# ------------------------------------------------------------------ stream accumulation


def _chunk(delta=None, finish=None, **extra):
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"choices": choices, **extra}


def test_accumulator_joins_content_and_reads_trailing_usage():
    acc = StreamAccumulator()
    deltas = [
        acc.add(_chunk({"role": "assistant", "content": ""})),
        acc.add(_chunk({"content": "Hel"})),
        acc.add(_chunk({"content": "lo"})),
        acc.add(_chunk({}, "length")),
        acc.add(_chunk(usage={"prompt_tokens": 2, "completion_tokens": 2})),
    ]
    assert deltas == ["", "Hel", "lo", "", ""]
    turn = acc.result()
    assert (turn.text, turn.finish_reason, turn.usage) == ("Hello", "length", Usage(2, 2, 4))


def test_accumulator_assembles_interleaved_tool_call_deltas_by_index():
    acc = StreamAccumulator()
    head = {"type": "function"}
    acc.add(_chunk({"tool_calls": [{**head, "index": 0, "id": "a", "function": {"name": "f"}}]}))
    acc.add(_chunk({"tool_calls": [{**head, "index": 1, "id": "b", "function": {"name": "g"}}]}))
    acc.add(_chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"y"'}}]}))
    acc.add(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x": '}}]}))
    acc.add(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}))
    acc.add(_chunk({"tool_calls": [{"index": 1, "function": {"arguments": ": 2}"}}]}))
    acc.add(_chunk({}, "tool_calls"))
    turn = acc.result()
    assert turn.tool_calls == (ToolCall("a", "f", {"x": 1}), ToolCall("b", "g", {"y": 2}))
    assert turn.finish_reason == "tool_calls"


# orjson (like most JSON parsers) reads integers beyond 64 bits as floats: stay within.
@given(st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), max_size=4), st.data())
def test_tool_arguments_split_anywhere_reassemble(args, data):
    text = json.dumps(args)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    acc = StreamAccumulator()
    acc.add(_chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "t"}}]}))
    start = 0
    for cut in [*cuts, len(text)]:
        piece = text[start:cut]
        acc.add(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        start = cut
    assert acc.result().tool_calls == (ToolCall("c", "t", args),)


def test_accumulator_rejects_a_bool_tool_call_index():
    acc = StreamAccumulator()
    with pytest.raises(MalformedResponse, match="index is not an integer"):
        acc.add(_chunk({"tool_calls": [{"index": True, "id": "c", "function": {"name": "t"}}]}))


def test_accumulator_rejects_unparseable_streamed_arguments():
    acc = StreamAccumulator()
    acc.add(_chunk({"tool_calls": [{"index": 0, "function": {"name": "t", "arguments": "{"}}]}))
    with pytest.raises(MalformedResponse):
        acc.result()


# ------------------------------------------------------------------ Retry-After


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, 10.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-1"}, None),
        ({}, None),
    ],
)
def test_retry_after_header_forms(headers, expected):
    now_ms = 1_445_412_480_000  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after(headers, now_ms) == expected
