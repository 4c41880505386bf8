"""An httpx transport whose socket reads notice a cancel event within ~50 ms.

Why not the obvious alternatives:

* httpx's own read timeout cannot serve as a polling tick: when a read times out,
  httpcore closes the connection and the response stream is dead, so a loop of short
  read timeouts cannot resume a half-read body.
* Closing the response "from the waiting side" needs a second thread to do the closing
  (``palyra/`` starts none), and on Linux closing a socket does not wake a thread
  already blocked in ``recv`` on it; it keeps waiting for the peer.

So the slicing happens *below* httpcore: the network stream's ``read`` waits in slices
of at most ``SLICE_S`` and checks the calling thread's cancel event between slices.
A socket read that times out consumes nothing, so the HTTP/1.1 parser state is intact
and the next slice simply continues. When the event is set the read raises
:class:`ReadCancelled`, which httpcore treats like any I/O failure: it discards that
connection (never returned to the pool half-read) and re-raises.

The cancel event and an optional absolute deadline are attached to the calling thread
with :func:`call_scope`; sync httpx does all its I/O in the calling thread, so the
stream sees the scope of the call it is serving. Reads outside a scope behave exactly
like httpcore's defaults. TCP connect and DNS are not sliced (bounded by the connect
timeout); the cancel event is checked before connecting and before every write.

Env proxies (``HTTPS_PROXY``) are not used through this transport.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

SLICE_S = 0.05

_local = threading.local()


class ReadCancelled(Exception):
    """Raised from inside a socket read when the call's cancel event is set."""


@contextlib.contextmanager
def call_scope(cancel: threading.Event | None, deadline: float | None = None) -> Iterator[None]:
    """Attach ``cancel`` and a ``time.monotonic()`` deadline to this thread's I/O."""
    previous = getattr(_local, "scope", None)
    _local.scope = (cancel, deadline)
    try:
        yield
    finally:
        _local.scope = previous


def _scope() -> tuple[threading.Event | None, float | None]:
    return getattr(_local, "scope", None) or (None, None)


def _check_cancel() -> None:
    cancel, _ = _scope()
    if cancel is not None and cancel.is_set():
        raise ReadCancelled()


class _SlicedStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        cancel, deadline = _scope()
        if cancel is None and deadline is None:
            return self._inner.read(max_bytes, timeout)
        idle_end = None if timeout is None else time.monotonic() + timeout
        ends = [end for end in (idle_end, deadline) if end is not None]
        end = min(ends) if ends else None
        while True:
            if cancel is not None and cancel.is_set():
                raise ReadCancelled()
            now = time.monotonic()
            if end is not None and now >= end:
                raise httpcore.ReadTimeout("timed out")
            if cancel is None:
                wait = None if end is None else end - now
            else:
                wait = SLICE_S if end is None else min(SLICE_S, end - now)
            try:
                return self._inner.read(max_bytes, wait)
            except httpcore.ReadTimeout:
                continue

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        _check_cancel()
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _SlicedStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _SlicedBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        _check_cancel()
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _SlicedStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        _check_cancel()
        return _SlicedStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


_EXC_MAP: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    # most specific first
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except ReadCancelled:
        raise
    except Exception as exc:
        for source, target in _EXC_MAP:
            if isinstance(exc, source):
                raise target(str(exc)) from exc
        raise


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, inner: Iterable[bytes]) -> None:
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        with _mapped():
            yield from self._inner

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


class CancellableTransport(httpx.BaseTransport):
    """HTTP/1.1 connection pool over :class:`_SlicedBackend` (see the module docstring)."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | bool = True,
        max_connections: int = 16,
        keepalive_expiry: float = 5.0,
    ) -> None:
        ssl_context = (
            verify
            if isinstance(verify, ssl.SSLContext)
            else (httpx.create_ssl_context(verify=verify))
        )
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=_SlicedBackend(),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _mapped():
            response = self._pool.handle_request(core_request)
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()
