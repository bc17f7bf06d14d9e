"""The example apps (Flask, FastAPI) on the harness's real PostgreSQL primary + replica and Redis.

Through each framework's test client: the token cookie makes a client's write
visible to its next request while the replica's replay is paused (another
client, without the token, reads the paused replica and does not see it),
RateLimit headers on real Redis parse as structured fields, and a Redis
stopped mid-run never turns a request into a 500.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from scalekit.testing.servers import PgCluster, RedisNode
from tests.unit.contrib._apps import example, rate_limit_fields


@pytest.fixture
def database(pg_cluster: PgCluster) -> tuple[str, str]:
    """A fresh database: (primary URL, first replica's URL)."""
    assert pg_cluster.primary is not None
    name = f"scalekit_contrib_{uuid.uuid4().hex[:8]}"
    pg_cluster.primary.execute(f'CREATE DATABASE "{name}"')
    pg_cluster.wait_for_replicas()
    return pg_cluster.primary.url_for(name), pg_cluster.replicas[0].url_for(name)


def _paused(pg_cluster: PgCluster) -> Any:
    class Paused:
        def __enter__(self) -> None:
            pg_cluster.wait_for_replicas()
            pg_cluster.replicas[0].pause_replay()

        def __exit__(self, *exc: object) -> None:
            pg_cluster.replicas[0].resume_replay()
            pg_cluster.wait_for_replicas()

    return Paused()


def test_fastapi_token_cookie_reads_a_write_through_a_paused_replica(
    pg_cluster: PgCluster, database: tuple[str, str], redis_server: RedisNode
) -> None:
    primary, replica = database
    app = example("fastapi_app").create_app(
        primary, [replica], redis_server.url, secure_cookies=False
    )
    with TestClient(app) as client:
        fields = rate_limit_fields(client.get("/orders").headers)
        assert fields["ratelimit-policy"][0][1] == {"q": 120, "w": 60}
        with _paused(pg_cluster):
            created = client.post("/orders", json={"customer": "ada", "total": 42})
            assert created.status_code == 201
            order = f"/orders/{created.json()['id']}"
            assert client.get(order).status_code == 200  # the cookie: primary or caught up
            token = client.cookies["scalekit_token"]
            client.cookies.clear()
            assert client.get(order).status_code == 404  # no token: the paused replica
            assert client.get(order, headers={"X-Scalekit-Token": token}).status_code == 200
        assert client.get(order).status_code == 200  # replay resumed: the replica has it


def test_flask_token_cookie_reads_a_write_through_a_paused_replica(
    pg_cluster: PgCluster, database: tuple[str, str], redis_server: RedisNode
) -> None:
    primary, replica = database
    app = example("flask_app").create_app(
        primary, [replica], redis_server.url, secure_cookies=False
    )
    client = app.test_client()
    fields = rate_limit_fields(client.get("/orders").headers)
    assert fields["ratelimit-policy"][0][1] == {"q": 120, "w": 60}
    with _paused(pg_cluster):
        created = client.post("/orders", json={"customer": "ada", "total": 42})
        assert created.status_code == 201
        order = f"/orders/{created.get_json()['id']}"
        assert client.get(order).status_code == 200
        token = client.get_cookie("scalekit_token").value  # type: ignore[union-attr]
        client.delete_cookie("scalekit_token")
        assert client.get(order).status_code == 404
        assert client.get(order, headers={"X-Scalekit-Token": token}).status_code == 200
    assert client.get(order).status_code == 200


def _drive_through_an_outage(
    request: Callable[..., Any], node: RedisNode, status: Callable[[Any], int]
) -> list[int]:
    statuses = [status(request("get", "/customers/ada/total"))]
    node.stop()
    try:
        for _ in range(3):
            statuses.append(
                status(request("post", "/orders", json={"customer": "ada", "total": 1}))
            )
            statuses.append(status(request("get", "/customers/ada/total")))
            statuses.append(status(request("get", "/orders")))
    finally:
        node.start()
    statuses.append(status(request("get", "/customers/ada/total")))
    return statuses


def test_fastapi_redis_stopped_mid_run_never_500s(
    database: tuple[str, str], redis_server_factory: Callable[[], RedisNode]
) -> None:
    node = redis_server_factory()
    app = example("fastapi_app").create_app(database[0], [], node.url, secure_cookies=False)
    with TestClient(app) as client:
        statuses = _drive_through_an_outage(
            lambda method, path, **kw: client.request(method, path, **kw),
            node,
            lambda r: r.status_code,
        )
    assert all(code in (200, 201) for code in statuses), statuses


def test_flask_redis_stopped_mid_run_never_500s(
    database: tuple[str, str], redis_server_factory: Callable[[], RedisNode]
) -> None:
    node = redis_server_factory()
    app = example("flask_app").create_app(database[0], [], node.url, secure_cookies=False)
    client = app.test_client()
    statuses = _drive_through_an_outage(
        lambda method, path, **kw: client.open(path, method=method.upper(), **kw),
        node,
        lambda r: r.status_code,
    )
    assert all(code in (200, 201) for code in statuses), statuses


def test_rate_limits_on_real_redis_deny_with_retry_after(
    database: tuple[str, str], redis_server: RedisNode
) -> None:
    app = example("fastapi_app").create_app(database[0], [], redis_server.url, secure_cookies=False)
    key = {"X-Api-Key": uuid.uuid4().hex}
    with TestClient(app) as client:
        responses = [client.post("/orders/import", json=[], headers=key) for _ in range(6)]
    assert [r.status_code for r in responses] == [200] * 5 + [429]
    fields = rate_limit_fields(responses[-1].headers)
    assert fields["retry-after"] >= 1
    assert [name for name, _ in fields["ratelimit-policy"]] == ["120-per-60s", "5-per-60s"]
