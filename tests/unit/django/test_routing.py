"""``ScalekitRouter`` and ``ConsistencyMiddleware`` on SQLite (time-based read-your-writes).

Two aliases on one SQLite file; where a read went shows in ``QuerySet.db``.
The LSN path, through a paused replica, is in
``tests/integration/test_django_routing_pg.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections
from django.test import AsyncClient, Client, override_settings

from scalekit.contrib.django import ScalekitRouter, _router, use_primary
from scalekit.routing import ConsistencyToken
from tests.unit.django import _django  # noqa: F401  (configures Django)
from tests.unit.django._models import CREATE_TABLE, Order

ROUTER = "scalekit.contrib.django.ScalekitRouter"


@pytest.fixture
def routed() -> Iterator[None]:
    with connections["default"].cursor() as cursor:
        cursor.execute(CREATE_TABLE.format(serial="INTEGER"))
    with override_settings(
        ROOT_URLCONF="tests.unit.django._views",
        DATABASE_ROUTERS=[ROUTER],
        MIDDLEWARE=["scalekit.contrib.django.ConsistencyMiddleware"],
        SCALEKIT={"ROUTING": {"PRIMARY": "default", "REPLICAS": ["replica"]}},
    ):
        _router.reset()
        try:
            yield
        finally:
            _router.reset()


def test_reads_go_to_the_replica_writes_to_the_primary(routed: None) -> None:
    router = ScalekitRouter()
    assert router.db_for_read(Order) == "replica"
    assert router.db_for_write(Order) == "default"
    assert router.allow_migrate("default", "scalekit") is True
    assert router.allow_migrate("replica", "scalekit") is False
    assert router.allow_migrate("elsewhere", "scalekit") is None


def test_a_write_makes_this_context_read_the_primary(routed: None) -> None:
    assert Order.objects.all().db == "replica"
    Order.objects.create(customer="a")
    assert Order.objects.all().db == "default"  # sticky: no LSN on SQLite


def test_use_primary(routed: None) -> None:
    with use_primary():
        assert Order.objects.all().db == "default"
    assert Order.objects.all().db == "replica"


@pytest.mark.parametrize("prefix", ["orders", "aorders"])
async def test_the_token_travels_to_the_next_request(routed: None, prefix: str) -> None:
    client = AsyncClient()
    created = await client.post(f"/{prefix}", {"customer": "c"})
    assert created.status_code == 201
    token = created["X-Scalekit-Consistency"]
    assert ConsistencyToken.decode(token).lsn is None  # SQLite: time-based
    assert created.cookies["scalekit_consistency"]["httponly"]
    order = created.json()["id"]
    # The same user (the cookie came back): the primary, within the sticky period.
    assert (await client.get(f"/{prefix}/{order}")).json() == {"found": True, "db": "default"}
    # Another user, no token: a replica.
    assert (await AsyncClient().get(f"/{prefix}/{order}")).json()["db"] == "replica"
    # The token in a header (an API client, another instance): the primary again.
    other = await AsyncClient().get(f"/{prefix}/{order}", headers={"X-Scalekit-Consistency": token})
    assert other.json()["db"] == "default"


def test_sync_client_and_a_request_that_did_not_write(routed: None) -> None:
    client = Client()
    order = client.post("/orders").json()["id"]
    response = client.get(f"/orders/{order}")
    assert response.json()["db"] == "default"
    assert "X-Scalekit-Consistency" not in response  # no write: the cookie is left alone
    assert "scalekit_consistency" not in response.cookies


def test_a_forged_token_is_ignored(routed: None) -> None:
    client = Client(headers={"X-Scalekit-Consistency": "not-a-token"})
    client.cookies["scalekit_consistency"] = "garbage"
    assert client.get("/orders/1").json()["db"] == "replica"


def test_health_view(routed: Any) -> None:
    body = Client().get("/health").json()
    assert body["status"] == "ok"
    assert body["components"]["db:default"]["up"] is True
    assert body["components"]["db:replica"]["details"]["role"] == "replica"
    assert "NAME" not in str(body) and ".sqlite3" not in str(body)


def test_health_view_with_redis_down_is_a_warning(routed: Any) -> None:
    """The cache and the limits degrade without Redis: 200 and ``warn``, never 503."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    from scalekit.contrib.django import _settings

    with override_settings(
        SCALEKIT={
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "RATELIMIT": {"DEFAULT": "100/second"},
            "ROUTING": {"PRIMARY": "default", "REPLICAS": ["replica"]},
        }
    ):
        _settings.reset()
        try:
            response = Client().get("/health")
        finally:
            _settings.reset()
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "warn"
    assert body["components"]["redis:default"]["up"] is False
    assert str(port) not in str(body["components"]["redis:default"]["details"])
