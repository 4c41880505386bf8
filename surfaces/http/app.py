"""The QuartTrio app: lifecycle, auth, error envelopes, and registration from ROUTES."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from palyra.config import Config
from palyra.errors import PalyraError
from surfaces.http import auth
from surfaces.http.errors import MAX_BODY_BYTES, from_exception
from surfaces.http.routes import ROUTES, schemas
from surfaces.http.schema import Route, openapi
from surfaces.http.state import Call, Surface, dumps

DEFAULT_STATE_DIR = ".palyra-state"
_PUBLIC = frozenset(r.name for r in ROUTES if r.public)


def openapi_document(version: str) -> dict[str, Any]:
    return openapi(ROUTES, schemas(), title="Palyra daemon (palyrad)", version=version,
                   description="Admin API, run events (SSE) and an OpenAI-compatible surface. "
                               "Every route but /healthz needs `Authorization: Bearer <admin "
                               "token>` (the token is in <state_dir>/admin.token).")


def _error_response(exc: BaseException) -> Response:
    status, body = from_exception(exc)
    headers = {"WWW-Authenticate": 'Bearer realm="palyrad"'} if status == 401 else None
    return Response(dumps(body), status=status, headers=headers, content_type="application/json")


def _view(route: Route, surface: Surface) -> Any:
    async def view(**path: str) -> Any:
        query = route.parse_query(request.args)
        headers = route.parse_headers(request.headers)
        body: dict[str, Any] = {}
        if route.body is not None:
            body = route.body.parse(await request.get_data(cache=False))
        call = Call(surface, dict(path), query, headers, body, request.headers)
        return await route.handler(call)

    view.__name__ = route.name
    return view


def create_app(runtime: Any = None, *, state_dir: str | os.PathLike[str] | None = None,
               config: Config | dict[str, Any] | None = None) -> QuartTrio:
    """The HTTP surface over ``runtime``, or over a runtime it starts itself.

    Without ``runtime`` the app starts one on ``before_serving`` (in a thread: it
    blocks) over ``state_dir`` (default ``$PALYRA_STATE_DIR`` or ``./.palyra-state``)
    with ``config`` (default: the TOML file named by ``$PALYRA_CONFIG``, if any), and
    stops it on ``after_serving``. A runtime handed in is left running for its owner.
    This is what ``hypercorn --worker-class trio 'surfaces.http:create_app()'`` calls.
    """
    if runtime is not None:
        where = Path(runtime.state_dir)
    else:
        where = Path(state_dir or os.environ.get("PALYRA_STATE_DIR") or DEFAULT_STATE_DIR)
        if config is None and os.environ.get("PALYRA_CONFIG"):
            from palyra.cli.daemon import load_config

            config = load_config(os.environ["PALYRA_CONFIG"])
    surface = Surface(runtime, where, config)
    app = QuartTrio(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["palyra"] = surface

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
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise RequestEntityTooLarge()
        if request.endpoint in _PUBLIC:
            return
        if not surface.token:
            raise PalyraError("the admin token is not loaded")
        auth.check_bearer(request.headers.get("Authorization"), surface.token)

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

