"""The deterministic provider: the default, offline, scriptable model.

Without directives it echoes: the output is the text of the last ``user`` message
(``{"ack":"ok"}`` in JSON mode, ``ack`` when empty), finish reason ``stop``, usage
estimated as whitespace word counts (prompt = words of all messages, completion >= 1),
provider id ``deterministic-primary``, model ``deterministic`` or the request's override.
Its health is always ``ok`` (upstream reports ``missing_auth``, quirk 13.10).

Directives
----------
Tests script it through lines of the last user message that start with ``@``. Directive
lines are removed from the echoed text (other lines are kept, and the result is
stripped).

``@tool <name> <json-object>``
    While the request holds no tool results after the last user message, the answer is
    the tool calls of all ``@tool`` lines, in order, with ids ``call_0``, ``call_1``, ...,
    empty text and finish reason ``tool_calls``. The JSON object is optional (``{}``).
    Once ``tool`` messages follow the last user message, the answer is the user text
    minus directive lines, then one line ``tool <name>: <content>`` per tool result in
    message order (the name is looked up through the assistant's ``tool_calls``).

``@sleep <seconds>``
    Block that long before answering (every call that sees it). When ``cancel`` is
    set meanwhile, wake at once and raise :class:`ProviderCancelled` (it waits on the
    event; it does not poll).

``@fail <kind>``
    Raise a ``ProviderError`` whose envelope has that kind (an envelope kind such as
    ``transient_network``, ``rate_limit``, ``timeout``, or a failure class such as
    ``auth_invalid``); runs after ``@sleep``.

Streaming: when ``on_token`` is given, every output word is emitted as one token
(``word`` plus its trailing whitespace, so the tokens concatenate to the text).
Malformed directives raise ``ProviderError`` with kind ``internal``.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from palyra.clock import SYSTEM_CLOCK, Clock
from palyra.providers.base import (
    Attempt,
    ErrorKind,
    FinishReason,
    Message,
    ProviderCancelled,
    ProviderRequest,
    ProviderResponse,
    TokenCallback,
    ToolCall,
    Usage,
    estimate_tokens,
    provider_error,
)

PROVIDER_ID = "deterministic-primary"
MODEL_ID = "deterministic"
JSON_ACK = '{"ack":"ok"}'
EMPTY_ACK = "ack"
MAX_SLEEP_S = 600.0

_DIRECTIVE_RE = re.compile(r"^\s*@(tool|sleep|fail)\b(.*)$")
_TOKEN_RE = re.compile(r"\S+\s*")


@dataclass(frozen=True, slots=True)
class Script:
    """The directives found in one user message (parsed by :func:`parse_script`)."""

    text: str
    tools: tuple[tuple[str, dict[str, Any]], ...] = ()
    sleep_s: float = 0.0
    fail_kind: str | None = None
    directive_lines: int = field(default=0, compare=False)


def _bad(message: str) -> Exception:
    return provider_error(ErrorKind.INTERNAL, message, provider_id=PROVIDER_ID)


def parse_script(user_text: str) -> Script:
    """Split user text into plain text and directives; pure."""
    kept: list[str] = []
    tools: list[tuple[str, dict[str, Any]]] = []
    sleep_s = 0.0
    fail_kind: str | None = None
    directives = 0
    for line in user_text.splitlines():
        match = _DIRECTIVE_RE.match(line)
        if match is None:
            kept.append(line)
            continue
        directives += 1
        name, rest = match.group(1), match.group(2).strip()
        if name == "tool":
            tool_name, _, raw_args = rest.partition(" ")
            if not tool_name:
                raise _bad("deterministic directive @tool needs a tool name")
            try:
                args = orjson.loads(raw_args) if raw_args.strip() else {}
            except orjson.JSONDecodeError:
                raise _bad(f"deterministic directive @tool {tool_name}: bad JSON") from None
            if not isinstance(args, dict):
                raise _bad(f"deterministic directive @tool {tool_name}: args must be an object")
            tools.append((tool_name, args))
        elif name == "sleep":
            try:
                sleep_s = float(rest)
            except ValueError:
                raise _bad(f"deterministic directive @sleep: bad seconds {rest!r}") from None
            if not 0 <= sleep_s <= MAX_SLEEP_S:
                raise _bad(f"deterministic directive @sleep: must be within 0..{MAX_SLEEP_S:g}")
        else:
            if not rest:
                raise _bad("deterministic directive @fail needs a kind")
            fail_kind = rest.split()[0]
    text = "\n".join(kept).strip() if directives else user_text
    return Script(text, tuple(tools), sleep_s, fail_kind, directives)


def split_tokens(text: str) -> list[str]:
    """Word tokens (each with its trailing whitespace) that concatenate back to ``text``."""
    tokens = _TOKEN_RE.findall(text)
    lead = len(text) - len(text.lstrip())
    if tokens and lead:
        tokens[0] = text[:lead] + tokens[0]
    return tokens


def _last_user_index(messages: tuple[Message, ...]) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user":
            return i
    return None


class DeterministicProvider:
    """Offline echo provider, scriptable through directives (see the module docstring)."""

    kind = "deterministic"

    def __init__(
        self,
        provider_id: str = PROVIDER_ID,
        model: str = MODEL_ID,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.provider_id = provider_id
        self.model = model
        self._clock = clock
        self._lock = threading.Lock()
        self._counters = {"calls": 0, "successes": 0, "failures": 0, "cancelled": 0}

    # ----------------------------------------------------------------- contract

    def complete(
        self,
        request: ProviderRequest,
        *,
        cancel: threading.Event | None = None,
        on_token: TokenCallback | None = None,
    ) -> ProviderResponse:
        started = self._clock.monotonic()
        self._count("calls")
        try:
            response = self._complete(request, cancel, on_token, started)
        except ProviderCancelled:
            self._count("cancelled")
            raise
        except Exception:
            self._count("failures")
            raise
        self._count("successes")
        return response

    def may_block(self, request: ProviderRequest) -> bool:
        """Only ``@sleep`` makes this provider wait; otherwise a caller may run it inline."""
        index = _last_user_index(request.messages)
        if index is None:
            return False
        text = request.messages[index].content
        if "@sleep" not in text:
            return False
        try:
            return parse_script(text).sleep_s > 0
        except Exception:
            return False

    def status_snapshot(self) -> dict[str, Any]:
        with self._lock:
            totals = dict(self._counters)
        return {
            "provider_id": self.provider_id,
            "kind": self.kind,
            "model_id": self.model,
            "health": "ok",
            "circuit": {"state": "closed", "consecutive_failures": 0, "retry_after_ms": 0},
            "totals": totals,
        }

    # ----------------------------------------------------------------- internals

    def _count(self, key: str) -> None:
        with self._lock:
            self._counters[key] += 1

    def _cancelled(self) -> ProviderCancelled:
        return ProviderCancelled(provider_id=self.provider_id)

    def _complete(
        self,
        request: ProviderRequest,
        cancel: threading.Event | None,
        on_token: TokenCallback | None,
        started: float,
    ) -> ProviderResponse:
        if cancel is not None and cancel.is_set():
            raise self._cancelled()
        messages = request.messages
        last_user = _last_user_index(messages)
        user_text = messages[last_user].content if last_user is not None else ""
        script = parse_script(user_text)

        if script.sleep_s > 0:
            if cancel is not None:
                if cancel.wait(script.sleep_s):
                    raise self._cancelled()
            else:
                time.sleep(script.sleep_s)
        if script.fail_kind is not None:
            try:
                error = provider_error(
                    script.fail_kind,
                    f"deterministic failure injected: {script.fail_kind}",
                    provider_id=self.provider_id,
                )
            except ValueError:
                error = _bad(f"deterministic directive @fail: unknown kind {script.fail_kind!r}")
            raise error

        tool_results = (
            [] if last_user is None else [m for m in messages[last_user + 1 :] if m.role == "tool"]
        )
        tool_calls: tuple[ToolCall, ...] = ()
        if script.tools and not tool_results:
            tool_calls = tuple(
                ToolCall(f"call_{i}", name, args) for i, (name, args) in enumerate(script.tools)
            )
            text = ""
            finish = FinishReason.TOOL_CALLS
        else:
            text = self._answer_text(request, script, tool_results, messages)
            finish = FinishReason.STOP
            limit = request.max_tokens
            if limit is not None and estimate_tokens(text) > max(1, limit):
                text = "".join(split_tokens(text)[: max(1, limit)]).rstrip()
                finish = FinishReason.LENGTH

        for token in split_tokens(text) if on_token is not None else ():
            if cancel is not None and cancel.is_set():
                raise self._cancelled()
            on_token(token)

        prompt = sum(estimate_tokens(m.content) for m in messages)
        completion = max(1, estimate_tokens(text))
        duration_ms = int((self._clock.monotonic() - started) * 1000)
        return ProviderResponse(
            text=text,
            tool_calls=tool_calls,
            finish_reason=finish,
            usage=Usage.of(prompt, completion),
            provider_id=self.provider_id,
            model_id=request.model_override or self.model,
            retry_count=0,
            attempts=(Attempt(0, "ok", duration_ms),),
        )

    def _answer_text(
        self,
        request: ProviderRequest,
        script: Script,
        tool_results: list[Message],
        messages: tuple[Message, ...],
    ) -> str:
        if request.json_mode:
            return JSON_ACK
        lines = [script.text] if script.text else []
        if tool_results:
            names = {c.id: c.name for m in messages if m.role == "assistant" for c in m.tool_calls}
            for result in tool_results:
                name = names.get(result.tool_call_id or "")
                if name is None:
                    name = _scripted_name(script, result.tool_call_id) or str(result.tool_call_id)
                lines.append(f"tool {name}: {result.content}")
        text = "\n".join(lines)
        return text if text.strip() else EMPTY_ACK


def _scripted_name(script: Script, call_id: str | None) -> str | None:
    if call_id and call_id.startswith("call_") and call_id[5:].isdigit():
        index = int(call_id[5:])
        if index < len(script.tools):
            return script.tools[index][0]
    return None
