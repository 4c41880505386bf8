"""Secret redaction for everything Palyra persists or exports.

Two redactors live here, because upstream has two and they serve different readers.

**Payload redaction** (:func:`sanitize_payload`, :func:`sanitize_value`; spec §2.4, first
list) runs on every journal event, tape event, approval and memory text before it is
stored. It works on JSON: values under sensitive keys become ``"<redacted>"`` whatever
their type, string values that look like credentials are replaced whole, and strings
that hold embedded JSON are walked too and re-serialised. Payloads that are not UTF-8 or
not JSON are never stored at all; a small ``{"redacted":true,"reason":...,"bytes":N}``
stub takes their place, since we cannot tell what is inside them.

**Diagnostics redaction** (:func:`redact_diagnostics`, :func:`redact_url`,
:func:`redact_message`; second list) runs on diagnostics snapshots and support bundles,
which leave the host. It uses upstream's wider key list (``session``, ``sig``, ``bearer``,
cloud signing parameters) and additionally rewrites URLs (userinfo, sensitive query and
fragment parameters) and free-text error messages (``key=value`` assignments, ``Bearer``
credentials). :func:`contains_secret` is the last line of defence for bundles: the
writer refuses to write if a known secret value still occurs in the output.

Where we deliberately differ from upstream:

* **Token counts are kept.** Upstream's ``token`` substring rule redacts
  ``usage.prompt_tokens`` and friends, which makes usage accounting on the tape useless.
  A key whose snake_case form is one of the known counters (``prompt_tokens``,
  ``max_tokens``, ``token_count``, ...) or ends in ``_tokens`` / ``_token_count`` is kept
  when its value is a number or null. A counter key that is sensitive for another reason
  too (``secret_tokens``, ``session_tokens``) is still redacted, and a string under a
  counter key is still redacted: only numbers are harmless. OpenAI's
  ``*_tokens_details`` objects (``{"cached_tokens": 0, ...}``) keep their numeric
  entries; anything else inside them is redacted.
* **``keep_keys``.** The tape's ``model_token`` event carries the streamed model text
  under the key ``token``; upstream stores ``"token":"<redacted>"`` for every one. The
  caller passes ``keep_keys=frozenset({"token"})`` for that event type. The allowlist
  applies to top-level keys only (a ``token`` nested deeper is still a credential) and
  only lifts the *key* rule: the kept value is still checked like any other string.
* **Key spelling.** Keys are also matched after normalising non-alphanumerics to ``_``
  and with underscores removed, so ``x-api-key``, ``privateKey`` and ``vaultRef`` are
  caught; upstream's payload list matches only the raw lower-case key.
* **URL userinfo** becomes ``<redacted>@host`` rather than being dropped, so a reader can
  see that credentials were present and removed.
* **Palyra API tokens** (``palyra_`` + base64url) are credentials wherever they appear:
  a string holding one is replaced whole in payloads, and the token itself is cut out
  of diagnostics text.
* **Depth bound.** Nesting deeper than :data:`MAX_DEPTH` is replaced by ``"<redacted>"``:
  no legitimate payload is that deep, and a bounded walk cannot exhaust the stack.

All redactors are pure, return new objects, and are idempotent: redacting redacted
output changes nothing, so re-sanitising a stored payload (replay, export) is safe.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Set
from typing import Any
from urllib.parse import unquote

import orjson

__all__ = [
    "MAX_DEPTH",
    "MIN_SECRET_LEN",
    "PALYRA_TOKEN_RE",
    "REDACTED",
    "contains_secret",
    "dumps_payload",
    "redact_diagnostics",
    "redact_message",
    "redact_url",
    "sanitize_payload",
    "sanitize_value",
]

REDACTED = "<redacted>"

# Anything nested deeper than this is replaced wholesale (see module docstring). Well
# under Python's recursion limit and orjson's 255-level serialisation limit.
MAX_DEPTH = 100

# Secret values shorter than this are skipped by contains_secret: short strings ("true",
# "admin") occur in any document by chance, and a refusal on them would be noise.
MIN_SECRET_LEN = 8

# --- key lists ------------------------------------------------------------------------

# §2.4 first list: journal/tape/approvals/memory payloads (substring match).
_PAYLOAD_KEY_MARKERS = (
    "secret",
    "token",
    "password",
    "passwd",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "credential",
    "private_key",
    "proof",
    "signature",
)

# Keys whose camelCase/snake_case *words* equal one of these are sensitive. A word match,
# not a substring, so "spinner" and "pinned" stay readable.
_PIN_WORDS = frozenset({"pin", "pincode"})

# §2.4 second list: diagnostics and support bundles (substring match on normalised key).
_DIAGNOSTIC_KEY_MARKERS = (
    "access_token",
    "api_key",
    "apikey",
    "authorization",
    "bearer",
    "client_secret",
    "cookie",
    "credential",
    "password",
    "private_key",
    "refresh_token",
    "secret",
    "session",
    "set_cookie",
    "signature",
    "sig",
    "token",
    "vault_ref",
    "x_amz_credential",
    "x_amz_security_token",
    "x_amz_signature",
    "x_goog_credential",
    "x_goog_signature",
)

_URL_KEY_MARKERS = ("url", "uri", "endpoint", "location")
_MESSAGE_KEY_MARKERS = ("error", "reason", "message", "detail")

_TOKEN_COUNT_KEYS = frozenset(
    {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "max_tokens",
        "tokens",
        "token_count",
        "input_tokens",
        "output_tokens",
        "budget_tokens",
        "cached_tokens",
        "reasoning_tokens",
    }
)

# Substrings (matched on the lower-cased value) that make a string value look like a
# credential on its own, wherever it appears.
_SECRET_VALUE_MARKERS = (
    "bearer ",
    "api_key=",
    "secret=",
    "token=",
    "refresh_token",
    "oauth_refresh_token",
    "set-cookie:",
    "cookie:",
)

# --- key classification ---------------------------------------------------------------

_WORD_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def _key_words(key: str) -> list[str]:
    """Split a key into lower-case words on camelCase and any non-alphanumeric."""
    return [word.lower() for word in _WORD_RE.findall(key)]


def _normalise_key(key: str) -> str:
    # Upstream palyra-common's normalisation: ASCII alphanumerics lower-cased, anything
    # else (including "-", ".", spaces, non-ASCII) becomes "_".
    return "".join(ch.lower() if ch.isascii() and ch.isalnum() else "_" for ch in key)


def _matches_marker(key: str, markers: tuple[str, ...]) -> bool:
    normalised = _normalise_key(key)
    # The compact form catches camelCase spellings of multi-word markers ("privateKey",
    # "vaultRef"). Only multi-word markers: "sig" would otherwise match "is_ignored".
    compact = normalised.replace("_", "")
    return any(m in normalised or ("_" in m and m.replace("_", "") in compact) for m in markers)


@functools.lru_cache(maxsize=8192)  # keys repeat endlessly; classifying one costs ~2 µs
def _is_payload_key_sensitive(key: str) -> bool:
    if _matches_marker(key, _PAYLOAD_KEY_MARKERS):
        return True
    return any(word in _PIN_WORDS for word in _key_words(key))


@functools.lru_cache(maxsize=8192)
def _is_diagnostic_key_sensitive(key: str) -> bool:
    return _matches_marker(key, _DIAGNOSTIC_KEY_MARKERS)


@functools.lru_cache(maxsize=4096)
def _is_count_key(key: str, markers: tuple[str, ...]) -> bool:
    """True for token-counter keys that are sensitive *only* because they say "token"."""
    snake = "_".join(_key_words(key))
    if not (
        snake in _TOKEN_COUNT_KEYS or snake.endswith("_tokens") or snake.endswith("_token_count")
    ):
        return False
    # "secret_tokens" stays sensitive: strip the word that made it a counter and check
    # what is left. "_" (not "") so no marker can be glued together from the pieces.
    remainder = snake.replace("token", "_")
    return not _matches_marker(remainder, markers)


def _is_number_or_null(value: Any) -> bool:
    # bool is an int subclass but a flag is not a count; keep the exemption narrow.
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _is_token_details_key(key: str, markers: tuple[str, ...]) -> bool:
    snake = "_".join(_key_words(key))
    if not snake.endswith("_tokens_details"):
        return False
    return not _matches_marker(snake.replace("token", "_"), markers)


def _token_details(
    obj: dict[Any, Any], is_sensitive: Callable[[str], bool], markers: tuple[str, ...]
) -> tuple[dict[Any, Any], bool]:
    """Keep the counters of a ``*_tokens_details`` object, redact everything else.

    These objects hold only counts (``cached_tokens``, ``audio_tokens``, ...); anything
    that is not a number or null in there is unexpected, and unexpected is redacted.
    """
    out: dict[Any, Any] = {}
    redacted = False
    for key, value in obj.items():
        name = key if isinstance(key, str) else str(key)
        if _is_number_or_null(value) and (not is_sensitive(name) or _is_count_key(name, markers)):
            out[key] = value
        else:
            out[key] = REDACTED
            redacted = True
    return out, redacted


_SECRET_VALUE_RE = re.compile("|".join(map(re.escape, _SECRET_VALUE_MARKERS)), re.IGNORECASE)


# Palyra API tokens ("palyra_" + base64url of 32 bytes) in any text. Requiring 32+
# characters with a digit or capital keeps our own snake_case identifiers (metric names,
# "palyra_console_session", ...) out.
PALYRA_TOKEN_RE = re.compile(r"\bpalyra_(?=[a-z0-9_-]*[A-Z0-9])[A-Za-z0-9_-]{32,}")


def _looks_like_secret(text: str) -> bool:
    return (text[:3].lower() == "sk-" or _SECRET_VALUE_RE.search(text) is not None
            or ("palyra_" in text and PALYRA_TOKEN_RE.search(text) is not None))


_SQUASH = b"_-. :="


def _hint_words() -> tuple[bytes, ...]:
    """Every marker that could make the payload walk redact anything, squashed.

    Squashing drops separators from both sides, so "api-key", "apiKey" and "api_key"
    all contain "apikey". It only ever finds *more* hints than the walk would act on,
    never fewer, which is what makes the fast path below safe.
    """
    words = {*_PAYLOAD_KEY_MARKERS, *_SECRET_VALUE_MARKERS, *_PIN_WORDS}
    return tuple(sorted({w.encode().lower().translate(None, _SQUASH) for w in words}))


_HINT_WORDS = _hint_words()
# Numeric token counters are kept by the walk (quota fix of 13.2); remove them before
# looking for hints so usage blocks do not force the slow path.
_COUNTERS_RE = re.compile(
    rb'"(?:prompt|completion|total|cached|reasoning|input|output|max|budget)_tokens":(?:-?\d+|null)'
)


_HINT_SEARCH = re.compile(b"|".join(re.escape(w) for w in _HINT_WORDS))


def _may_need_redaction(raw: bytes) -> bool:
    lowered = raw.lower()
    if b"sk-" in lowered or b"palyra_" in lowered:
        return True
    if b'tokens":' in lowered:
        lowered = _COUNTERS_RE.sub(b"", lowered)
    return _HINT_SEARCH.search(lowered.translate(None, _SQUASH)) is not None


# --- payload redaction ----------------------------------------------------------------


def _stub(reason: str, size: int) -> tuple[str, bool]:
    return orjson.dumps({"redacted": True, "reason": reason, "bytes": size}).decode(), True


def dumps_payload(value: Any) -> bytes:
    """Compact JSON as :func:`sanitize_payload` writes it."""
    # OPT_NON_STR_KEYS: callers may hand us dicts with int keys; JSON turns them into
    # strings either way, and refusing them would drop a journal event over a key type.
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def _dumps(value: Any) -> str:
    return dumps_payload(value).decode()


def sanitize_payload(
    payload: bytes | str | dict[Any, Any] | list[Any] | None,
    keep_keys: Set[str] = frozenset(),
    *,
    serialized: bytes | None = None,
) -> tuple[str, bool]:
    """Redact a journal/tape payload; returns ``(compact_json_text, redacted)``.

    ``redacted`` is true when anything was replaced, or when the payload could not be
    stored as-is (non-UTF-8 or non-JSON input is replaced by a stub naming the reason
    and the byte count). ``keep_keys`` lifts the key rule for the named top-level keys
    (``{"token"}`` for ``model_token`` events).

    Raises ``TypeError`` (``orjson.JSONEncodeError``) for Python objects that JSON cannot
    represent (integers beyond 64 bits, arbitrary classes): that is a caller bug, and
    guessing a representation would store something nobody asked for.

    ``serialized`` is ``dumps_payload(payload)`` of a dict or list, from a caller that
    needed its size first; passing it spares dumping the payload twice.
    """
    if payload is None:
        return "{}", False
    if isinstance(payload, bytes | bytearray | memoryview):
        raw = bytes(payload)
        if not raw:
            return "{}", False
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return _stub("binary_or_non_utf8_payload", len(raw))
        return _sanitize_text(text, len(raw), keep_keys)
    if isinstance(payload, str):
        if not payload:
            return "{}", False
        try:
            size = len(payload.encode("utf-8"))
        except UnicodeEncodeError:
            # Lone surrogates: the text has no UTF-8 form, exactly like bad bytes.
            return _stub(
                "binary_or_non_utf8_payload", len(payload.encode("utf-8", "surrogatepass"))
            )
        return _sanitize_text(payload, size, keep_keys)
    if isinstance(payload, dict | list):
        raw = dumps_payload(payload) if serialized is None else serialized
        shallow = raw.count(b"{") + raw.count(b"[") <= MAX_DEPTH
        if shallow and not _may_need_redaction(raw):
            return raw.decode(), False
    value, redacted = sanitize_value(payload, keep_keys)
    return _dumps(value), redacted


def _sanitize_text(text: str, size: int, keep_keys: Set[str]) -> tuple[str, bool]:
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _stub("non_json_payload", size)
    value, redacted = sanitize_value(parsed, keep_keys)
    return _dumps(value), redacted


def sanitize_value(obj: Any, keep_keys: Set[str] = frozenset()) -> tuple[Any, bool]:
    """Apply the payload walk to an already-parsed JSON value; returns ``(new, redacted)``.

    The input is not modified. Tuples are treated as lists.
    """
    return _walk(obj, keep_keys, 0)


def _walk(value: Any, keep_keys: Set[str], depth: int) -> tuple[Any, bool]:
    if depth > MAX_DEPTH:
        return REDACTED, True
    if isinstance(value, dict):
        return _walk_object(value, keep_keys, depth)
    if isinstance(value, list | tuple):
        out: list[Any] = []
        redacted = False
        for item in value:
            # Arrays inherit the key context: a list under a sensitive key never gets
            # here (the whole value is replaced), and a list under an ordinary key is
            # walked item by item with the same (empty) allowlist.
            new, hit = _walk(item, frozenset(), depth + 1)
            out.append(new)
            redacted |= hit
        return out, redacted
    if isinstance(value, str):
        return _walk_string(value, depth)
    return value, False


def _walk_object(obj: dict[Any, Any], keep_keys: Set[str], depth: int) -> tuple[Any, bool]:
    out: dict[Any, Any] = {}
    redacted = False
    for key, child in obj.items():
        name = key if isinstance(key, str) else str(key)
        if name not in keep_keys and _is_payload_key_sensitive(name):
            if _is_number_or_null(child) and _is_count_key(name, _PAYLOAD_KEY_MARKERS):
                out[key] = child
                continue
            if isinstance(child, dict) and _is_token_details_key(name, _PAYLOAD_KEY_MARKERS):
                out[key], hit = _token_details(
                    child, _is_payload_key_sensitive, _PAYLOAD_KEY_MARKERS
                )
                redacted |= hit
                continue
            out[key] = REDACTED
            redacted = True
            continue
        out[key], hit = _walk(child, frozenset(), depth + 1)
        redacted |= hit
    return out, redacted


def _walk_string(text: str, depth: int) -> tuple[str, bool]:
    changed = False
    if text.lstrip()[:1] in ("{", "["):
        # Tool inputs and provider responses often carry JSON inside a JSON string; a
        # credential in there is as stored as one at the top level.
        try:
            embedded = orjson.loads(text)
        except orjson.JSONDecodeError:
            embedded = None
        if isinstance(embedded, dict | list):
            new, hit = _walk(embedded, frozenset(), depth + 1)
            if hit:
                text = _dumps(new)
                changed = True
    # Checked on the final text (re-serialised or not) so a second pass sees exactly the
    # string the first pass decided on: this is what makes the walk idempotent.
    if _looks_like_secret(text):
        return REDACTED, True
    return text, changed


# --- diagnostics redaction ------------------------------------------------------------


def redact_diagnostics(obj: Any) -> Any:
    """Redact a diagnostics/support-bundle document (§2.4, second list); returns a copy."""
    return _redact_diag(obj, None, 0)


def _text_mode(key: str, inherited: str | None) -> str | None:
    """Which text redactor strings under ``key`` get: "url", "message" or None."""
    normalised = _normalise_key(key)
    if any(m in normalised for m in _URL_KEY_MARKERS):
        return "url"
    if any(m in normalised for m in _MESSAGE_KEY_MARKERS):
        return "message"
    # A neutral key keeps its parent's mode: in {"last_error": {"text": ...}} the text is
    # still an error message.
    return inherited


def _redact_diag(value: Any, mode: str | None, depth: int) -> Any:
    if depth > MAX_DEPTH:
        return REDACTED
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for k, child in value.items():
            name = k if isinstance(k, str) else str(k)
            child_mode = _text_mode(name, mode)
            if _is_diagnostic_key_sensitive(name):
                if _is_number_or_null(child) and _is_count_key(name, _DIAGNOSTIC_KEY_MARKERS):
                    out[k] = child
                elif isinstance(child, dict) and _is_token_details_key(
                    name, _DIAGNOSTIC_KEY_MARKERS
                ):
                    out[k], _ = _token_details(
                        child, _is_diagnostic_key_sensitive, _DIAGNOSTIC_KEY_MARKERS
                    )
                else:
                    out[k] = REDACTED
                continue
            out[k] = _redact_diag(child, child_mode, depth + 1)
        return out
    if isinstance(value, list | tuple):
        # Arrays inherit the key context: every string in "endpoints": [...] is a URL.
        return [_redact_diag(item, mode, depth + 1) for item in value]
    if isinstance(value, str):
        if mode == "url":
            return redact_url(value)
        if mode == "message":
            return redact_message(value)
        # Any other string can still quote a URL (a status line, a config value);
        # userinfo and signed query strings are never wanted in a bundle, whatever the key.
        # Nor is an API token, whatever the key.
        return PALYRA_TOKEN_RE.sub(REDACTED, _redact_urls_in_text(value))
    return value


def _is_sensitive_assignment(key: str, value: str) -> bool:
    if not value or not _is_diagnostic_key_sensitive(key):
        return False
    # "max_tokens=4096" in a message or query string is a count, not a credential.
    return not (_is_count_key(key, _DIAGNOSTIC_KEY_MARKERS) and _NUMBER_RE.fullmatch(value))


_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")


def _redact_params(raw: str) -> str:
    """Redact sensitive values in an ``a=1&b=2`` query or fragment, keeping the rest."""
    pairs = []
    for pair in raw.split("&"):
        name, sep, value = pair.partition("=")
        # Decode the name only for the check: "access%5Ftoken" is still access_token.
        if sep and _is_sensitive_assignment(unquote(name), value):
            pairs.append(f"{name}={REDACTED}")
        else:
            pairs.append(pair)
    return "&".join(pairs)


def _redact_userinfo(base: str) -> str:
    scheme, sep, rest = base.partition("://")
    if not sep:
        return base
    authority, slash, path = rest.partition("/")
    # rpartition: a password may itself contain "@"; the host never does.
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return base
    return f"{scheme}://{REDACTED}@{host}{slash}{path}"


def redact_url(text: str) -> str:
    """Redact a URL's userinfo and its sensitive query/fragment parameter values.

    ``https://u:p@host/x?api_key=k&page=2#access_token=t`` becomes
    ``https://<redacted>@host/x?api_key=<redacted>&page=2#access_token=<redacted>``.
    Text that is not a URL passes through unchanged unless it has a ``?``/``#`` part
    with sensitive parameters.
    """
    rest, hash_sep, fragment = text.partition("#")
    base, query_sep, query = rest.partition("?")
    out = _redact_userinfo(base)
    if query_sep:
        out += "?" + _redact_params(query)
    if hash_sep:
        out += "#" + _redact_params(fragment)
    return out


# A URL inside free text: a scheme, or a bare "www.". "<" and ">" end a URL so that an
# already-redacted "<redacted>@host" is never re-read as part of one.
_URL_IN_TEXT_RE = re.compile(r"(?i)\b(?:[a-z][a-z0-9+.\-]*://|www\.)[^\s\"'<>`]+")
_URL_TRAILING = ".,;:!?)]}"


def _redact_url_match(match: re.Match[str]) -> str:
    url = match.group(0)
    # Sentence punctuation after a URL is not part of it; keep it outside the rewrite.
    stripped = url.rstrip(_URL_TRAILING)
    return redact_url(stripped) + url[len(stripped) :]


def _redact_urls_in_text(text: str) -> str:
    return _URL_IN_TEXT_RE.sub(_redact_url_match, text)


# HTTP cookie headers quoted in a message: the value runs to the end of the line, since
# every "name=value;" in it is a cookie.
_COOKIE_HEADER_RE = re.compile(r"(?i)\b((?:set-)?cookie[ \t]*:[ \t]*)[^\r\n]+")

# "Bearer <credential>" anywhere, whatever key (if any) precedes it.
_BEARER_RE = re.compile(r"(?i)\b(bearer[ \t]+)[^\s,;\"'<>]+")

# key=value / key: value / "key": "value" / \"key\": \"value\" (JSON quoted inside a
# string). The key starts at a boundary of its own; separators never span a line break.
# The value is a quoted string, the redaction marker, or a bare run ending at whitespace
# or punctuation ("&" included, so a query string is handled pair by pair). An auth
# scheme word ("Basic abc") is kept and the credential after it is redacted.
_ASSIGNMENT_RE = re.compile(
    r"""(?<![A-Za-z0-9_.\-])
        (?P<key>(?P<q>\\?["']|)(?P<name>[A-Za-z0-9_.\-]+)(?P=q))
        (?P<sep>[ \t]*[=:][ \t]*)
        (?P<scheme>(?i:bearer|basic|digest|token)[ \t]+)?
        (?P<value>
            "(?:[^"\\\r\n]|\\.)*"?
          | '(?:[^'\\\r\n]|\\.)*'?
          | \\"(?:[^"\\\r\n]|\\[^"\r\n])*(?:\\")?
          | <redacted>
          | [^\s,;&)\]}<>"'`\\]+
        )
    """,
    re.VERBOSE,
)


def _redact_assignments(text: str) -> str:
    out: list[str] = []
    pos = 0
    while (match := _ASSIGNMENT_RE.search(text, pos)) is not None:
        name = match.group("name")
        value = match.group("value")
        quote = next((q for q in ('\\"', '"', "'") if value.startswith(q)), "")
        bare = value.strip("\\\"'")
        scheme = match.group("scheme") or ""
        if _is_sensitive_assignment(name, bare) or (scheme and _is_diagnostic_key_sensitive(name)):
            out.append(text[pos : match.start("value")])
            out.append(f"{quote}{REDACTED}{quote}")
            pos = match.end()
        else:
            # Resume right after the separator, not after the value: in
            # "error: token=abc" the value of "error" is itself an assignment to check.
            out.append(text[pos : match.end("sep")])
            pos = match.end("sep")
    out.append(text[pos:])
    return "".join(out)


def redact_message(text: str) -> str:
    """Redact credentials from free text (errors, reasons, details).

    URLs are redacted with :func:`redact_url`; ``Bearer <tok>`` becomes
    ``Bearer <redacted>``; ``key=value`` and ``key: value`` with a sensitive key (the
    diagnostics list) keep the key and lose the value; ``Cookie:`` headers lose the rest
    of the line.
    """
    text = _redact_urls_in_text(text)
    text = _COOKIE_HEADER_RE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BEARER_RE.sub(lambda m: m.group(1) + REDACTED, text)
    text = PALYRA_TOKEN_RE.sub(REDACTED, text)
    return _redact_assignments(text)


# --- leak check -----------------------------------------------------------------------


def contains_secret(text: str, secrets: Iterable[str]) -> list[str]:
    """Return the known secret values (``len >= MIN_SECRET_LEN``) that occur in ``text``.

    Also matches a secret's JSON-escaped form, since bundles are JSON and a secret with
    a quote or backslash appears escaped there. The result holds secret values: use it
    to decide and to count, never log it.
    """
    found: list[str] = []
    seen: set[str] = set()
    for secret in secrets:
        if not isinstance(secret, str) or len(secret) < MIN_SECRET_LEN or secret in seen:
            continue
        seen.add(secret)
        if secret in text:
            found.append(secret)
            continue
        try:
            escaped = orjson.dumps(secret).decode()[1:-1]
        except orjson.JSONEncodeError:
            continue
        if escaped != secret and escaped in text:
            found.append(secret)
    return found
