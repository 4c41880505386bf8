"""``palyra``: the operator CLI.

``journal``, ``doctor`` and ``support-bundle`` read the state directory directly; every
other command talks to a running ``palyrad`` over HTTP (``--url``, default ``$PALYRA_URL`` or
http://127.0.0.1:7142) with the admin token from ``--token``, ``$PALYRA_ADMIN_TOKEN``
or ``<state-dir>/admin.token``. ``--json`` prints machine-readable output (one JSON
document, or one JSON object per line for ``send --follow``).

Exit codes: 0 success, 1 a check failed (or the daemon refused the request), 2 usage
error, 3 daemon unreachable.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from typing import Any

import orjson

from palyra.access.tokens import ADMIN_TOKEN_FILE
from palyra.errors import InvalidInput, SecretLeak
from palyra.journal.store import Reader, db_path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_URL = "http://127.0.0.1:7142"
TERMINAL = ("done", "failed", "cancelled")


class CliError(Exception):
    def __init__(self, message: str, code: int, data: Any = None) -> None:
        super().__init__(message)
        self.message, self.code, self.data = message, code, data


def _opt(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


def _state_dir(args: argparse.Namespace) -> str:
    return _opt(args, "state_dir") or os.environ.get("PALYRA_STATE_DIR", ".palyra-state")


def _print(data: object, as_json: bool, human: str) -> None:
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() if as_json else human)


def _given(**fields: Any) -> dict[str, Any]:
    """The fields that are not None (a request body of the options given)."""
    return {k: v for k, v in fields.items() if v is not None}


def _journal(args: argparse.Namespace) -> Reader:
    """A reader of the state directory's journal; a usage error when there is none."""
    state = _state_dir(args)
    if not db_path(state).exists():
        raise CliError(f"no journal in {state}", EXIT_USAGE)
    return Reader(state)


# -- journal (local) --------------------------------------------------------------------


def cmd_journal_verify(args: argparse.Namespace) -> int:
    with _journal(args) as reader:
        report = reader.verify_chain()
    data = {
        "ok": report.ok, "events": report.events, "first_bad_seq": report.first_bad_seq,
        "reason": report.reason, "head_hash": report.head_hash,
    }
    human = (
        f"journal chain OK: {report.events} events, head {report.head_hash}"
        if report.ok
        else f"journal chain BROKEN at seq {report.first_bad_seq}: {report.reason}"
    )
    _print(data, _opt(args, "json", False), human)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_doctor(args: argparse.Namespace) -> int:
    from palyra.cli.doctor import run_doctor, run_rollback
    from palyra.errors import Conflict, NotFound

    if args.rollback:
        try:
            report = run_rollback(_state_dir(args), args.rollback, dry_run=args.dry_run, force=args.force)
        except (InvalidInput, NotFound) as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        except Conflict as exc:
            raise CliError(str(exc), EXIT_FAILED, {"ok": False, "error": str(exc), **exc.details}) from None
        lines = [f"doctor ({report['mode']}) of run {report['run_id']} on {report['state_dir']}"]
        lines += [f"  {a}" for a in report["actions"]] or ["  (nothing to undo)"]
        _print(report, _opt(args, "json", False), "\n".join(lines))
        return EXIT_OK
    try:
        report = run_doctor(_state_dir(args), config_path=args.config, only=args.only,
                            skip=args.skip, repair=args.repair or args.dry_run, dry_run=args.dry_run,
                            force=args.force,
                            url=_opt(args, "url") or os.environ.get("PALYRA_URL", DEFAULT_URL))
    except InvalidInput as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    _print(report, _opt(args, "json", False), "\n".join(_doctor_lines(report)))
    return EXIT_OK if report["ok"] else EXIT_FAILED


def _doctor_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"doctor ({report['mode']}) on {report['state_dir']}"]
    verb = "would" if report["mode"] == "repair_preview" else "did"
    for c in report["checks"]:
        if c.get("repaired"):
            lines.append(f"[ok] {c['id']}: {c['message_after']} (repaired; was: {c['message']})")
        else:
            mark = "ok" if c["ok"] else "FAIL" if c["severity"] == "blocking" else "WARN"
            lines.append(f"[{mark}] {c['id']}: {c['message']}")
            if not c["ok"] and c["fix_hint"]:
                lines.append(f"       fix: {c['fix_hint']}")
        step = c.get("repair_step")
        lines += [f"       {step} {verb if c['repair_status'] in ('planned', 'applied') else ''}: {a}"
                  .replace(" :", ":") for a in c.get("repair_actions", [])]
    if report.get("run_id"):
        lines.append(f"doctor run {report['run_id']}: undo with palyra doctor --rollback {report['run_id']}")
    return lines


def cmd_support_bundle_export(args: argparse.Namespace) -> int:
    from palyra.support_bundle import export_bundle

    try:
        bundle = export_bundle(_state_dir(args), args.output, config_path=args.config,
                               max_bytes=args.max_bytes)
    except InvalidInput as exc:
        raise CliError(exc.message, EXIT_USAGE) from None
    except SecretLeak as exc:
        raise CliError(exc.message, EXIT_FAILED, exc.envelope()) from None
    except OSError as exc:
        raise CliError(f"cannot write {args.output}: {exc.strerror or exc}", EXIT_FAILED) from None
    manifest = bundle.manifest
    data = {"output_path": os.path.abspath(args.output), "size_bytes": bundle.size_bytes,
            "members": list(bundle.members),
            "truncated": manifest["truncated"], "warnings": manifest["warnings"]}
    lines = [f"wrote {data['output_path']} ({bundle.size_bytes} bytes, "
             f"{len(bundle.members)} members: {', '.join(bundle.members)})"]
    lines += [f"  truncated: {t}" for t in manifest["truncated"]]
    lines += [f"  warning: {w}" for w in manifest["warnings"]]
    _print(data, _opt(args, "json", False), "\n".join(lines))
    return EXIT_OK


def cmd_journal_recent(args: argparse.Namespace) -> int:
    with _journal(args) as reader:
        rows = reader.recent(args.limit, args.kind)
    lines = [f"{r['seq']:>8}  {r['kind']:<24} {r['payload_json'][:80]}" for r in rows]
    _print(rows, _opt(args, "json", False), "\n".join(lines) or "(no events)")
    return EXIT_OK


# -- the daemon client ------------------------------------------------------------------


class Daemon:
    """A thin httpx client: JSON in, JSON out, errors as :class:`CliError`."""

    def __init__(self, url: str, token: str, timeout: float = 15.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.httpx = httpx
        self.client = httpx.Client(base_url=self.url, timeout=timeout,
                                   headers={"Authorization": f"Bearer {token}"})

    def close(self) -> None:
        self.client.close()

    def call(self, method: str, path: str, *, json: Any = None,
             params: dict[str, Any] | None = None) -> Any:
        return self._decode(self._send(method, path, json, params))

    def fetch(self, path: str, *, params: dict[str, Any] | None = None) -> bytes:
        """A GET whose body is not JSON (a CSV export); errors as :meth:`call`'s."""
        response = self._send("GET", path, None, params)
        if response.status_code >= 400:
            self._decode(response)
        return response.content

    def _send(self, method: str, path: str, json: Any, params: dict[str, Any] | None) -> Any:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            return self.client.request(method, path, json=json, params=params)
        except self.httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: Exception) -> CliError:
        return CliError(f"daemon unreachable at {self.url}: {exc or type(exc).__name__}",
                        EXIT_UNREACHABLE)

    def _decode(self, response: Any) -> Any:
        try:
            data = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            data = None
        if response.status_code >= 400:
            error = (data or {}).get("error", {}) if isinstance(data, dict) else {}
            code = error.get("code", f"http_{response.status_code}")
            message = error.get("message", response.reason_phrase)
            raise CliError(f"{code}: {message} (HTTP {response.status_code})", EXIT_FAILED, data)
        return data

    def events(self, run_id: str) -> Iterator[dict[str, Any]]:
        """The run's SSE stream as dicts, until it ends (after the terminal status)."""
        timeout = self.httpx.Timeout(15.0, read=90.0)  # the daemon sends keepalives
        try:
            with self.client.stream("GET", f"/admin/v1/runs/{run_id}/events",
                                    timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    self._decode(response)
                data: list[str] = []
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        data.append(line[5:].lstrip())
                    elif not line and data:
                        yield orjson.loads("\n".join(data))
                        data = []
        except self.httpx.TransportError as exc:
            raise self._unreachable(exc) from None


def _token(args: argparse.Namespace) -> str:
    token = _opt(args, "token") or os.environ.get("PALYRA_ADMIN_TOKEN")
    if token:
        return token.strip()
    path = os.path.join(_state_dir(args), ADMIN_TOKEN_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            token = fh.read().strip()
    except OSError as exc:
        raise CliError(f"no admin token: pass --token or --state-dir ({path}: "
                       f"{exc.strerror})", EXIT_USAGE) from None
    if not token:
        raise CliError(f"{path} is empty", EXIT_USAGE)
    return token


def _daemon(args: argparse.Namespace) -> Daemon:
    url = _opt(args, "url") or os.environ.get("PALYRA_URL", DEFAULT_URL)
    return Daemon(url, _token(args))


# -- commands -------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, d: Daemon) -> int:
    data = d.call("GET", "/admin/v1/status")
    down = [a["path"] for a in data["actors"] if not a["alive"] and "/runs/" not in a["path"]]
    lines = [
        f"palyrad {data['version']} (pid {data['pid']}), up {data['uptime_seconds']:.0f}s, "
        f"state dir {data['state_dir']}",
        f"provider {data['runtime']['provider'].get('model_id')} "
        f"({data['runtime']['provider'].get('health')}), routing {data['runtime']['routing_mode']}",
        f"journal head seq {data['journal']['head_seq']} ({data['journal']['last_event_kind']})",
        f"actors: {len(data['actors'])}, restarts {data['restarts_total']}"
        + (f", DOWN: {', '.join(down)}" if down else ""),
    ]
    lines += [f"  {a['path']:<32} {'up' if a['alive'] else 'DOWN':<5} restarts {a['restarts']}"
              for a in data["actors"]]
    _print(data, args.json, "\n".join(lines))
    return EXIT_FAILED if down else EXIT_OK


def cmd_diagnostics(args: argparse.Namespace, d: Daemon) -> int:
    data = d.call("GET", "/console/v1/diagnostics", params={"deadline_ms": args.deadline_ms})
    sup, journal = data["supervision"], data["journal"]
    lines = [
        f"actors: {len(sup['actors'])}, unresponsive: {', '.join(sup['unresponsive']) or 'none'}, "
        f"down: {', '.join(sup['down']) or 'none'}",
        f"journal: {journal['events']} events, {journal['size_bytes']} B + WAL "
        f"{journal['wal_size_bytes']} B, head {str(journal['chain_head'])[:16]}",
        f"runs: {data['runs']['by_state']}, background: {data['background']['by_state']}",
        f"incidents: {data['incidents']['active']} active, {data['incidents']['resolved']} resolved",
        f"provider: {data['provider']['kind']} circuit "
        f"{data['provider']['status'].get('circuit', {}).get('state')}",
        f"failures: {_failure_line(data.get('observability', {}))}",
        f"config fingerprint {data['config']['fingerprint'][:16]}, took {data['elapsed_ms']} ms",
    ]
    _print(data, args.json, "\n".join(lines))
    return EXIT_FAILED if sup["unresponsive"] or sup["down"] else EXIT_OK


def _failure_line(observability: dict[str, Any]) -> str:
    by_class = observability.get("counters", {}).get("failures", {})
    counts = ", ".join(f"{name.removesuffix('_failure')} {n}" for name, n in by_class.items() if n)
    recent = observability.get("recent_failures") or []
    last = f"; last: {recent[0]['operation']} {recent[0]['message'][:80]}" if recent else ""
    return (counts or "none") + last


def _event_line(event: dict[str, Any]) -> str:
    payload = event.get("payload") or {}
    seq = "" if event.get("seq") is None else event["seq"]
    if event["event_type"] == "status":
        detail = payload.get("kind", "")
        if payload.get("reply_text"):
            detail += f": {payload['reply_text']}"
        elif payload.get("last_error"):
            detail += f": {payload['last_error']}"
    elif event["event_type"] == "model_token":
        detail = repr(payload.get("token", ""))
    else:
        detail = orjson.dumps(payload).decode()[:100]
    return f"{seq:>5} {event['event_type']:<26} {detail}"


def cmd_send(args: argparse.Namespace, d: Daemon) -> int:
    body = {"text": args.text, "session_key": args.session, "principal": args.principal}
    accepted = d.call("POST", "/admin/v1/runs", json={k: v for k, v in body.items() if v})
    if not args.follow:
        _print(accepted, args.json, f"run {accepted['run_id']} accepted "
                                    f"(session {accepted['session_id']})")
        return EXIT_OK
    if not args.json:
        print(f"run {accepted['run_id']} accepted (session {accepted['session_id']})")
    final = None
    for event in d.events(accepted["run_id"]):
        print(orjson.dumps(event).decode() if args.json else _event_line(event), flush=True)
        if event["event_type"] == "status" and event["payload"].get("kind") in TERMINAL:
            final = event["payload"]["kind"]
    return EXIT_OK if final == "done" else EXIT_FAILED


def cmd_runs_list(args: argparse.Namespace, d: Daemon) -> int:
    data = d.call("GET", "/admin/v1/runs", params={"state": args.state, "limit": args.limit})
    lines = [f"{r['run_id']}  {r['state']:<11} {r['created_at_unix_ms']}  "
             f"{(r.get('reply_text') or r.get('last_error') or '')[:60]}" for r in data["runs"]]
    _print(data, args.json, "\n".join(lines) or "(no runs)")
    return EXIT_OK


def cmd_runs_show(args: argparse.Namespace, d: Daemon) -> int:
    run = d.call("GET", f"/admin/v1/runs/{args.run_id}")
    _print(run, args.json, "\n".join(f"{k}: {v}" for k, v in run.items()))
    return EXIT_OK


def cmd_runs_tape(args: argparse.Namespace, d: Daemon) -> int:
    page = d.call("GET", f"/admin/v1/runs/{args.run_id}/tape",
                  params={"after_seq": args.after_seq, "limit": args.limit})
    _print(page, args.json, "\n".join(_event_line(e) for e in page["events"]) or "(no events)")
    return EXIT_OK


def cmd_runs_cancel(args: argparse.Namespace, d: Daemon) -> int:
    reply = d.call("POST", f"/admin/v1/runs/{args.run_id}/cancel",
                   json={"reason": args.reason} if args.reason else {})
    human = (f"cancel requested for {reply['run_id']}" if reply["cancel_requested"]
             else f"run {reply['run_id']} is already {reply['state']}")
    _print(reply, args.json, human)
    return EXIT_OK


def cmd_approvals_list(args: argparse.Namespace, d: Daemon) -> int:
    data = d.call("GET", "/admin/v1/approvals",
                  params={"pending": None if args.all else "true", "run_id": args.run})
    lines = [f"{a['approval_id']}  run {a['run_id']}  {a['subject_id']:<24} "
             f"{a['decision'] or 'PENDING':<8} {a['request_summary'][:50]}"
             for a in data["approvals"]]
    _print(data, args.json, "\n".join(lines) or "(no approvals)")
    return EXIT_OK


def _decide(args: argparse.Namespace, d: Daemon, approved: bool) -> int:
    body = {"approved": approved, "reason": args.reason}
    if approved:
        body.update(scope=args.scope, ttl_ms=args.ttl_ms)
    decided = d.call("POST", f"/admin/v1/approvals/{args.approval_id}/decision",
                     json=_given(**body))
    _print(decided, args.json, f"{decided['approval_id']}: {decided['decision']} "
                               f"({decided['decision_scope']})")
    return EXIT_OK


def cmd_approvals_allow(args: argparse.Namespace, d: Daemon) -> int:
    return _decide(args, d, True)


def cmd_approvals_deny(args: argparse.Namespace, d: Daemon) -> int:
    return _decide(args, d, False)


def _policy_terms(p: dict[str, Any], sep: str = " ") -> str:
    """A budget policy's scope, metric, limits and action on one line."""
    return (f"{p['scope_kind']}:{p['scope_id'] or '*'}{sep}{p['metric_kind']} "
            f"{p['interval_kind']}{sep}soft {p['soft_limit_value']} hard {p['hard_limit_value']} "
            f"-> {p['action']}")


def cmd_budgets_list(args: argparse.Namespace, d: Daemon) -> int:
    data = d.call("GET", "/admin/v1/budgets")
    lines = [f"{p['policy_id']}  {_policy_terms(p, '  ')}{'' if p['enabled'] else ' (disabled)'}"
             for p in data["policies"]]
    _print(data, args.json, "\n".join(lines) or "(no budget policies)")
    return EXIT_OK


def cmd_usage_summary(args: argparse.Namespace, d: Daemon) -> int:
    data = d.call("GET", "/admin/v1/usage/summary", params={
        "start_at_unix_ms": args.start, "end_at_unix_ms": args.end, "bucket": args.bucket})
    t = data.get("totals", {})
    human = (f"runs {t.get('runs', 0)} (sessions {t.get('session_count', 0)}), tokens "
             f"{t.get('total_tokens', 0)} (prompt {t.get('prompt_tokens', 0)}, completion "
             f"{t.get('completion_tokens', 0)}), est. cost ${t.get('estimated_cost_usd', 0)}")
    _print(data, args.json, human)
    return EXIT_OK


def _token_line(t: dict[str, Any]) -> str:
    expires = t["expires_at_unix_ms"] or "never"
    used = t["last_used_at_unix_ms"] or "never"
    return (f"{t['token_id']}  {t['name']:<16} {t['prefix']}...  {t['state']:<7} "
            f"{','.join(t['scopes'])}  as {t['principal']}  {t['rate_limit_per_minute']}/min  "
            f"expires {expires}  last used {used}")


def cmd_tokens_create(args: argparse.Namespace, d: Daemon) -> int:
    body = _given(name=args.name, scopes=args.scope, principal=args.principal,
                  expires_in_s=args.expires_in, rate_limit_per_minute=args.rate_limit)
    made = d.call("POST", "/admin/v1/api-tokens", json=body)
    # the token goes to stdout (to be captured), the warning to stderr (to be seen)
    print("palyra: store this token now: it is shown only once and cannot be recovered",
          file=sys.stderr)
    _print(made, args.json, f"{made['token']}\n{_token_line(made)}")
    return EXIT_OK


def cmd_tokens_list(args: argparse.Namespace, d: Daemon) -> int:
    data = d.call("GET", "/admin/v1/api-tokens")
    _print(data, args.json, "\n".join(map(_token_line, data["api_tokens"])) or "(no API tokens)")
    return EXIT_OK


def cmd_tokens_revoke(args: argparse.Namespace, d: Daemon) -> int:
    record = d.call("POST", f"/admin/v1/api-tokens/{args.token_id}/revoke")
    _print(record, args.json, f"revoked {record['token_id']} ({record['name']}) at "
                              f"{record['revoked_at_unix_ms']}")
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    """Options valid before and after the command (``palyra --json status`` and
    ``palyra status --json``); SUPPRESS keeps a later position from resetting them."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    common.add_argument("--state-dir", default=argparse.SUPPRESS,
                        help="state directory (default $PALYRA_STATE_DIR or ./.palyra-state)")
    common.add_argument("--url", default=argparse.SUPPRESS,
                        help=f"daemon URL (default $PALYRA_URL or {DEFAULT_URL})")
    common.add_argument("--token", default=argparse.SUPPRESS,
                        help=f"admin token (default $PALYRA_ADMIN_TOKEN or <state-dir>/{ADMIN_TOKEN_FILE})")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="palyra", description="Operate a Palyra runtime.",
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    def group(name: str, help_text: str) -> Any:
        return sub.add_parser(name, help=help_text).add_subparsers(dest=f"{name}_command",
                                                                   required=True)

    def leaf(where: Any, name: str, help_text: str, func: Any, *, remote: bool = True) -> Any:
        p = where.add_parser(name, help=help_text, parents=[common])
        p.set_defaults(func=func, remote=remote)
        return p

    journal = group("journal", "inspect the journal (reads the state directory)")
    leaf(journal, "verify", "recompute the hash chain", cmd_journal_verify, remote=False)
    recent = leaf(journal, "recent", "newest events first", cmd_journal_recent, remote=False)
    recent.add_argument("--limit", type=int, default=20)
    recent.add_argument("--kind")

    p = leaf(sub, "doctor", "check the state directory (works with the daemon down)", cmd_doctor,
             remote=False)
    p.add_argument("--config", default=os.environ.get("PALYRA_CONFIG"),
                   help="palyra.toml to validate (default $PALYRA_CONFIG, as palyrad)")
    p.add_argument("--repair", action="store_true",
                   help="apply the repairs (backed up; prints a run id for --rollback)")
    p.add_argument("--dry-run", action="store_true",
                   help="show what --repair or --rollback would do, writing nothing")
    p.add_argument("--force", action="store_true",
                   help="repair a journal too big to back up; roll back over files changed since")
    p.add_argument("--rollback", metavar="RUN_ID", help="undo the doctor run RUN_ID")
    p.add_argument("--only", action="append", metavar="ID", help="run only this check (repeatable)")
    p.add_argument("--skip", action="append", metavar="ID", help="skip this check (repeatable)")
    bundle = group("support-bundle", "redacted support bundles (reads the state directory)")
    p = leaf(bundle, "export", "write a redacted .tar.gz for support (works with the daemon down)",
             cmd_support_bundle_export, remote=False)
    p.add_argument("--config", help="palyra.toml to include (redacted)")
    p.add_argument("--output", required=True, help="the .tar.gz to write")
    p.add_argument("--max-bytes", type=int, default=512 * 1024,
                   help="size cap (default 512 KiB, at least 2048); over it, parts are trimmed")
    leaf(sub, "status", "daemon, actors and journal head", cmd_status)
    p = leaf(sub, "diagnostics", "one redacted snapshot of every subsystem", cmd_diagnostics)
    p.add_argument("--deadline-ms", type=int, default=1000, help="how long actor probes may take")
    send = leaf(sub, "send", "send a message (start a run)", cmd_send)
    send.add_argument("text")
    send.add_argument("--session", help="session key")
    send.add_argument("--principal")
    send.add_argument("--follow", action="store_true", help="stream the run's events")

    runs = group("runs", "inspect and cancel runs")
    p = leaf(runs, "list", "recent runs", cmd_runs_list)
    p.add_argument("--state", choices=("pending", "accepted", "in_progress", "done", "failed",
                                       "cancelled"))
    p.add_argument("--limit", type=int, default=20)
    leaf(runs, "show", "one run", cmd_runs_show).add_argument("run_id")
    p = leaf(runs, "tape", "a page of a run's tape", cmd_runs_tape)
    p.add_argument("run_id")
    p.add_argument("--after-seq", type=int, default=-1)
    p.add_argument("--limit", type=int, default=100)
    p = leaf(runs, "cancel", "request cancellation", cmd_runs_cancel)
    p.add_argument("run_id")
    p.add_argument("--reason")

    approvals = group("approvals", "pending tool approvals")
    p = leaf(approvals, "list", "pending approvals (--all: every one)", cmd_approvals_list)
    p.add_argument("--all", action="store_true")
    p.add_argument("--run", help="only this run's")
    p = leaf(approvals, "allow", "allow a pending approval", cmd_approvals_allow)
    p.add_argument("approval_id")
    p.add_argument("--scope", choices=("once", "session", "timeboxed"), default="once")
    p.add_argument("--ttl-ms", type=int)
    p.add_argument("--reason")
    p = leaf(approvals, "deny", "deny a pending approval", cmd_approvals_deny)
    p.add_argument("approval_id")
    p.add_argument("--reason")

    budgets = group("budgets", "usage budget policies")
    leaf(budgets, "list", "budget policies", cmd_budgets_list)
    usage = group("usage", "usage reports")
    p = leaf(usage, "summary", "totals over a window (default: the last 30 days)",
             cmd_usage_summary)
    p.add_argument("--start", type=int, help="start_at_unix_ms")
    p.add_argument("--end", type=int, help="end_at_unix_ms")
    p.add_argument("--bucket", choices=("auto", "hour", "day"), default="auto")
    tokens = group("tokens", "API tokens for the OpenAI-compatible routes")
    p = leaf(tokens, "create", "create a token (printed once: store it)", cmd_tokens_create)
    p.add_argument("name")
    p.add_argument("--scope", action="append", required=True, metavar="SCOPE",
                   help="models.read, chat.create or compat.* (repeatable)")
    p.add_argument("--principal", help="whom its runs belong to (default api:NAME)")
    p.add_argument("--expires-in", type=int, metavar="SECONDS", help="default: never")
    p.add_argument("--rate-limit", type=int, metavar="N", help="requests per minute (default 120)")
    leaf(tokens, "list", "tokens (never their values)", cmd_tokens_list)
    leaf(tokens, "revoke", "revoke a token at once", cmd_tokens_revoke).add_argument("token_id")

    from palyra.cli import console  # its commands use this module's client and printer

    console.register(sub, common, group, leaf, budgets=budgets, usage=usage)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    args.json = _opt(args, "json", False)
    daemon: Daemon | None = None
    try:
        if not args.remote:
            return int(args.func(args))
        daemon = _daemon(args)
        return int(args.func(args, daemon))
    except CliError as exc:
        if args.json and exc.data is not None:
            print(orjson.dumps(exc.data, option=orjson.OPT_INDENT_2).decode())
        print(f"palyra: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_FAILED
    finally:
        if daemon is not None:
            daemon.close()


if __name__ == "__main__":
    # Through the package module: palyra.cli.console imports it, and its CliError must be
    # the class main() catches, not a second copy in __main__.
    from palyra.cli.main import main as package_main

    sys.exit(package_main())
