"""``palyrad``: run the Palyra runtime as a daemon over one state directory."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import tomllib
from pathlib import Path

from palyra.config import Config
from palyra.errors import PalyraError

EXIT_USAGE = 2
EXIT_FAILED = 1


def load_config(path: str | None) -> Config:
    if not path:
        return Config()
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise PalyraError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise PalyraError(f"config file {path} is not valid TOML: {exc}") from None
    return Config.from_mapping(data)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="palyrad", description="Run the Palyra daemon.")
    parser.add_argument(
        "--state-dir",
        default=os.environ.get("PALYRA_STATE_DIR", ".palyra-state"),
        help="state directory (journal, tokens, lock); default $PALYRA_STATE_DIR or ./.palyra-state",
    )
    parser.add_argument("--config", default=os.environ.get("PALYRA_CONFIG"), help="palyra.toml")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from palyra.runtime import Runtime

    try:
        config = load_config(args.config)
        runtime = Runtime.start(Path(args.state_dir), config)
    except PalyraError as exc:
        print(f"palyrad: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"palyrad: running, state dir {runtime.state_dir} (pid {os.getpid()}); Ctrl-C stops", flush=True)
    try:
        stop.wait()
    finally:
        report = runtime.stop("signal received")
    print(f"palyrad: stopped ({'clean' if report.clean else 'leaked: ' + ', '.join(report.leaked)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
