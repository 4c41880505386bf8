"""The redacted support bundle: one portable ``.tar.gz`` an operator can hand over.

Members (schema_version 1), each a JSON document listed in ``manifest.json`` with its
size and SHA-256:

* ``summary.json``: when, which Palyra and Python, which platform, where from;
* ``diagnostics.json``: the live runtime's snapshot when one is given, otherwise an
  offline summary read from the state directory (journal and WAL size, runs by state,
  chain head, incident counts);
* ``config.json``: the effective config and the file document, redacted, with the
  effective config's fingerprint;
* ``journal.json``: the newest journal events with ``hash``/``prev_hash`` and redacted
  payloads, and the result of ``verify_chain()`` (journal and tapes);
* ``failures.json``: recent failed runs (``last_error``) and self-healing incidents;
* ``doctor.json``: ``palyra doctor``'s report, as an opaque document.

Everything passes through the diagnostics redaction and a scrub of credential-shaped
text, then the size cap (progressive trimming, recorded in the manifest), then the
secret scan of :mod:`palyra.secret_scan`: a bundle that still holds a known secret is
refused (:class:`~palyra.errors.SecretLeak`) and never written. The state directory is
only read (the journal through a read-only connection), so this works with the daemon
down as well as beside a running runtime; it starts no threads.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import platform
import tarfile
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import apsw
import orjson

from palyra.clock import SYSTEM_CLOCK, Clock
from palyra.config import Config
from palyra.diagnostics import config_fingerprint, count_by_state, journal_summary, palyra_version
from palyra.errors import InvalidInput, PalyraError
from palyra.healing.store import HealingQueries
from palyra.journal.store import Reader, db_path
from palyra.redaction import redact_diagnostics
from palyra.secret_scan import known_secrets as collect_secrets
from palyra.secret_scan import refuse_leaks, scrub_patterns
from palyra.statelock import StateLock
from palyra.validation import is_int

__all__ = ["DEFAULT_MAX_BYTES", "MIN_MAX_BYTES", "SCHEMA_VERSION", "Bundle", "build_bundle",
           "export_bundle", "write_bundle"]

SCHEMA_VERSION = 1
DEFAULT_MAX_BYTES = 512 * 1024
MIN_MAX_BYTES = 2048
DEFAULT_RECENT_EVENTS = 64
MAX_RECENT_EVENTS = 500  # the journal reader's own clamp
RECENT_FAILURES = 20
MANIFEST = "manifest.json"
ARCHIVE_ROOT = "palyra-support-bundle"
# Parts of a live diagnostics snapshot that are long lists, dropped first when over the cap.
_BULKY_DIAGNOSTICS = (("supervision", "actors"), ("supervision", "recent_events"),
                      ("governance", "recent_routing"))


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A bundle that passed the secret scan: the archive bytes and what is in them."""

    archive: bytes
    manifest: dict[str, Any]
    members: dict[str, bytes]  # name -> serialized bytes, manifest.json included

    @property
    def size_bytes(self) -> int:
        return len(self.archive)


# -- collecting ---------------------------------------------------------------------------


def _summary(state_dir: Path, generated_at: int, live: bool) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at_unix_ms": generated_at,
        "source": "runtime" if live else "offline",
        "state_dir": str(state_dir),
        "build": {"palyra_version": palyra_version(), "python_version": platform.python_version(),
                  "python_implementation": platform.python_implementation()},
        "platform": {"os": platform.system().lower(), "release": platform.release(),
                     "arch": platform.machine()},
    }


def _config(config: Config | None, config_path: str | None,
            warnings: list[str]) -> tuple[dict[str, Any], list[Any]]:
    """The config member and the unredacted documents (for the secret scan)."""
    from palyra.config import load_config

    out: dict[str, Any] = {"path": config_path, "fingerprint_sha256": None, "effective": None,
                           "document": None, "error": None}
    if config_path:
        try:
            with open(config_path, "rb") as fh:
                out["document"] = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
    if config is None:
        try:
            config = load_config(config_path)
        except (PalyraError, ValueError) as exc:
            out["error"] = str(exc)
            warnings.append("the config does not load; the bundle has no effective config")
    if config is not None:
        out["effective"] = dataclasses.asdict(config)
        out["fingerprint_sha256"] = config_fingerprint(config)
    return out, [d for d in (out["effective"], out["document"]) if d is not None]


def _tables(conn: apsw.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _event(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "payload_json"}
    out["redacted"] = bool(row["redacted"])
    try:
        out["payload"] = orjson.loads(row["payload_json"])
    except orjson.JSONDecodeError:
        out["payload"] = row["payload_json"]
    return out


def _read_journal(reader: Reader, path: Path, recent: int) -> dict[str, Any]:
    report = dataclasses.asdict(reader.verify_chain())
    events = [_event(r) for r in reader.recent(recent)] if recent else []
    return {"db_path": str(path), "available": True, "hash_chain_enabled": True,
            "latest_hash": report["head_hash"], "events_total": reader.count(),
            "recent_events": events, "verify_chain": report}


def _read_failures(conn: apsw.Connection, tables: set[str], warnings: list[str]) -> dict[str, Any]:
    runs = [dict(zip(("run_ulid", "state", "last_error", "termination_reason", "provider_id",
                      "model_id", "completed_at_unix_ms"), row, strict=True))
            for row in conn.execute(
                "SELECT run_ulid, state, last_error, termination_reason, provider_id, model_id,"
                " completed_at_unix_ms FROM orchestrator_runs WHERE state = 'failed'"
                " ORDER BY updated_at_unix_ms DESC LIMIT ?", (RECENT_FAILURES,))]
    out: dict[str, Any] = {"failed_runs": runs, "incidents": None, "incident_summary": None}
    if "runtime_incidents" in tables:  # older journals predate self-healing
        queries = HealingQueries(conn)
        out["incidents"] = [i.to_dict() for i in queries.incidents(limit=RECENT_FAILURES)]
        out["incident_summary"] = queries.summary()
    else:
        warnings.append("the journal has no runtime_incidents table (schema predates it)")
    return out


def _read_state(state_dir: Path, recent: int,
                warnings: list[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(journal, failures, offline summary) read through one read-only connection."""
    path = db_path(state_dir)
    offline: dict[str, Any] = {"source": "offline", "runtime_pid": StateLock(state_dir).holder_pid()}
    if not path.exists():
        warnings.append(f"no journal at {path}")
        return {"db_path": str(path), "available": False}, {}, offline
    try:
        with Reader.inspect(path) as reader:
            tables = _tables(reader.conn)
            journal = _read_journal(reader, path, recent)
            failures = _read_failures(reader.conn, tables, warnings)
            offline["journal"] = journal_summary(reader.conn, path)
            offline["runs"] = {"by_state": count_by_state(reader.conn, "orchestrator_runs")}
            offline["incidents"] = failures["incident_summary"]
    except apsw.Error as exc:
        warnings.append(f"the journal could not be read: {type(exc).__name__}")
        return {"db_path": str(path), "available": False, "error": str(exc)}, {}, offline
    return journal, failures, offline


def _doctor(state_dir: Path, config_path: str | None, warnings: list[str]) -> dict[str, Any]:
    from palyra.cli.doctor import run_doctor

    try:
        return run_doctor(state_dir, config_path=config_path)
    except Exception as exc:  # noqa: BLE001 - a failing doctor is reported, not fatal
        warnings.append(f"doctor failed: {type(exc).__name__}")
        return {"error": f"{type(exc).__name__}: {exc}"}


# -- fitting under the cap ----------------------------------------------------------------


def _archive(members: dict[str, bytes], mtime: int) -> bytes:
    """A reproducible ustar archive, gzipped (fixed owner, mode and times)."""
    raw = io.BytesIO()
    with (gzip.GzipFile(fileobj=raw, mode="wb", mtime=mtime) as gz,
          tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar):
        for name, data in members.items():
            info = tarfile.TarInfo(f"{ARCHIVE_ROOT}/{name}")
            info.size, info.mtime, info.mode = len(data), mtime, 0o600
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


class _Packer:
    """Serializes the documents with a manifest and says whether they fit the cap."""

    def __init__(self, max_bytes: int, generated_at: int, warnings: list[str]) -> None:
        self.max_bytes, self.generated_at, self.warnings = max_bytes, generated_at, warnings
        self.truncated: list[str] = []

    def pack(self, docs: dict[str, Any]) -> Bundle | None:
        members = {name: orjson.dumps(doc, default=str, option=orjson.OPT_INDENT_2)
                   for name, doc in docs.items()}
        manifest = {
            "schema_version": SCHEMA_VERSION, "generated_at_unix_ms": self.generated_at,
            "max_bytes": self.max_bytes,
            "members": [{"name": name, "size_bytes": len(data),
                         "sha256": hashlib.sha256(data).hexdigest()}
                        for name, data in members.items()],
            "truncated": list(self.truncated), "warnings": list(self.warnings),
        }
        members[MANIFEST] = orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
        # The cap holds for the serialized members and for the archive alike (tar headers
        # can outweigh a tiny stub's compression).
        if sum(map(len, members.values())) > self.max_bytes:
            return None
        archive = _archive(members, self.generated_at // 1000)
        return Bundle(archive, manifest, members) if len(archive) <= self.max_bytes else None


def _drop_bulky(docs: dict[str, Any]) -> list[str]:
    dropped = []
    if docs["config.json"].get("document") is not None:
        docs["config.json"]["document"] = None
        dropped.append("config.document")
    for section, key in _BULKY_DIAGNOSTICS:
        part = docs["diagnostics.json"].get(section)
        if isinstance(part, dict) and key in part:
            del part[key]
            dropped.append(f"diagnostics.{section}.{key}")
    return dropped


def _halve_events(docs: dict[str, Any], packer: _Packer) -> Bundle | None:
    journal = docs["journal.json"]
    events = journal.get("recent_events") or []
    total, mark = len(events), len(packer.truncated)
    while events:
        events = events[: len(events) // 2]
        journal["recent_events"] = events
        packer.truncated[mark:] = [f"journal.recent_events: kept {len(events)} of {total}"]
        if bundle := packer.pack(docs):
            return bundle
    return None


def _stub(docs: dict[str, Any]) -> dict[str, Any]:
    journal, doctor = docs["journal.json"], docs["doctor.json"]
    summary = dict(docs["summary.json"], minimal_stub=True,
                   journal_events=journal.get("events_total"),
                   journal_chain_ok=(journal.get("verify_chain") or {}).get("ok"),
                   doctor_ok=doctor.get("ok"))
    return {"summary.json": summary}


def _fit(docs: dict[str, Any], packer: _Packer) -> Bundle:
    """Pack, trimming progressively (as upstream) until the bundle fits the cap: the config
    document and bulky diagnostics, then journal events (halved), then doctor checks,
    then everything but a minimal stub."""
    if bundle := packer.pack(docs):
        return bundle
    dropped = _drop_bulky(docs)
    if dropped:
        packer.truncated += dropped
        if bundle := packer.pack(docs):
            return bundle
    if bundle := _halve_events(docs, packer):
        return bundle
    if "checks" in docs["doctor.json"]:
        docs["doctor.json"] = {k: v for k, v in docs["doctor.json"].items() if k != "checks"}
        packer.truncated.append("doctor.checks")
        if bundle := packer.pack(docs):
            return bundle
    packer.truncated.append("minimal_stub: every member but summary.json dropped")
    # The stub is a few hundred bytes and the floor (MIN_MAX_BYTES) holds it; dropping
    # the warnings is only a belt for an unusually long state_dir path.
    if bundle := packer.pack(_stub(docs)):
        return bundle
    packer.warnings.clear()
    if bundle := packer.pack(_stub(docs)):
        return bundle
    raise InvalidInput(f"max_bytes {packer.max_bytes} cannot hold even the minimal stub",
                       details={"field": "max_bytes"})


# -- the public face ----------------------------------------------------------------------


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if not is_int(value) or value < low or (
            high is not None and value > high):
        bound = f">= {low}" if high is None else f"within {low}..{high}"
        raise InvalidInput(f"{name} must be an integer {bound}", details={"field": name})
    return value


def build_bundle(state_dir: str | os.PathLike[str], *, config_path: str | None = None,
                 config: Config | None = None, diagnostics: dict[str, Any] | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, recent_events: int = DEFAULT_RECENT_EVENTS,
                 known_secrets: Iterable[str] = (), clock: Clock = SYSTEM_CLOCK) -> Bundle:
    """Collect, redact, fit and scan a support bundle of ``state_dir``; write nothing.

    ``diagnostics`` is a live runtime's snapshot (``rt.diagnostics()``); without it the
    bundle carries an offline summary. ``config`` is the effective config when the caller
    has one (a running runtime); otherwise it is loaded from ``config_path`` (defaults
    without one). ``known_secrets`` are scanned for on top of those the installation
    holds. Raises :class:`InvalidInput` for bad arguments and :class:`SecretLeak` when a
    secret survives redaction.
    """
    _check_int("max_bytes", max_bytes, MIN_MAX_BYTES)
    _check_int("recent_events", recent_events, 0, MAX_RECENT_EVENTS)
    state = Path(state_dir)
    if not state.is_dir():
        raise InvalidInput(f"no state directory at {state}", details={"field": "state_dir"})
    generated_at = clock.now_ms()
    warnings: list[str] = []
    config_doc, raw_configs = _config(config, config_path, warnings)
    journal, failures, offline = _read_state(state, recent_events, warnings)
    docs = {
        "summary.json": _summary(state, generated_at, diagnostics is not None),
        "diagnostics.json": diagnostics if diagnostics is not None else offline,
        "config.json": config_doc,
        "journal.json": journal,
        "failures.json": failures,
        "doctor.json": _doctor(state, config_path, warnings),
    }
    docs = {name: scrub_patterns(redact_diagnostics(doc)) for name, doc in docs.items()}
    bundle = _fit(docs, _Packer(max_bytes, generated_at, warnings))
    secrets = collect_secrets(state, documents=raw_configs, extra=known_secrets)
    refuse_leaks(bundle.members, secrets, "the support bundle")
    return bundle


def write_bundle(bundle: Bundle, output_path: str | os.PathLike[str]) -> Path:
    """Write the archive atomically (0600 temp file beside the target, then rename), so
    a reader never sees half a bundle and a failed write leaves nothing behind."""
    from palyra.cli.doctor.recovery import write_private

    path = Path(output_path)
    write_private(path, bundle.archive)
    return path


def export_bundle(state_dir: str | os.PathLike[str], output_path: str | os.PathLike[str],
                  **options: Any) -> Bundle:
    """:func:`build_bundle` then :func:`write_bundle`; a refused bundle writes nothing."""
    bundle = build_bundle(state_dir, **options)
    write_bundle(bundle, output_path)
    return bundle
