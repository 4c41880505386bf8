"""The HTTP surface of ``palyrad``: a quart-trio app on hypercorn's trio worker.

``create_app()`` builds it; ``hypercorn --worker-class trio 'surfaces.http:create_app()'``
serves it (one worker: one runtime per state directory). The routes, their auth and
their OpenAPI description all come from one table, :data:`surfaces.http.routes.ROUTES`.
"""

from surfaces.http.app import create_app, openapi_document
from surfaces.http.auth import ensure_admin_token, token_path
from surfaces.http.routes import ROUTES

__all__ = ["ROUTES", "create_app", "ensure_admin_token", "openapi_document", "token_path"]
