"""The governance package exports its public surface once, from the modules that own it."""

from __future__ import annotations

import palyra.governance as governance


def test_every_public_name_is_exported_once_and_resolves():
    names = governance.__all__
    assert len(names) == len(set(names))
    for name in names:
        obj = getattr(governance, name)
        module = getattr(obj, "__module__", None)
        if module is not None:
            assert module.startswith("palyra.governance."), name
