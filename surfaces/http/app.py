"""The QuartTrio app: lifecycle, auth, error envelopes, and registration from ROUTES."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import trio
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from palyra.access.tokens import ADMIN_TOKEN_FILE, looks_like_token
from palyra.config import Config
from palyra.errors import PalyraError, Unauthenticated
from surfaces.http import auth
from surfaces.http.errors import from_exception
from surfaces.http.ratelimit import Clock, RateLimiter, RateLimitExceeded, RateLimits
from surfaces.http.routes import ROUTES, schemas
from surfaces.http.schema import Route, openapi
from surfaces.http.state import Call, Surface, dumps
from surfaces.http.streams import SSE_POLICY

DEFAULT_STATE_DIR = ".palyra-state"
_PUBLIC = frozenset(r.name for r in ROUTES if r.public)
_SCOPE = {r.name: r.scope for r in ROUTES}  # the API-token scope admitting each route


def openapi_document(version: str) -> dict[str, Any]:
    return openapi(ROUTES, schemas(), title="Palyra daemon (palyrad)", version=version,
                   description="Admin API, run events (SSE), Prometheus metrics and an "
                               "OpenAI-compatible surface. Every route but /healthz needs "
                               "`Authorization: Bearer <admin token>` (the token is in "
                               f"<state_dir>/{ADMIN_TOKEN_FILE}).\n\n"
                               "Rate limits (every route but /healthz): token buckets per "
                               "client address, by default 30 requests/s (120/s from "
                               "loopback), and per token: the admin token by default 120/s "
                               "(configurable with PALYRA_RATE_LIMIT_*), an API token at its "
                               "own rate_limit_per_minute (default 120). Over a limit: 429 with Retry-After and "
                               "the error envelope (code rate_limited, details.scope ip or "
                               "token).\n\n" + SSE_POLICY)


def _error_response(exc: BaseException) -> Response:
    status, body = from_exception(exc)
    headers = {"WWW-Authenticate": 'Bearer realm="palyrad"'} if status == 401 else None
    if isinstance(exc, RateLimitExceeded):
        headers = {"Retry-After": exc.retry_after_header}
    return Response(dumps(body), status=status, headers=headers, content_type="application/json")


class CompleteRequestCycle:
    """ASGI middleware: a response never ends before its request body is in.

    Without it, an answer given before the body was read (401, 413 or 429 from
    ``before_request``) could hang the client's next request on that keep-alive
    connection (measured: about one in seven after a 64 KiB body). Hypercorn runs its
    end-of-response bookkeeping inside the app's last ``send``: with the request body
    still arriving it closes the connection, and on the way it hands the app an
    ``http.disconnect``, upon which quart-trio cancels the very task running that
    close. The close is abandoned half done: the socket stays open, and hypercorn no
    longer reads requests from it.

    So the last ``send`` of a response first waits (at most ``body_timeout``) until the
    request body is complete (quart-trio keeps reading it meanwhile, discarding past
    the 64 KiB cap), which lets the connection be reused cleanly, and runs shielded, so
    hypercorn's bookkeeping is never cut short. If the body is still not in, the
    connection closes after the response; the rest of the body is then read for at
    most ``linger`` seconds, so hypercorn's reader is not left blocked on a full queue.
    """

    def __init__(self, app: Any, *, body_timeout: float = 10.0, linger: float = 1.0) -> None:
        self.app = app
        self.body_timeout = body_timeout
        self.linger = linger

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body_in = trio.Event()

        async def tracked_receive() -> Any:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_in.set()
            return message

        async def guarded_send(message: Any) -> None:
            if message["type"] != "http.response.body" or message.get("more_body", False):
                return await send(message)
            if not body_in.is_set():
                with trio.move_on_after(self.body_timeout):
                    await body_in.wait()
            with trio.CancelScope(shield=True):
                await send(message)

        await self.app(scope, tracked_receive, guarded_send)
        if not body_in.is_set():
            with trio.move_on_after(self.linger):
                while True:
                    message = await receive()
                    if message["type"] != "http.request" or not message.get("more_body"):
                        break


def _view(route: Route, surface: Surface) -> Any:
    async def view(**path: str) -> Any:
        query = route.parse_query(request.args)
        headers = route.parse_headers(request.headers)
        body: dict[str, Any] = {}
        if route.body is not None:
            body = route.body.parse(await request.get_data(cache=False))
        call = Call(surface, dict(path), query, headers, body, request.headers,
                    g.get("api_token"))
        return await route.handler(call)

    view.__name__ = route.name
    return view


def create_app(runtime: Any = None, *, state_dir: str | os.PathLike[str] | None = None,
               config: Config | dict[str, Any] | None = None,
               rate_limits: RateLimits | RateLimiter | None = None,
               clock: Clock | None = None) -> QuartTrio:
    """The HTTP surface over ``runtime``, or over a runtime it starts itself.

    Without ``runtime`` the app starts one on ``before_serving`` (in a thread: it
    blocks) over ``state_dir`` (default ``$PALYRA_STATE_DIR`` or ``./.palyra-state``)
    with ``config`` (default: the TOML file named by ``$PALYRA_CONFIG``, if any), and
    stops it on ``after_serving``. A runtime handed in is left running for its owner.
    This is what ``hypercorn --worker-class trio 'surfaces.http:create_app()'`` calls.

    ``rate_limits`` defaults to :meth:`RateLimits.from_env` (``PALYRA_RATE_LIMIT_*``);
    a :class:`RateLimiter` is used as is. ``clock`` (monotonic seconds) drives the token
    buckets, so tests can advance time instead of sleeping.
    """
    from palyra.cli.daemon import rate_limits as configured_limits
    from palyra.config import load_config

    if runtime is not None:
        where, effective = Path(runtime.state_dir), runtime.config
    else:
        where = Path(state_dir or os.environ.get("PALYRA_STATE_DIR") or DEFAULT_STATE_DIR)
        if config is None:  # the file named by $PALYRA_CONFIG, with PALYRA_* overrides
            config = load_config(os.environ.get("PALYRA_CONFIG"))
        effective = config if isinstance(config, Config) else Config.from_mapping(config)
    http = effective.http
    surface = Surface(runtime, where, config, clock=clock, sse_keepalive=http.sse_keepalive_s,
                      rate_limits=configured_limits(effective) if rate_limits is None else rate_limits)
    app = QuartTrio(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = http.max_body_bytes
    app.extensions["palyra"] = surface
    app.asgi_app = CompleteRequestCycle(app.asgi_app)  # type: ignore[method-assign]

    for route in ROUTES:
        app.add_url_rule(route.rule, endpoint=route.name, view_func=_view(route, surface),
                         methods=[route.method])

    @app.before_serving
    async def start() -> None:
        if surface.rt is None:
            from palyra.runtime import Runtime

            surface.rt = await trio.to_thread.run_sync(Runtime.start, surface.state_dir,
                                                       surface.config)
        surface.state_dir = Path(surface.rt.state_dir)
        surface.token = auth.ensure_admin_token(surface.state_dir)
        surface.pool.start()

    @app.after_serving
    async def stop() -> None:
        surface.streams.close_all()
        surface.pool.close()
        if surface.owns_runtime and surface.rt is not None:
            await trio.to_thread.run_sync(surface.rt.stop, "http surface stopped")

    @app.before_request
    async def authenticate() -> None:
        if request.content_length is not None and request.content_length > http.max_body_bytes:
            raise RequestEntityTooLarge()
        if request.endpoint in _PUBLIC:
            return
        # The address bucket first: unauthenticated floods (token guessing) pay too. The
        # TCP peer from the ASGI scope, never a header a client could set.
        client = request.scope.get("client")
        surface.limiter.check_ip(str(client[0]) if client else None)
        if not surface.token:
            raise PalyraError("the admin token is not loaded")
        value = auth.bearer_value(request.headers.get("Authorization"))
        if auth.is_admin(value, surface.token):
            surface.limiter.check_token(surface.token)
            return
        if not looks_like_token(value):
            raise Unauthenticated("invalid admin token")
        tokens = surface.runtime.api_tokens
        # a cache hit is a digest and a dict lookup; a miss reads the database, off-loop
        record = tokens.verify_cached(value) or await surface.pool.run(tokens.verify, value)
        # limited before the scope check: a valid token hammering a forbidden route pays
        surface.limiter.check_api_token(record.token_id, record.rate_limit_per_minute)
        auth.admit_api_token(record, _SCOPE.get(request.endpoint or ""))
        g.api_token = record

    @app.after_request
    async def close_when_draining(response: Response) -> Response:
        # Once shutdown began, no client may send another request on this connection:
        # hypercorn, closing a connection while stopping, can miss a request that
        # arrives meanwhile and then holds the connection (and the shutdown) until its
        # graceful timeout.
        if surface.draining:
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(PalyraError)
    async def palyra_error(exc: PalyraError) -> Response:
        return _error_response(exc)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return _error_response(exc)

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        return _error_response(exc)

    return app

