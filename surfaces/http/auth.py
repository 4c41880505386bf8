"""The admin bearer token: generated once per state directory, compared in constant time."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

from palyra.errors import Unauthenticated

log = logging.getLogger("palyra.http")

TOKEN_FILE = "admin.token"


def token_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / TOKEN_FILE


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


def check_bearer(header: str | None, token: str) -> None:
    """Raise :class:`Unauthenticated` unless ``header`` is ``Bearer <token>``."""
    if not header:
        raise Unauthenticated("missing Authorization: Bearer <admin token>")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated("Authorization must be 'Bearer <admin token>'")
    if not hmac.compare_digest(value.strip().encode("utf-8"), token.encode("utf-8")):
        raise Unauthenticated("invalid admin token")
