"""The last line of defence for exports: which secrets the runtime knows, a scrub of
secret-looking text, and a scan of the serialized output for both.

Redaction (:mod:`palyra.redaction`) decides by key and by shape; it cannot know that a
neutral-looking string is the admin token. So before a support bundle is written, every
member's bytes are searched for every secret value this installation holds: the admin
token (file and ``PALYRA_ADMIN_TOKEN``), credential-named environment variables (provider
API keys), every value the diagnostics redaction replaces in the config, and whatever the
caller adds. A hit refuses the export; the error names the member, never the value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from palyra.access.tokens import ADMIN_TOKEN_FILE
from palyra.errors import SecretLeak
from palyra.redaction import (
    MIN_SECRET_LEN,
    PALYRA_TOKEN_RE,
    REDACTED,
    contains_secret,
    redact_diagnostics,
)

__all__ = ["admin_token", "find_leaks", "known_secrets", "refuse_leaks", "scrub_patterns"]

# Environment variable names that hold credentials. Narrower than the diagnostics key
# list on purpose: "session" or "sig" would pick up XDG_SESSION_* and friends, whose
# values are not secrets and could occur in a bundle by chance (a refused bundle).
_ENV_MARKERS = ("api_key", "apikey", "token", "secret", "password", "passwd", "credential",
                "private_key")
# ..._TOKEN_FILE and the like hold a path to the secret, not the secret.
_ENV_PATH_SUFFIXES = ("_file", "_path", "_dir")

# Shapes of credentials that may sit in free text under a neutral key (a user message, a
# tool output) where the key-driven redaction does not look.
_PATTERNS = {
    "bearer_credential": re.compile(r"(?i)\b(bearer[ \t]+)[A-Za-z0-9._~+/=-]{8,}"),
    "sk_api_key": re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"),
    "palyra_api_token": PALYRA_TOKEN_RE,
}


def admin_token(state_dir: str | os.PathLike[str]) -> str | None:
    try:
        return (Path(state_dir) / ADMIN_TOKEN_FILE).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _env_secrets(environ: Mapping[str, str]) -> list[str]:
    out = []
    for name, value in environ.items():
        lowered = name.lower()
        if lowered.endswith(_ENV_PATH_SUFFIXES):
            continue
        if any(marker in lowered for marker in _ENV_MARKERS):
            out.append(value.strip())
    return out


def _replaced_values(original: Any, redacted: Any, out: list[str]) -> None:
    """Collect every string the redaction replaced wholesale (values under sensitive
    keys, credential-shaped strings) by walking the document and its redaction together."""
    if redacted == REDACTED and original != REDACTED:
        _strings(original, out)
    elif isinstance(original, dict) and isinstance(redacted, dict):
        for key, value in original.items():
            if key in redacted:
                _replaced_values(value, redacted[key], out)
    elif isinstance(original, list | tuple) and isinstance(redacted, list):
        for value, red in zip(original, redacted, strict=False):
            _replaced_values(value, red, out)


def _strings(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for child in value.values():
            _strings(child, out)
    elif isinstance(value, list | tuple):
        for child in value:
            _strings(child, out)


def known_secrets(state_dir: str | os.PathLike[str], *, documents: Iterable[Any] = (),
                  extra: Iterable[str] = (),
                  environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret value worth scanning for (``len >= MIN_SECRET_LEN``, deduplicated).

    ``documents`` are unredacted config documents (the effective config as a dict, the
    file as parsed); every value their diagnostics redaction replaces counts as secret.
    """
    env = os.environ if environ is None else environ
    found: list[str] = [admin_token(state_dir) or "", env.get("PALYRA_ADMIN_TOKEN", "").strip()]
    found += _env_secrets(env)
    for document in documents:
        _replaced_values(document, redact_diagnostics(document), found)
    found += [s for s in extra if isinstance(s, str)]
    return sorted({s for s in found if len(s) >= MIN_SECRET_LEN})


def scrub_patterns(value: Any) -> Any:
    """Replace credential-shaped text in every string of a JSON document (keys are kept)."""
    if isinstance(value, str):
        for pattern in _PATTERNS.values():
            # A pattern with a group keeps it ("Bearer "); the credential goes.
            value = pattern.sub(rf"\g<1>{REDACTED}" if pattern.groups else REDACTED, value)
        return value
    if isinstance(value, dict):
        return {key: scrub_patterns(child) for key, child in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_patterns(child) for child in value]
    return value


def find_leaks(members: Mapping[str, bytes], secrets: Iterable[str]) -> dict[str, list[str]]:
    """``{member: [finding kinds]}`` for members holding a known secret or a credential
    shape. The kinds are ``known_secret`` or a pattern name, never the value."""
    secrets = list(secrets)
    leaks: dict[str, list[str]] = {}
    for name, data in members.items():
        text = data.decode("utf-8", "replace")
        kinds = ["known_secret"] if contains_secret(text, secrets) else []
        kinds += [kind for kind, pattern in _PATTERNS.items() if pattern.search(text)]
        if kinds:
            leaks[name] = kinds
    return leaks


def refuse_leaks(members: Mapping[str, bytes], secrets: Iterable[str], what: str) -> None:
    """Raise :class:`SecretLeak` naming the members (and finding kinds) if any leaks."""
    leaks = find_leaks(members, secrets)
    if leaks:
        names = ", ".join(f"{name} ({', '.join(kinds)})" for name, kinds in sorted(leaks.items()))
        raise SecretLeak(f"refusing to write {what}: a secret survived redaction in {names}",
                         details={"members": leaks})
