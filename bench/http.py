"""HTTP surface throughput: a real ``palyrad`` under load from a separate process.

Prints one JSON line: requests/s and p50/p99 latency for ``GET /healthz`` (the HTTP
stack alone), ``POST /v1/chat/completions`` (a full run per request: admission, the
deterministic provider, the durable tape, the reply), and the same completion streamed
(latency to the last chunk, and to the first token), with the ratio of the full-run
endpoint to ``/healthz`` measured in the same run.

The daemon (temp state dir, deterministic provider, port 0) and the load generator
(this file with ``--load``: threads, one keep-alive httpx connection each, a bounded
count and time per phase) are separate processes. This process is pinned by
``_common``; children inherit affinity on Linux, so they reset it: the load generator
runs on every CPU, and the daemon applies its own default (``palyrad --cpus auto``: one
CPU, see ``palyra.cli.daemon.choose_cpus``), as an operator's daemon would. They share
the machine's cores, so the figures are lower bounds. The daemon's rate limits are
raised out of the way (the buckets still run on every request): this measures capacity.
"""

from __future__ import annotations

import os
import sys

# This file is named http.py: with its directory first on sys.path it would shadow the
# standard library's http package (which httpx imports). Drop that entry first.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _HERE:
    del sys.path[0]

import http.client  # noqa: E402,F401  (the standard library's, cached before bench/ is added)
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

CONCURRENCY = 8
PHASES = (
    # name, requests at most, seconds at most
    ("healthz", 6000, 6.0),
    ("chat_completion", 3000, 10.0),
    ("chat_completion_stream", 2000, 10.0),
)
PROMPT = "the quick brown fox jumps over the lazy dog"
URL_LINE = re.compile(r"palyrad: serving (http://\S+)")
RATE_ENV = {"PALYRA_RATE_LIMIT_PER_S": "1e9", "PALYRA_RATE_LIMIT_LOOPBACK_PER_S": "1e9",
            "PALYRA_RATE_LIMIT_TOKEN_PER_S": "1e9"}


def _unpin() -> None:
    os.sched_setaffinity(0, range(os.cpu_count() or 1))


# -- the load generator (a separate process) -------------------------------------------


def load(url: str, token: str) -> None:
    import httpx

    auth = {"Authorization": f"Bearer {token}"}
    body = {"model": "deterministic", "messages": [{"role": "user", "content": PROMPT}]}

    def healthz(http: httpx.Client) -> dict:
        reply = http.get("/healthz")
        return {"ok": reply.status_code == 200}

    def completion(http: httpx.Client) -> dict:
        reply = http.post("/v1/chat/completions", json=body, headers=auth)
        ok = reply.status_code == 200 and \
            reply.json()["choices"][0]["message"]["content"] == PROMPT
        return {"ok": ok}

    def streamed(http: httpx.Client) -> dict:
        t0, first, text, done = time.perf_counter(), None, [], False
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True},
                         headers=auth) as reply:
            for line in reply.iter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                    if delta:
                        first = first if first is not None else time.perf_counter() - t0
                        text.append(delta)
        return {"ok": done and "".join(text) == PROMPT, "first": first}

    calls = {"healthz": healthz, "chat_completion": completion,
             "chat_completion_stream": streamed}
    out = {name: Phase(url, calls[name], most, seconds).run() for name, most, seconds in PHASES}
    print(json.dumps(out), flush=True)


class Phase:
    """``CONCURRENCY`` threads, one keep-alive connection each, calling ``call`` until
    ``most`` calls were made or ``seconds`` passed."""

    def __init__(self, url: str, call, most: int, seconds: float) -> None:
        self.url, self.call, self.left, self.seconds = url, call, most, seconds
        self.latencies: list[float] = []
        self.firsts: list[float] = []
        self.errors = 0
        self.lock = threading.Lock()
        self.barrier = threading.Barrier(CONCURRENCY + 1)
        self.deadline = 0.0

    def worker(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=30) as http:
            for _ in range(3):
                self.call(http)  # warm the connection (and the daemon)
            self.barrier.wait()
            while time.perf_counter() < self.deadline:
                with self.lock:
                    if self.left <= 0:
                        return
                    self.left -= 1
                t0 = time.perf_counter()
                try:
                    result = self.call(http)
                except httpx.HTTPError:
                    result = {"ok": False}
                elapsed = time.perf_counter() - t0
                with self.lock:
                    self.latencies.append(elapsed)
                    self.errors += not result["ok"]
                    if result.get("first") is not None:
                        self.firsts.append(result["first"])

    def run(self) -> dict:
        threads = [threading.Thread(target=self.worker) for _ in range(CONCURRENCY)]
        for thread in threads:
            thread.start()
        started = time.perf_counter()
        self.deadline = started + self.seconds  # workers read it once past the barrier
        self.barrier.wait()
        for thread in threads:
            thread.join()
        return {"latencies": self.latencies, "firsts": self.firsts, "errors": self.errors,
                "elapsed": time.perf_counter() - started}


# -- the benchmark ---------------------------------------------------------------------


def start_daemon(state: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PALYRA_LOG_LEVEL": "WARNING", **RATE_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-m", "palyra.cli.daemon", "--state-dir", str(state),
         "--http", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        cwd=str(Path(_HERE).parent), preexec_fn=_unpin)
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = URL_LINE.search(line)
        if match:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining
            return proc, match.group(1)
    proc.kill()
    raise RuntimeError("palyrad did not start serving")


def main() -> None:
    sys.path.append(_HERE)
    from _common import emit, pct

    def summary(phase: dict) -> dict:
        lat = phase["latencies"]
        out = {
            "requests": len(lat),
            "errors": phase["errors"],
            "requests_per_s": round(len(lat) / phase["elapsed"], 1),
            "p50_ms": round(pct(lat, 50) * 1000, 3),
            "p99_ms": round(pct(lat, 99) * 1000, 3),
        }
        if phase["firsts"]:
            out["p50_first_token_ms"] = round(pct(phase["firsts"], 50) * 1000, 3)
        return out

    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        daemon, url = start_daemon(state)
        try:
            token = (state / "admin.token").read_text().strip()
            generator = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--load", url, token],
                capture_output=True, text=True, timeout=120, preexec_fn=_unpin,
                cwd=str(Path(_HERE).parent))
            if generator.returncode != 0:
                raise RuntimeError(f"load generator failed: {generator.stderr[-2000:]}")
            phases = json.loads(generator.stdout.strip().splitlines()[-1])
        finally:
            daemon.terminate()
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
    figures: dict = {"bench": "http", "concurrency": CONCURRENCY,
                     "workload": "real palyrad (deterministic provider) + httpx load process",
                     "cpus": os.cpu_count()}
    for name, _, _ in PHASES:
        figures[name] = summary(phases[name])
    health = figures["healthz"]["requests_per_s"]
    figures["ratio_chat_completion_to_healthz_rps"] = round(
        figures["chat_completion"]["requests_per_s"] / health, 4)
    figures["ratio_stream_to_healthz_rps"] = round(
        figures["chat_completion_stream"]["requests_per_s"] / health, 4)
    figures["daemon_exit_code"] = daemon.returncode
    emit(figures)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--load":
        load(sys.argv[2], sys.argv[3])
    else:
        main()
