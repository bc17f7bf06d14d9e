"""Rate-limit middleware overhead per request: scalekit vs slowapi, fastapi-limiter, Flask-Limiter.

Each row is one app answering ``GET /ping`` with a small JSON body, called
straight through its ASGI or WSGI interface (no HTTP server, no sockets but
Redis's), in one process, on one private ``redis-server`` started for the
run. Every limit is huge (1,000,000/minute) so every request is allowed and
every limiter does the same work: one check per request. A row's overhead is
its time per request minus the bare app's; the ratio is scalekit's overhead
over the peer's, on the same call path:

- ASGI, app-wide limit as middleware: scalekit ``RateLimitMiddleware`` vs
  slowapi's ``SlowAPIASGIMiddleware`` (``default_limits``, headers on, as
  scalekit always sends them; slowapi reads the window stats for them);
- ASGI, a route's limit as a FastAPI dependency: scalekit ``Depends(limit(...))``
  (with the middleware that writes its headers) vs fastapi-limiter's
  ``RateLimiter`` on pyrate-limiter's ``RedisBucket`` (no headers);
- WSGI, app-wide limit: scalekit's Flask extension vs Flask-Limiter
  (``default_limits``, headers on).

The ASGI table also times one ``AsyncRateLimiter.hit`` alone (its row's
"overhead" is then meaningless; its time is the floor of any limiter that
makes one asyncio round trip): the middleware's overhead minus it is what
the middleware adds around the check.

Rounds are interleaved (every case once per round) and each case keeps its
best round, so background load on a shared machine hits every case alike.
Two columns: wall time per request (Redis round trips included) and this
process's CPU time per request (``time.process_time``: the client-side work,
without the wait for Redis).

    python benchmarks/bench_frameworks.py [--requests 2000] [--rounds 7] [--only asgi|wsgi]

``--callgrind`` prints instead another pair of tables: instructions per request in
this process, counted by valgrind's callgrind (two runs per case, 100 and 600
requests, differenced; Redis's own work is not counted), which a loaded
machine does not disturb::

    python benchmarks/bench_frameworks.py --callgrind

Target (issue 17): scalekit's overhead <= 0.5x each peer's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

LIMIT = "1000000/minute"


def start_redis() -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("bench_frameworks needs a redis-server binary on PATH")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="scalekit-bench-frameworks-")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return process, port
        except redis.ConnectionError:
            time.sleep(0.02)
    process.kill()
    sys.exit("redis-server did not start")


# ---------------------------------------------------------------------------
# ASGI
# ---------------------------------------------------------------------------


def asgi_apps(port: int) -> dict[str, Any]:
    import redis.asyncio
    from fastapi import Depends, FastAPI
    from fastapi_limiter.depends import RateLimiter as FastAPILimiterDependency
    from pyrate_limiter import Duration, Limiter, Rate
    from pyrate_limiter.buckets import RedisBucket
    from slowapi import Limiter as SlowLimiter
    from slowapi.middleware import SlowAPIASGIMiddleware
    from slowapi.util import get_remote_address

    from scalekit.contrib.starlette import RateLimitMiddleware, limit
    from scalekit.ratelimit import AsyncRateLimiter

    url = f"redis://127.0.0.1:{port}/0"

    def ping_app(**kwargs: Any) -> FastAPI:
        app = FastAPI(**kwargs)
        return app

    bare = ping_app()

    @bare.get("/ping")
    async def bare_ping() -> dict[str, bool]:
        return {"ok": True}

    scalekit_mw = ping_app()
    scalekit_mw.add_middleware(
        RateLimitMiddleware,
        limiter=AsyncRateLimiter(redis.asyncio.Redis.from_url(url), namespace="sk-mw"),
        limits=LIMIT,
    )

    @scalekit_mw.get("/ping")
    async def scalekit_mw_ping() -> dict[str, bool]:
        return {"ok": True}

    slow = ping_app()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slow.state.limiter = SlowLimiter(
            key_func=get_remote_address,
            default_limits=[LIMIT],
            storage_uri=url,
            headers_enabled=True,
        )
    slow.add_middleware(SlowAPIASGIMiddleware)

    @slow.get("/ping")
    async def slow_ping() -> dict[str, bool]:
        return {"ok": True}

    scalekit_dep = ping_app()
    scalekit_dep.add_middleware(
        RateLimitMiddleware,
        limiter=AsyncRateLimiter(redis.asyncio.Redis.from_url(url), namespace="sk-dep"),
    )

    @scalekit_dep.get("/ping", dependencies=[Depends(limit(LIMIT))])
    async def scalekit_dep_ping() -> dict[str, bool]:
        return {"ok": True}

    peer_dep = ping_app()
    state: dict[str, Any] = {"peer_dep": peer_dep}

    async def setup() -> None:
        bucket = await RedisBucket.init(
            [Rate(1_000_000, Duration.MINUTE)], redis.asyncio.Redis.from_url(url), "fl-bench"
        )
        dependency = FastAPILimiterDependency(limiter=Limiter(bucket))

        @peer_dep.get("/ping", dependencies=[Depends(dependency)])
        async def peer_dep_ping() -> dict[str, bool]:
            return {"ok": True}

    floor_limiter = AsyncRateLimiter(redis.asyncio.Redis.from_url(url), namespace="sk-floor")

    async def one_hit() -> int:
        await floor_limiter.hit("127.0.0.1", LIMIT)
        return 200

    state["setup"] = setup
    return {
        "_floor": one_hit,
        "bare": bare,
        "scalekit middleware": scalekit_mw,
        "slowapi middleware": slow,
        "scalekit Depends(limit)": scalekit_dep,
        "fastapi-limiter Depends": peer_dep,
        "_setup": setup,
    }


def asgi_call(app: Any) -> Callable[[], Awaitable[int]]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/ping",
        "raw_path": b"/ping",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 50000),
        "server": ("bench", 80),
    }
    request = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return request

    status = [0]

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]

    async def call() -> int:
        await app(dict(scope), receive, send)
        return status[0]

    return call


async def time_asgi(
    apps: dict[str, Any], requests: int, rounds: int, show: Callable[[str], None]
) -> dict[str, tuple[float, float]]:
    await apps.pop("_setup")()
    floor = apps.pop("_floor")
    calls = {name: asgi_call(app) for name, app in apps.items()}
    calls["(one AsyncRateLimiter.hit)"] = floor
    for name, call in calls.items():  # warm up; every request must be allowed
        for _ in range(200):
            status = await call()
            assert status == 200, (name, status)
    best = {name: (float("inf"), float("inf")) for name in calls}
    for round_number in range(rounds):
        for name, call in calls.items():
            start, cpu = time.perf_counter_ns(), time.process_time_ns()
            for _ in range(requests):
                await call()
            best[name] = _best(best[name], start, cpu, requests)
        show(f"ASGI round {round_number + 1}/{rounds}")
    return best


# ---------------------------------------------------------------------------
# WSGI
# ---------------------------------------------------------------------------


def wsgi_apps(port: int) -> dict[str, Any]:
    import redis
    from flask import Flask, jsonify
    from flask_limiter import Limiter as FlaskLimiter
    from flask_limiter.util import get_remote_address

    from scalekit.contrib.flask import Scalekit

    def ping_app() -> Flask:
        app = Flask(__name__)

        @app.get("/ping")
        def ping() -> Any:
            return jsonify(ok=True)

        return app

    bare = ping_app()
    ours = ping_app()
    ours.config.update(SCALEKIT_DEFAULT_LIMITS=LIMIT, SCALEKIT_LIMITER={"namespace": "sk-flask"})
    Scalekit(ours, redis=redis.Redis(port=port))
    peer = ping_app()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        FlaskLimiter(
            get_remote_address,
            app=peer,
            default_limits=[LIMIT],
            storage_uri=f"redis://127.0.0.1:{port}/0",
            headers_enabled=True,
        )
    return {"bare": bare, "scalekit Flask extension": ours, "Flask-Limiter": peer}


def wsgi_call(app: Any) -> Callable[[], str]:
    from werkzeug.test import EnvironBuilder

    environ = EnvironBuilder(path="/ping", environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_environ()
    status = [""]

    def start_response(code: str, headers: Any, exc_info: Any = None) -> Any:
        status[0] = code
        return None

    def call() -> str:
        body = app(dict(environ), start_response)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
        return status[0]

    return call


def time_wsgi(
    apps: dict[str, Any], requests: int, rounds: int, show: Callable[[str], None]
) -> dict[str, tuple[float, float]]:
    calls = {name: wsgi_call(app) for name, app in apps.items()}
    for name, call in calls.items():
        for _ in range(200):
            assert call().startswith("200"), name
    best = {name: (float("inf"), float("inf")) for name in calls}
    for round_number in range(rounds):
        for name, call in calls.items():
            start, cpu = time.perf_counter_ns(), time.process_time_ns()
            for _ in range(requests):
                call()
            best[name] = _best(best[name], start, cpu, requests)
        show(f"WSGI round {round_number + 1}/{rounds}")
    return best


def _best(best: tuple[float, float], start: int, cpu: int, requests: int) -> tuple[float, float]:
    wall = (time.perf_counter_ns() - start) / requests / 1000
    used = (time.process_time_ns() - cpu) / requests / 1000
    return min(best[0], wall), min(best[1], used)


def table(title: str, best: dict[str, tuple[float, float]], pairs: list[tuple[str, str]]) -> None:
    bare_wall, bare_cpu = best["bare"]
    print(f"\n{title}")
    print(f"{'case':<28} {'wall us':>9} {'overhead':>9} {'CPU us':>9} {'overhead':>9}")
    print("-" * 68)
    for name, (wall, cpu) in best.items():
        print(
            f"{name:<28} {wall:>9.1f} {wall - bare_wall:>9.1f} {cpu:>9.1f} {cpu - bare_cpu:>9.1f}"
        )
    if "(one AsyncRateLimiter.hit)" in best:
        hit_wall, hit_cpu = best["(one AsyncRateLimiter.hit)"]
        mw_wall, mw_cpu = best["scalekit middleware"]
        print(
            f"scalekit middleware around its check: wall {mw_wall - bare_wall - hit_wall:.1f} us, "
            f"CPU {mw_cpu - bare_cpu - hit_cpu:.1f} us"
        )
    for ours, peer in pairs:
        wall_ratio = (best[ours][0] - bare_wall) / (best[peer][0] - bare_wall)
        cpu_ratio = (best[ours][1] - bare_cpu) / (best[peer][1] - bare_cpu)
        print(
            f"overhead {ours} / {peer}: wall {wall_ratio:.2f}x, "
            f"CPU {cpu_ratio:.2f}x (target <= 0.50x)"
        )


ASGI_CASES = [
    "bare",
    "scalekit middleware",
    "slowapi middleware",
    "scalekit Depends(limit)",
    "fastapi-limiter Depends",
]
WSGI_CASES = ["bare", "scalekit Flask extension", "Flask-Limiter"]


def one_case(kind: str, case: str, requests: int, port: int) -> None:
    """Under callgrind: warm up uninstrumented, then instrument ``requests`` requests."""

    def instrument() -> None:
        subprocess.run(
            ["callgrind_control", "-i", "on", str(os.getpid())],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    if kind == "wsgi":
        call = wsgi_call(wsgi_apps(port)[case])
        for _ in range(300):
            call()
        instrument()
        for _ in range(requests):
            call()
        return

    async def run() -> None:
        apps = asgi_apps(port)
        apps.pop("_floor")
        await apps.pop("_setup")()
        call = asgi_call(apps[case])
        for _ in range(300):
            await call()
        instrument()
        for _ in range(requests):
            await call()

    asyncio.run(run())


def instructions(kind: str, case: str, requests: int, port: int) -> int:
    """Instructions callgrind counts for ``requests`` requests of one case (plus exit)."""
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--one",
                kind,
                case,
                "--requests",
                str(requests),
                "--port",
                str(port),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("no totals in callgrind's output")


def callgrind_tables(port: int, show: Callable[[str], None], only: str | None = None) -> None:
    """Instructions per request: two runs per case, differenced (start and exit cancel)."""
    few, many = 100, 600
    for kind, cases, pairs in (
        (
            "asgi",
            ASGI_CASES,
            [
                ("scalekit middleware", "slowapi middleware"),
                ("scalekit Depends(limit)", "fastapi-limiter Depends"),
            ],
        ),
        ("wsgi", WSGI_CASES, [("scalekit Flask extension", "Flask-Limiter")]),
    ):
        if only is not None and kind != only:
            continue
        per_request: dict[str, float] = {}
        for case in cases:
            show(f"callgrind: {kind} {case}")
            counts = [instructions(kind, case, n, port) for n in (few, many)]
            per_request[case] = (counts[1] - counts[0]) / (many - few)
        bare = per_request["bare"]
        print(f"\n{kind.upper()}: instructions per request (callgrind, client process only)")
        print(f"{'case':<28} {'instructions':>13} {'overhead':>10}")
        print("-" * 53)
        for case, count in per_request.items():
            print(f"{case:<28} {count:>13,.0f} {count - bare:>10,.0f}")
        for ours, peer in pairs:
            ratio = (per_request[ours] - bare) / (per_request[peer] - bare)
            print(f"overhead {ours} / {peer}: {ratio:.2f}x (target <= 0.50x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per case per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--only", choices=["asgi", "wsgi"], help="time one table only (default: both)"
    )
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="count instructions per request under valgrind instead (load-independent; slow)",
    )
    parser.add_argument("--one", nargs=2, metavar=("KIND", "CASE"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_case(args.one[0], args.one[1], args.requests, args.port)
        return
    process, port = start_redis()

    def show(text: str) -> None:
        print(f"  {text}", file=sys.stderr, flush=True)

    if args.callgrind:
        try:
            callgrind_tables(port, show, args.only)
        finally:
            process.terminate()
            process.wait()
        return
    try:
        print(f"redis-server on 127.0.0.1:{port}; limit {LIMIT}; best of {args.rounds} rounds")
        asgi: dict[str, Any] | None = None
        wsgi: dict[str, Any] | None = None
        if args.only != "wsgi":
            asgi = asyncio.run(time_asgi(asgi_apps(port), args.requests, args.rounds, show))
        if args.only != "asgi":
            wsgi = time_wsgi(wsgi_apps(port), args.requests, args.rounds, show)
    finally:
        process.terminate()
        process.wait()
    if asgi is not None:
        table(
            "ASGI (FastAPI), per request",
            asgi,
            [
                ("scalekit middleware", "slowapi middleware"),
                ("scalekit Depends(limit)", "fastapi-limiter Depends"),
            ],
        )
    if wsgi is not None:
        table("WSGI (Flask), per request", wsgi, [("scalekit Flask extension", "Flask-Limiter")])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
