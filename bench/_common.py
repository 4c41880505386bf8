"""Shared helpers for the benchmarks (each prints one JSON line)."""

from __future__ import annotations

import logging
import statistics
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# Restarts are logged as warnings in a daemon; in a benchmark they are the workload.
logging.getLogger("palyra").setLevel(logging.ERROR)


def pct(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def emit(figures: dict) -> None:
    print(orjson.dumps(figures, option=orjson.OPT_SORT_KEYS).decode())
