"""Bearer auth: the admin token (generated once per state directory, compared in
constant time) or an API token (``palyra_...``, see :mod:`palyra.access`).

Which routes take which: every route takes the admin token; a route with a ``scope``
in the table also takes an API token holding that scope. An API token anywhere else is
a 403 ``admin_token_required`` (it is valid, it is just not enough), an unknown, revoked
or expired one a 401 ``invalid_api_token``, a token without the scope a 403
``missing_scope``.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

from palyra.access.tokens import ADMIN_TOKEN_FILE, ApiToken, require_scope
from palyra.errors import AdminTokenRequired, Unauthenticated

log = logging.getLogger("palyra.http")


def token_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / ADMIN_TOKEN_FILE


def ensure_admin_token(state_dir: str | os.PathLike[str]) -> str:
    """Read ``<state_dir>/admin.token``, creating it (0600) on first start.

    Creation is exclusive (``O_EXCL``), so two processes racing on a fresh state
    directory agree on one token. A token file readable by group or others is tightened
    to 0600 with a warning rather than trusted as is.
    """
    path = token_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("%s was readable by others (mode %o); setting it to 0600", path, mode)
            os.chmod(path, 0o600)
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"{path} is empty; delete it to generate a new admin token") from None
        return token
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token


def bearer_value(header: str | None) -> str:
    """The credential of ``Authorization: Bearer <credential>``, or :class:`Unauthenticated`."""
    if not header:
        raise Unauthenticated("missing Authorization: Bearer <token>")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated("Authorization must be 'Bearer <token>'")
    return value.strip()


def is_admin(value: str, token: str) -> bool:
    return hmac.compare_digest(value.encode("utf-8"), token.encode("utf-8"))


def check_bearer(header: str | None, token: str) -> None:
    """Raise :class:`Unauthenticated` unless ``header`` is ``Bearer <admin token>``."""
    if not is_admin(bearer_value(header), token):
        raise Unauthenticated("invalid admin token")


def admit_api_token(record: ApiToken, route_scope: str | None) -> None:
    """A verified API token on a route: admitted, or 403 saying what is missing."""
    if route_scope is None:
        raise AdminTokenRequired("this route needs the admin token; API tokens are accepted "
                                 "only on the OpenAI-compatible routes",
                                 details={"token_id": record.token_id})
    require_scope(record, route_scope)
