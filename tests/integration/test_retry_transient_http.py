"""transient.http and Retry-After against a real HTTP server, through requests and httpx.

A small threaded ``http.server`` plays a flaky API: each request takes the
next scripted response (status and headers). One scenario table runs through
requests, httpx and httpx's asyncio client. Waits go through a FakeClock, so
the honoured ``Retry-After`` hints are read from ``clock.sleeps``.
"""

from __future__ import annotations

import asyncio
import email.utils
import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests

from scalekit.retry import Backoff, RetryPolicy, transient
from scalekit.testing import FakeClock, capture_events

pytestmark = pytest.mark.integration

WALL = 1_800_000_000.0  # the fake clock's wall time, whole seconds (HTTP-dates have no fraction)


class FlakyApi(http.server.ThreadingHTTPServer):
    """Answers each request with the next scripted ``(status, headers)``; then 200."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[tuple[int, dict[str, str]]] = []
        self.requests = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/charge"

    def next_response(self) -> tuple[int, dict[str, str]]:
        with self.lock:
            self.requests += 1
            return self.script.pop(0) if self.script else (200, {})


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FlakyApi

    def do_GET(self) -> None:
        status, headers = self.server.next_response()
        body = b"ok" if status == 200 else b"try later"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep the test output quiet
        pass


@pytest.fixture
def api() -> Iterator[FlakyApi]:
    server = FlakyApi()
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/charge"


# --- the three clients, each a runner: (policy, url) -> body -----------------------------------


def with_requests(policy: RetryPolicy, url: str) -> str:
    with requests.Session() as session:

        def get() -> str:
            response = session.get(url, timeout=5)
            response.raise_for_status()
            return response.text

        return policy.call(get)


def with_httpx(policy: RetryPolicy, url: str) -> str:
    with httpx.Client(timeout=5) as client:

        @policy
        def get() -> str:
            response = client.get(url)
            response.raise_for_status()
            return response.text

        return get()


def with_httpx_async(policy: RetryPolicy, url: str) -> str:
    async def main() -> str:
        async with httpx.AsyncClient(timeout=5) as client:

            @policy
            async def get() -> str:
                response = await client.get(url)
                response.raise_for_status()
                return response.text

            return await get()

    return asyncio.run(main())


RUNNERS: dict[str, Callable[[RetryPolicy, str], str]] = {
    "requests": with_requests,
    "httpx": with_httpx,
    "httpx-async": with_httpx_async,
}


@dataclass(frozen=True)
class Scenario:
    id: str
    script: list[tuple[int, dict[str, str]]]
    requests: int  # requests the server sees
    sleeps: list[float]  # waits the policy makes
    succeeds: bool = True
    policy: dict[str, Any] = field(default_factory=dict)


SCENARIOS = [
    Scenario("503-retry-after-seconds", [(503, {"Retry-After": "2"})], 2, [2.0]),
    Scenario(
        "429-retry-after-http-date",
        [(429, {"Retry-After": email.utils.formatdate(WALL + 7, usegmt=True)})],
        2,
        [7.0],
    ),
    Scenario("502-then-504-then-ok", [(502, {}), (504, {})], 3, [0.01, 0.01]),
    Scenario(
        "long-hint-is-capped",
        [(503, {"Retry-After": "3600"})],
        2,
        [5.0],
        policy={"max_retry_after": 5.0},
    ),
    Scenario(
        "hint-beyond-deadline-gives-up",
        [(503, {"Retry-After": "30"})],
        1,
        [],
        succeeds=False,
        policy={"deadline": 10.0},
    ),
    Scenario("500-is-not-transient", [(500, {})], 1, [], succeeds=False),
    Scenario("404-is-not-transient", [(404, {})], 1, [], succeeds=False),
    Scenario("503-every-time", [(503, {})] * 5, 3, [0.01, 0.01], succeeds=False),
]


@pytest.mark.parametrize("runner", list(RUNNERS.values()), ids=list(RUNNERS))
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_http_scenario(
    api: FlakyApi, scenario: Scenario, runner: Callable[[RetryPolicy, str], str]
) -> None:
    api.script = list(scenario.script)
    clock = FakeClock(wall=WALL)
    policy = RetryPolicy(
        attempts=3,
        backoff=Backoff.constant(0.01),
        retry_on=transient.http,
        clock=clock,
        **scenario.policy,
    )
    if scenario.succeeds:
        assert runner(policy, api.url) == "ok"
    else:
        with pytest.raises((requests.HTTPError, httpx.HTTPStatusError)) as info:
            runner(policy, api.url)
        status = scenario.script[min(scenario.requests, len(scenario.script)) - 1][0]
        assert info.value.response is not None
        assert info.value.response.status_code == status
    assert api.requests == scenario.requests
    assert clock.sleeps == pytest.approx(scenario.sleeps)


@pytest.mark.parametrize("runner", list(RUNNERS.values()), ids=list(RUNNERS))
def test_refused_connection_is_transient(runner: Callable[[RetryPolicy, str], str]) -> None:
    clock = FakeClock()
    policy = RetryPolicy(
        attempts=3, backoff=Backoff.constant(0.5), retry_on=transient.http, clock=clock
    )
    with capture_events() as events, pytest.raises((requests.ConnectionError, httpx.ConnectError)):
        runner(policy, closed_url())
    assert clock.sleeps == [0.5, 0.5]  # both retries happened: the request was never sent
    gave_up = [e for e in events if e.kind == "retry.gave_up"]
    assert len(gave_up) == 1 and gave_up[0].reason == "attempts"


def test_read_timeout_is_not_transient(api: FlakyApi) -> None:
    """A request that reached the server may have been processed: never resent by default."""
    gate = threading.Event()
    original = _Handler.do_GET
    arrived: list[str] = []  # requests that reached the server (appended at once)

    def slow(handler: _Handler) -> None:
        arrived.append(handler.path)
        gate.wait(5)
        original(handler)

    _Handler.do_GET = slow  # type: ignore[method-assign]
    try:
        policy = RetryPolicy(attempts=3, backoff=Backoff.none(), retry_on=transient.http)
        with httpx.Client(timeout=0.2) as client, pytest.raises(httpx.ReadTimeout):
            policy.call(client.get, api.url)
        with requests.Session() as session, pytest.raises(requests.ReadTimeout):
            policy.call(session.get, api.url, timeout=0.2)
        # Give a resent request (there must be none) time to reach the server.
        limit = time.monotonic() + 5
        while len(arrived) < 2 and time.monotonic() < limit:
            time.sleep(0.01)
        time.sleep(0.3)
    finally:
        gate.set()
        _Handler.do_GET = original  # type: ignore[method-assign]
    # One request per client reached the server; none was resent after its read timeout.
    assert arrived == ["/charge", "/charge"]
