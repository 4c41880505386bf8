"""``palyrad``: run the Palyra runtime as a daemon over one state directory, serving HTTP.

    palyrad --state-dir DIR [--config palyra.toml] [--http 127.0.0.1:7142] [--allow-remote-bind]

Rate limits of the HTTP surface come from ``PALYRA_RATE_LIMIT_*`` (see
``surfaces.http.ratelimit``; defaults 30 requests/s per address, 120/s from loopback).

The runtime starts first (a second daemon on the same state directory fails here, exit
1, with the holder's pid), then hypercorn serves the HTTP surface on trio in this
process. SIGINT/SIGTERM shut down gracefully (exit 0): from then on every response
carries ``Connection: close`` (keep-alive clients cannot hold the shutdown up to
hypercorn's graceful timeout), open event streams end, requests in flight finish; the runtime is stopped in a
``finally`` whatever happens, since its non-daemon actor threads would otherwise keep
the process alive. If the runtime shuts itself down (its root supervisor gave up), the
daemon stops serving and exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from palyra.config import Config, load_config
from palyra.errors import InvalidInput, PalyraError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_HTTP = "127.0.0.1:7142"
DEFAULT_STATE_DIR = ".palyra-state"


def parse_bind(text: str, *, allow_remote: bool) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6); non-loopback hosts need ``allow_remote``."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise InvalidInput(f"--http must be HOST:PORT, got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text)
    except ValueError:
        raise InvalidInput(f"--http port must be a number, got {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise InvalidInput(f"--http port must be within 0..65535, got {port}")
    if not _is_loopback(host) and not allow_remote:
        raise InvalidInput(
            f"refusing to bind {host}: not a loopback address. The admin API would be "
            "reachable from the network; pass --allow-remote-bind if that is intended"
        )
    return host, port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def rate_limits(config: Config, env: Mapping[str, str] | None = None) -> Any:
    """``http.rate_limits`` of the config, each field overridden by its
    ``PALYRA_RATE_LIMIT_*`` variable when that is set."""
    from surfaces.http.ratelimit import ENV_PREFIX, RateLimits

    env = os.environ if env is None else env
    try:
        base = RateLimits(**config.http.rate_limits)
    except TypeError as exc:
        known = ", ".join(f.name for f in dataclasses.fields(RateLimits) if not f.name.startswith("max_"))
        raise InvalidInput(f"http.rate_limits: {exc}; known keys: {known}",
                           details={"key": "http.rate_limits"}) from None
    from_env = RateLimits.from_env(env)
    chosen = {f.name: getattr(from_env, f.name) for f in dataclasses.fields(RateLimits)
              if env.get(ENV_PREFIX + f.name.upper(), "").strip()}
    return dataclasses.replace(base, **chosen)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="palyrad", description="Run the Palyra daemon.")
    parser.add_argument(
        "--state-dir",
        default=os.environ.get("PALYRA_STATE_DIR", DEFAULT_STATE_DIR),
        help="state directory (journal, admin token, lock); default $PALYRA_STATE_DIR or "
             "./.palyra-state",
    )
    parser.add_argument("--config", default=os.environ.get("PALYRA_CONFIG"), help="palyra.toml")
    parser.add_argument(
        "--http", default=os.environ.get("PALYRA_HTTP"),
        help=f"HOST:PORT to serve HTTP on (default $PALYRA_HTTP, else http.bind of the config, "
             f"else {DEFAULT_HTTP}; port 0 picks a free one and the bound URL is printed)",
    )
    parser.add_argument("--allow-remote-bind", action="store_true",
                        help="allow a non-loopback --http address (or http.allow_remote_bind)")
    parser.add_argument("--log-level", default=os.environ.get("PALYRA_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--cpus", default=os.environ.get("PALYRA_CPUS", "auto"),
        help="CPUs the daemon runs on: 'auto' (default: one of the allowed CPUs, chosen by "
             "pid), 'all' (leave the affinity alone), or a list such as '0' or '2,3'; "
             "default $PALYRA_CPUS")
    return parser.parse_args(argv)


def choose_cpus(spec: str, allowed: set[int], pid: int) -> set[int] | None:
    """The CPU set for ``--cpus`` (None: leave the affinity alone).

    Why one CPU by default: the runtime's Python runs under one GIL, so a second core
    adds little, while every actor message wakes a thread that the kernel may place on
    the other core, and on VMs such a cross-CPU wake-up is expensive (measured here:
    chat completions 269 req/s unpinned, 482 req/s pinned, same machine and load).
    ``auto`` picks by pid so that several daemons on one host spread over the CPUs.
    """
    spec = spec.strip().lower()
    if spec == "all":
        return None
    if spec == "auto":
        ordered = sorted(allowed)
        return {ordered[pid % len(ordered)]} if ordered else None
    try:
        chosen = {int(part) for part in spec.split(",") if part.strip()}
    except ValueError:
        raise InvalidInput(f"--cpus must be auto, all or a list of CPU numbers, got {spec!r}",
                           details={"field": "cpus"}) from None
    if not chosen or not chosen <= allowed:
        raise InvalidInput(f"--cpus {spec}: allowed CPUs are {sorted(allowed)}",
                           details={"field": "cpus"})
    return chosen


def _cpus(spec: str) -> set[int] | None:
    if not hasattr(os, "sched_getaffinity"):
        return None
    return choose_cpus(spec, set(os.sched_getaffinity(0)), os.getpid())


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cpus = _cpus(args.cpus)
        config = load_config(args.config)
        host, port = parse_bind(args.http or config.http.bind,
                                allow_remote=args.allow_remote_bind or config.http.allow_remote_bind)
        limits = rate_limits(config)  # a typo fails here, not later
    except PalyraError as exc:
        print(f"palyrad: {exc.message}", file=sys.stderr)
        return EXIT_USAGE

    import trio

    from palyra.runtime import Runtime

    if cpus is not None:  # before the runtime's threads start: they inherit it
        os.sched_setaffinity(0, cpus)
    try:
        runtime = Runtime.start(Path(args.state_dir), config)
    except PalyraError as exc:
        print(f"palyrad: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    try:
        return trio.run(functools.partial(_serve, runtime, host, port, limits))
    finally:
        report = runtime.stop("palyrad stopping")
        detail = "clean" if report.clean else "leaked: " + ", ".join(report.leaked)
        print(f"palyrad: stopped ({detail})", flush=True)


async def _serve(runtime: Any, host: str, port: int, limits: Any = None) -> int:
    import hypercorn.trio
    import trio
    from hypercorn.config import Config as HypercornConfig

    from surfaces.http import create_app, token_path

    app = create_app(runtime, rate_limits=limits)
    surface = app.extensions["palyra"]
    cfg = HypercornConfig()
    cfg.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("hypercorn.error")  # through our logging config, once
    cfg.graceful_timeout = 5.0
    shutdown = trio.Event()
    why: list[str] = []

    async def on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                why.append(signal.Signals(signum).name)
                break
        surface.draining = True  # responses from now on close their connection
        surface.streams.close_all()  # end event streams now, not after graceful_timeout
        shutdown.set()

    async def on_runtime_exit() -> None:
        await trio.to_thread.run_sync(runtime.stopped.wait, abandon_on_cancel=True)
        why.append("runtime stopped")
        surface.draining = True
        surface.streams.close_all()
        shutdown.set()

    async with trio.open_nursery() as watchers:
        watchers.start_soon(on_signal)
        watchers.start_soon(on_runtime_exit)
        async with trio.open_nursery() as server:
            binds = await server.start(functools.partial(
                hypercorn.trio.serve, app, cfg, shutdown_trigger=shutdown.wait))
            cpus = ",".join(map(str, sorted(os.sched_getaffinity(0)))) if hasattr(
                os, "sched_getaffinity") else "all"
            print(f"palyrad: serving {' '.join(binds)} (pid {os.getpid()}, cpus {cpus}, state dir "
                  f"{runtime.state_dir})", flush=True)
            print(f"palyrad: admin token in {token_path(runtime.state_dir)}", flush=True)
        watchers.cancel_scope.cancel()
    # serve() has returned: lifespan shutdown ran, connections are closed.
    if why and why[0] == "runtime stopped":
        reason = runtime.stop_report.reason if runtime.stop_report else "unknown"
        print(f"palyrad: the runtime shut down: {reason}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    print(f"palyrad: {why[0] if why else 'shutdown'} received, stopping", flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
