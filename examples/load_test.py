"""Load-test an example app over real HTTP, with scalekit's routing and caching on, then off.

The app (``examples/fastapi_app.py`` under uvicorn by default, or
``examples/flask_app.py`` under its threaded server) runs in a subprocess;
concurrent clients send a read-heavy mix of requests (order lookups, a
cached per-customer total, a page of orders, a few writes) for a fixed time,
and the script prints p50/p95/p99 latency, throughput and the error rate
(5xx and failed connections; 429s are counted apart), once with scalekit's
routing and caching on and once with them off (every query on the primary,
no cache), with a progress line while it runs. On the embedded default
(SQLite, fakeredis in the server process) it needs no servers and takes
about 7 seconds::

    python -m pip install -e '.[examples]' && python examples/load_test.py

Against real servers (the app reads ``DATABASE_URL``, ``REPLICA_URLS`` and
``REDIS_URL`` from the environment), longer and with more clients::

    DATABASE_URL=... REPLICA_URLS=... REDIS_URL=... \\
    python examples/load_test.py --duration 30 --clients 64
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
CUSTOMERS = [f"customer{n}" for n in range(20)]
SEED_ROWS = 500


@dataclass
class Phase:
    """What one run measured."""

    name: str
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    limited: int = 0
    elapsed: float = 0.0

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    @property
    def requests(self) -> int:
        return len(self.latencies) + self.errors

    def row(self) -> str:
        rate = self.requests / self.elapsed if self.elapsed else 0.0
        error_rate = self.errors / self.requests * 100 if self.requests else 0.0
        return (
            f"{self.name:<22} {self.requests:>8} {rate:>9.0f} {self.percentile(0.50):>8.1f} "
            f"{self.percentile(0.95):>8.1f} {self.percentile(0.99):>8.1f} "
            f"{error_rate:>7.2f}% {self.limited:>6}"
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def serve(app: str, port: int, features: bool, scratch: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, DEFAULT_LIMITS="1000000/minute")
    env["SCALEKIT_FEATURES"] = "on" if features else "off"
    # The servers' demo databases go in a folder of ours, removed when the run ends
    # (a terminated server may not clean up after itself).
    env["TMPDIR"] = scratch
    script = HERE / f"{app}_app.py"
    # The server's per-request log is dropped (an unread pipe would fill up and stall it).
    return subprocess.Popen(
        [sys.executable, str(script), "--serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_ready(base: str, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(base_url=base) as client:
        for _ in range(300):
            if process.poll() is not None:
                raise SystemExit(f"the app exited with status {process.returncode}")
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit("the app did not start in 15 s")


async def seed(client: httpx.AsyncClient) -> list[int]:
    rows = [
        {"id": n, "customer": random.choice(CUSTOMERS), "total": random.randint(1, 500)}
        for n in range(1, SEED_ROWS + 1)
    ]
    response = await client.post("/orders/import", json=rows, headers={"X-Api-Key": "seed"})
    response.raise_for_status()
    return [row["id"] for row in rows]


async def one_client(
    client: httpx.AsyncClient, number: int, ids: list[int], phase: Phase, until: float
) -> None:
    rng = random.Random(number)
    headers = {"X-Api-Key": f"client-{number}"}
    while time.perf_counter() < until:
        roll = rng.random()
        if roll < 0.45:
            request = client.get(f"/customers/{rng.choice(CUSTOMERS)}/total")
        elif roll < 0.80:
            request = client.get(f"/orders/{rng.choice(ids)}")
        elif roll < 0.98:
            request = client.get("/orders", params={"size": 20})
        else:
            order = {"customer": rng.choice(CUSTOMERS), "total": rng.randint(1, 500)}
            request = client.post("/orders", json=order, headers=headers)
        started = time.perf_counter()
        try:
            response = await request
        except httpx.TransportError:
            phase.errors += 1
            continue
        if response.status_code >= 500:
            phase.errors += 1
        elif response.status_code == 429:
            phase.limited += 1
        else:
            phase.latencies.append(time.perf_counter() - started)


async def progress(phase: Phase, started: float, duration: float) -> None:
    while True:
        await asyncio.sleep(0.5)
        done = min(time.perf_counter() - started, duration)
        print(
            f"\r  {phase.name}: {done:4.1f}/{duration:g} s, {phase.requests} requests",
            end="",
            file=sys.stderr,
            flush=True,
        )


async def run_phase(base: str, features: bool, clients: int, duration: float) -> Phase:
    phase = Phase("scalekit on" if features else "scalekit off")
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10) as client:
        ids = await seed(client)
        for _ in range(2):  # warm the caches and connections
            await asyncio.gather(*(client.get(f"/customers/{c}/total") for c in CUSTOMERS))
        started = time.perf_counter()
        until = started + duration
        reporter = asyncio.create_task(progress(phase, started, duration))
        await asyncio.gather(*(one_client(client, n, ids, phase, until) for n in range(clients)))
        phase.elapsed = time.perf_counter() - started
        reporter.cancel()
        print(file=sys.stderr)
    return phase


async def main_async(args: argparse.Namespace) -> None:
    print(
        f"{args.app} app, {args.clients} concurrent clients, {args.duration:g} s per run, "
        f"database {os.environ.get('DATABASE_URL', 'SQLite (embedded)')}"
    )
    # Both servers start at once (their start-up overlaps); the runs take turns.
    modes = (True, False)
    ports = {features: free_port() for features in modes}
    scratch = tempfile.mkdtemp(prefix="scalekit-load-")
    processes = {
        features: serve(args.app, ports[features], features, scratch) for features in modes
    }
    phases = []
    try:
        started = time.perf_counter()
        print("  starting the app servers (on, off)...", end="", file=sys.stderr, flush=True)
        for features in modes:
            await wait_ready(f"http://127.0.0.1:{ports[features]}", processes[features])
        print(f" ready in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        for features in modes:
            base = f"http://127.0.0.1:{ports[features]}"
            phases.append(await run_phase(base, features, args.clients, args.duration))
    finally:
        for process in processes.values():
            process.terminate()
            process.wait(timeout=10)
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"\n{'run':<22} {'requests':>8} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'errors':>8} {'429s':>6}"
    )
    for phase in phases:
        print(phase.row())
    on, off = phases
    if on.elapsed and off.elapsed and off.requests:
        gain = (on.requests / on.elapsed) / (off.requests / off.elapsed)
        print(f"\nthroughput with scalekit's routing and caching: {gain:.2f}x without")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", choices=["fastapi", "flask"], default="fastapi")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=2.5, help="seconds per run")
    args = parser.parse_args(argv)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
