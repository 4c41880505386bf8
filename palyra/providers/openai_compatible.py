"""The OpenAI-compatible provider: ``POST {base_url}/chat/completions`` over httpx.

Blocking by design: the run actor calls :meth:`OpenAICompatibleProvider.complete` in a
worker thread and passes a ``cancel`` event. Cancellation is noticed within ~50 ms while
waiting for or reading the response, non-streaming or streaming (see
``palyra/providers/_transport.py`` for how, and why not closing from another thread),
and during retry backoff (``cancel.wait(delay)``); it raises ``ProviderCancelled``.

Retries: HTTP 429/500/502/503/504, network errors and timeouts are retried up to
``max_retries`` times with backoff ``retry_backoff_ms * 2**min(i, 8)`` (``i`` = the
retry's index from 0). A ``Retry-After`` (or ``retry-after-ms``) header replaces the
backoff; when it asks for longer than ``max_retry_after_s`` the call fails at once with
``retry_after_ms`` in the envelope, for the caller to fail over or reschedule. A stream
that already emitted tokens is never retried (the consumer has seen them).

Circuit breaker: one verdict per ``complete()`` (after its retries). Failures that say
something about the request rather than the provider (context window exceeded, content
policy) and cancellations leave it untouched.

Timeouts: ``timeout_s`` bounds a whole non-streaming attempt; for a streaming attempt it
bounds the silence between chunks (a stream that keeps producing is healthy). TCP
connect is bounded by ``min(timeout_s, 10)``.

Secrets: the API key only ever goes into the ``Authorization`` header. Error messages
are built from sanitised remote text with the key removed verbatim, and transport
exceptions are not chained into raised errors (their request objects carry headers).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from palyra.clock import SYSTEM_CLOCK, Clock
from palyra.errors import InvalidInput, ProviderError
from palyra.providers._openai_wire import (
    MalformedResponse,
    SSEDecoder,
    SSEEvent,
    StreamAccumulator,
    Turn,
    build_chat_body,
    parse_completion,
    parse_retry_after,
)
from palyra.providers._transport import CancellableTransport, ReadCancelled, call_scope
from palyra.providers.base import (
    RETRYABLE_STATUSES,
    Attempt,
    ErrorKind,
    ProviderCancelled,
    ProviderFailureClass,
    ProviderRequest,
    ProviderResponse,
    TokenCallback,
    Usage,
    classify_http_failure,
    error_envelope,
    estimate_tokens,
    remote_error_message,
)
from palyra.providers.circuit import CLOSED, CircuitBreaker

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_PROVIDER_ID = "openai-primary"
MAX_ERROR_BODY = 64 * 1024

_NEUTRAL_FAILURES = frozenset(
    {ProviderFailureClass.CONTEXT_WINDOW_EXCEEDED, ProviderFailureClass.CONTENT_POLICY_BLOCKED}
)


class _Cancelled(Exception):
    pass


@dataclass(eq=False)
class _Failed(Exception):
    envelope: dict[str, Any]
    retryable: bool
    counts_for_circuit: bool = True
    retry_after_s: float | None = None


@dataclass(slots=True)
class _AttemptState:
    emitted: bool = False


def _is_private_host(host: str) -> bool:
    lowered = host.lower().rstrip(".")
    if lowered == "localhost" or lowered.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(lowered)
    except ValueError:
        return False
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
        or address.is_multicast
    )


def _check_base_url(base_url: str, allow_private: bool) -> str:
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError):
        raise InvalidInput("provider base_url is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidInput("provider base_url must be an http(s) URL with a host")
    if url.userinfo:
        raise InvalidInput("provider base_url must not carry credentials; use api_key")
    if not allow_private and _is_private_host(url.host):
        raise InvalidInput(
            f"provider base_url host {url.host!r} is private or loopback; "
            "set allow_private_base_url=True to allow it"
        )
    return base_url.rstrip("/")


class OpenAICompatibleProvider:
    """A ``ModelProvider`` speaking the OpenAI chat-completions API (see module doc).

    ``clock`` drives the circuit breaker, attempt durations and HTTP-date Retry-After.
    ``sleep`` replaces the backoff wait (tests pass a recorder); when it is given the
    cancel event is checked after it returns, otherwise the wait is ``cancel.wait``.
    ``max_retry_after_s`` is the longest Retry-After honoured before giving up.
    ``allow_private_base_url`` permits loopback/private hosts (spec 1.8 rejects them by
    default). ``circuit`` lets several providers share one breaker. One ``httpx.Client``
    per instance, safe to call from many threads; ``close()`` releases its connections.
    """

    kind = "openai_compatible"

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        model: str = DEFAULT_MODEL,
        timeout_s: float = 60.0,
        max_retries: int = 2,
        retry_backoff_ms: int = 150,
        clock: Clock = SYSTEM_CLOCK,
        sleep: Callable[[float], None] | None = None,
        *,
        provider_id: str = DEFAULT_PROVIDER_ID,
        max_retry_after_s: float = 10.0,
        allow_private_base_url: bool = False,
        circuit: CircuitBreaker | None = None,
        verify: bool = True,
    ) -> None:
        if timeout_s <= 0:
            raise InvalidInput("timeout_s must be > 0")
        if max_retries < 0:
            raise InvalidInput("max_retries must be >= 0")
        if retry_backoff_ms < 0:
            raise InvalidInput("retry_backoff_ms must be >= 0")
        self.base_url = _check_base_url(base_url, allow_private_base_url)
        self.provider_id = provider_id
        self.model = model
        self.timeout_s = float(timeout_s)
        self.max_retries = max_retries
        self.retry_backoff_ms = retry_backoff_ms
        self.max_retry_after_s = max_retry_after_s
        self._api_key = api_key or None
        self._clock = clock
        self._sleep = sleep
        self.circuit = circuit or CircuitBreaker(clock=clock, name=provider_id)
        self._url = self.base_url + "/chat/completions"
        self._client = httpx.Client(
            transport=CancellableTransport(verify=verify),
            timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0)),
            follow_redirects=False,
            trust_env=False,
        )
        self._lock = threading.Lock()
        self._counters = {
            "calls": 0,
            "successes": 0,
            "failures": 0,
            "cancelled": 0,
            "retries": 0,
            "rejected_by_circuit": 0,
        }

    def __repr__(self) -> str:  # never shows the key
        return (
            f"OpenAICompatibleProvider(provider_id={self.provider_id!r}, "
            f"base_url={self.base_url!r}, model={self.model!r})"
        )

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAICompatibleProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------- contract

    def status_snapshot(self) -> dict[str, Any]:
        circuit = self.circuit.snapshot()
        if not self._api_key:
            health = "missing_auth"
        elif circuit["state"] != CLOSED or circuit["consecutive_failures"] > 0:
            health = "degraded"
        else:
            health = "ok"
        with self._lock:
            totals = dict(self._counters)
        return {
            "provider_id": self.provider_id,
            "kind": self.kind,
            "model_id": self.model,
            "base_url": self.base_url,
            "health": health,
            "circuit": circuit,
            "totals": totals,
        }

    def complete(
        self,
        request: ProviderRequest,
        *,
        cancel: threading.Event | None = None,
        on_token: TokenCallback | None = None,
    ) -> ProviderResponse:
        self._count("calls")
        if cancel is not None and cancel.is_set():
            self._count("cancelled")
            raise ProviderCancelled(provider_id=self.provider_id)
        try:
            self.circuit.before_call()
        except ProviderError:
            self._count("rejected_by_circuit")
            raise
        try:
            return self._complete(request, cancel, on_token)
        except ProviderError:
            raise  # the circuit already has its verdict (or was released on cancel)
        except BaseException:
            self.circuit.release()  # e.g. on_token raised: no verdict on the provider
            raise

    # ----------------------------------------------------------------- internals

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counters[key] += n

    def _complete(
        self,
        request: ProviderRequest,
        cancel: threading.Event | None,
        on_token: TokenCallback | None,
    ) -> ProviderResponse:
        model = request.model_override or self.model
        body = orjson.dumps(build_chat_body(request, model))
        attempts: list[Attempt] = []
        index = 0
        while True:
            started = self._clock.monotonic()
            try:
                turn = self._attempt(body, request.stream, cancel, on_token)
            except _Cancelled:
                attempts.append(Attempt(index, "cancelled", self._ms_since(started)))
                raise self._cancelled(attempts) from None
            except _Failed as failed:
                delay = self._retry_delay(index, failed)
                status = failed.envelope["http_status"]
                attempts.append(
                    Attempt(
                        index,
                        "error",
                        self._ms_since(started),
                        http_status=status,
                        error_kind=failed.envelope["kind"],
                        backoff_ms=0 if delay is None else round(delay * 1000),
                    )
                )
                if delay is None:
                    raise self._give_up(failed, attempts) from None
                if not self._wait(delay, cancel):
                    raise self._cancelled(attempts) from None
                self._count("retries")
                index += 1
                continue
            attempts.append(Attempt(index, "ok", self._ms_since(started)))
            self.circuit.record_success()
            self._count("successes")
            usage = turn.usage or Usage.of(
                sum(estimate_tokens(m.content) for m in request.messages),
                estimate_tokens(turn.text),
            )
            return ProviderResponse(
                text=turn.text,
                tool_calls=turn.tool_calls,
                finish_reason=turn.finish_reason,
                usage=usage,
                provider_id=self.provider_id,
                model_id=model,
                retry_count=index,
                attempts=tuple(attempts),
            )

    def _ms_since(self, started: float) -> int:
        return max(0, round((self._clock.monotonic() - started) * 1000))

    def _cancelled(self, attempts: list[Attempt]) -> ProviderCancelled:
        self._count("cancelled")
        self.circuit.release()
        return ProviderCancelled(
            provider_id=self.provider_id,
            details={
                "retry_count": max(0, len(attempts) - 1),
                "attempts": [a.as_dict() for a in attempts],
            },
        )

    def _give_up(self, failed: _Failed, attempts: list[Attempt]) -> ProviderError:
        self._count("failures")
        if failed.counts_for_circuit:
            self.circuit.record_failure()
        else:
            self.circuit.release()
        details = dict(failed.envelope)
        details["retry_count"] = len(attempts) - 1
        details["attempts"] = [a.as_dict() for a in attempts]
        message = f"{self.provider_id}: {details['redacted_message']}"
        if len(attempts) > 1:
            message += f" (after {len(attempts)} attempts)"
        return ProviderError(message, details=details)

    def _retry_delay(self, index: int, failed: _Failed) -> float | None:
        if not failed.retryable or index >= self.max_retries:
            return None
        if failed.retry_after_s is not None:
            if failed.retry_after_s > self.max_retry_after_s:
                return None
            return failed.retry_after_s
        return self.retry_backoff_ms * 2 ** min(index, 8) / 1000

    def _wait(self, delay: float, cancel: threading.Event | None) -> bool:
        """Back off for ``delay`` seconds; False when cancelled meanwhile."""
        if self._sleep is not None:
            self._sleep(delay)
            return cancel is None or not cancel.is_set()
        if cancel is not None:
            return not cancel.wait(delay)
        time.sleep(delay)
        return True

    def _headers(self, stream: bool) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
            "user-agent": "palyra",
        }
        if self._api_key:
            headers["authorization"] = f"Bearer {self._api_key}"
        return headers

    def _envelope(self, kind: ErrorKind | ProviderFailureClass, message: str, **kw: Any) -> dict:
        return error_envelope(
            kind, message, provider_id=self.provider_id, secrets=(self._api_key,), **kw
        )

    def _attempt(
        self,
        body: bytes,
        stream: bool,
        cancel: threading.Event | None,
        on_token: TokenCallback | None,
    ) -> Turn:
        state = _AttemptState()
        deadline = None if stream else time.monotonic() + self.timeout_s
        fc = ProviderFailureClass
        try:
            with (
                call_scope(cancel, deadline),
                self._client.stream(
                    "POST", self._url, content=body, headers=self._headers(stream)
                ) as response,
            ):
                if not 200 <= response.status_code < 300:
                    raise self._http_failure(response)
                content_type = response.headers.get("content-type", "")
                if stream and "text/event-stream" in content_type:
                    return self._read_stream(response, cancel, on_token, state)
                turn = parse_completion(orjson.loads(response.read()))
                if on_token is not None and turn.text:
                    state.emitted = True
                    on_token(turn.text)
                return turn
        except ReadCancelled:
            raise _Cancelled() from None
        except _Failed as failed:
            if state.emitted:
                failed.retryable = False
            raise
        except httpx.TimeoutException as exc:
            message = f"request timed out ({type(exc).__name__})"
            raise _Failed(
                self._envelope(fc.PROVIDER_TIMEOUT, message), retryable=not state.emitted
            ) from None
        except httpx.TransportError as exc:
            message = f"network error ({type(exc).__name__}): {exc}"
            raise _Failed(
                self._envelope(fc.NETWORK_UNAVAILABLE, message), retryable=not state.emitted
            ) from None
        except (MalformedResponse, orjson.JSONDecodeError) as exc:
            message = f"malformed response: {exc}"
            raise _Failed(self._envelope(fc.MALFORMED_RESPONSE, message), retryable=False) from None

    def _http_failure(self, response: httpx.Response) -> _Failed:
        raw = b""
        for chunk in response.iter_bytes():
            raw += chunk
            if len(raw) >= MAX_ERROR_BODY:
                break
        status = response.status_code
        failure_class = classify_http_failure(status, raw)
        retry_after = parse_retry_after(response.headers, self._clock.now_ms())
        message = f"HTTP {status}: {remote_error_message(raw) or response.reason_phrase}"
        envelope = self._envelope(
            failure_class,
            message,
            http_status=status,
            retry_after_ms=None if retry_after is None else round(retry_after * 1000),
        )
        return _Failed(
            envelope,
            retryable=status in RETRYABLE_STATUSES
            and failure_class is not ProviderFailureClass.QUOTA_EXCEEDED,
            counts_for_circuit=failure_class not in _NEUTRAL_FAILURES,
            retry_after_s=retry_after,
        )

    def _read_stream(
        self,
        response: httpx.Response,
        cancel: threading.Event | None,
        on_token: TokenCallback | None,
        state: _AttemptState,
    ) -> Turn:
        decoder = SSEDecoder()
        accumulator = StreamAccumulator()
        for chunk in response.iter_bytes():
            for event in decoder.feed(chunk):
                if self._stream_event(event, accumulator, cancel, on_token, state):
                    return accumulator.result()
        for event in decoder.close():
            if self._stream_event(event, accumulator, cancel, on_token, state):
                return accumulator.result()
        turn = accumulator.result()
        if turn.finish_reason == "unknown":
            raise _Failed(
                self._envelope(
                    ProviderFailureClass.NETWORK_UNAVAILABLE,
                    "stream ended before a finish reason or [DONE]",
                ),
                retryable=not state.emitted,
            )
        return turn

    def _stream_event(
        self,
        event: SSEEvent,
        accumulator: StreamAccumulator,
        cancel: threading.Event | None,
        on_token: TokenCallback | None,
        state: _AttemptState,
    ) -> bool:
        """Apply one SSE event; True at ``[DONE]``."""
        if cancel is not None and cancel.is_set():
            raise ReadCancelled()
        data = event.data.strip()
        if data == "[DONE]":
            return True
        if not data:
            return False
        chunk = orjson.loads(data)
        if event.event == "error" or (isinstance(chunk, dict) and "error" in chunk):
            message = f"stream error: {remote_error_message(chunk)}"
            raise _Failed(
                self._envelope(ProviderFailureClass.TRANSIENT_UPSTREAM, message),
                retryable=not state.emitted,
            )
        delta = accumulator.add(chunk)
        if delta and on_token is not None:
            state.emitted = True
            on_token(delta)
        return False
