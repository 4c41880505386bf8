"""``palyra``: the operator CLI.

Exit codes: 0 success, 1 a check failed, 2 usage error, 3 daemon unreachable.
"""

from __future__ import annotations

import argparse
import os
import sys

import orjson

from palyra.journal.store import Reader, db_path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def _state_dir(args: argparse.Namespace) -> str:
    return args.state_dir or os.environ.get("PALYRA_STATE_DIR", ".palyra-state")


def _print(data: object, as_json: bool, human: str) -> None:
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() if as_json else human)


def cmd_journal_verify(args: argparse.Namespace) -> int:
    state = _state_dir(args)
    if not db_path(state).exists():
        print(f"palyra: no journal in {state}", file=sys.stderr)
        return EXIT_USAGE
    with Reader(state) as reader:
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
    _print(data, args.json, human)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_journal_recent(args: argparse.Namespace) -> int:
    state = _state_dir(args)
    if not db_path(state).exists():
        print(f"palyra: no journal in {state}", file=sys.stderr)
        return EXIT_USAGE
    with Reader(state) as reader:
        rows = reader.recent(args.limit, args.kind)
    lines = [f"{r['seq']:>8}  {r['kind']:<24} {r['payload_json'][:80]}" for r in rows]
    _print(rows, args.json, "\n".join(lines) or "(no events)")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="palyra", description="Operate a Palyra runtime.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--state-dir", help="state directory (default $PALYRA_STATE_DIR)")
    sub = parser.add_subparsers(dest="command", required=True)
    journal = sub.add_parser("journal", help="inspect the journal").add_subparsers(
        dest="journal_command", required=True
    )
    verify = journal.add_parser("verify", help="recompute the hash chain")
    verify.set_defaults(func=cmd_journal_verify)
    recent = journal.add_parser("recent", help="newest events first")
    recent.add_argument("--limit", type=int, default=20)
    recent.add_argument("--kind")
    recent.set_defaults(func=cmd_journal_recent)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
