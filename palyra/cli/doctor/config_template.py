"""The default ``palyra.toml`` that ``config.initialize`` writes.

Generated from the config dataclasses, so it cannot drift from the defaults: every
setting is a commented ``# key = default`` line, and the file as written loads to
exactly ``Config()``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from palyra.config import _SECTIONS

HEADER = """\
# palyra.toml, written by `palyra doctor --repair` (repair step config.initialize).
# Every setting below shows its built-in default; uncomment a line to change it.
# Use: palyrad --state-dir DIR --config THIS_FILE

[provider]
kind = "deterministic"
# kind = "openai_compatible"
# base_url = "https://api.openai.com/v1"
# model = "gpt-4o-mini"
# api_key = "..."    # this file is created 0600; keep it out of version control
"""


def _toml_value(value: Any) -> str | None:
    """TOML for a default value, or None when TOML cannot say it (None: unset)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str, tuple, list)):
        return orjson.dumps(list(value) if isinstance(value, tuple) else value).decode()
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }" \
            if value else "{}"
    return None


def default_config_toml() -> str:
    lines = [HEADER]
    for name, section in _SECTIONS.items():
        lines.append(f"# [{name}]")
        for field in dataclasses.fields(section):
            default = (field.default_factory() if field.default_factory is not dataclasses.MISSING
                       else field.default)
            text = _toml_value(default)
            lines.append(f"# {field.name} = {text}" if text is not None
                         else f"# {field.name}: unset by default")
        lines.append("")
    return "\n".join(lines)
