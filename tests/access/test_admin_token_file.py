"""The admin token's file: one name, kept in :mod:`palyra.access.tokens`, that the daemon
writes and the CLI, doctor and bundle scrubbing read."""

from __future__ import annotations

import argparse
import ast
import os
from pathlib import Path

from palyra import secret_scan
from palyra.access.tokens import ADMIN_TOKEN_FILE
from palyra.cli import main as cli
from palyra.cli.doctor.checks import Doctor
from surfaces.http.auth import ensure_admin_token

ROOT = Path(__file__).resolve().parents[2]
DEFINED_IN = ROOT / "palyra" / "access" / "tokens.py"


def test_the_file_name_is_the_documented_one():
    assert ADMIN_TOKEN_FILE == "admin.token"  # README and operators' scripts name it


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def test_no_other_module_spells_the_file_name():
    spelled = []
    for package in ("palyra", "actors", "supervisors", "surfaces"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == DEFINED_IN:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            prose = _docstrings(tree)
            spelled += [
                f"{path.relative_to(ROOT)}:{node.lineno}"
                for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and isinstance(node.value, str)
                and ADMIN_TOKEN_FILE in node.value and id(node) not in prose
            ]
    assert spelled == []


def test_the_token_the_daemon_writes_is_the_one_its_readers_find(tmp_path, monkeypatch):
    monkeypatch.delenv("PALYRA_ADMIN_TOKEN", raising=False)
    token = ensure_admin_token(tmp_path)
    path = tmp_path / ADMIN_TOKEN_FILE
    assert path.read_text(encoding="utf-8").strip() == token
    assert cli._token(argparse.Namespace(state_dir=str(tmp_path))) == token
    assert secret_scan.admin_token(tmp_path) == token
    assert Doctor(tmp_path).check_admin_token().ok
    os.chmod(path, 0o644)
    assert path in [loose for loose, _mode in Doctor(tmp_path).loose_files()]
