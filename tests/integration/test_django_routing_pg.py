"""``ScalekitRouter`` + ``ConsistencyMiddleware`` on the harness's PostgreSQL primary and replicas.

A write's token makes the writer's next request (cookie, or the header on
another client) see the write while both replicas have replay paused; a
client without the token reads a replica that has not got it; once replay
resumes, the same token is served by a replica. Sync and async views, through
Django's own test clients, on Django's psycopg backend.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import SyncToAsync
from django.db import connections
from django.test import AsyncClient, Client, override_settings
from sqlalchemy.engine import make_url

from scalekit.contrib.django import _router
from scalekit.routing import ConsistencyToken
from tests.unit.django import _django  # noqa: F401  (configures Django)
from tests.unit.django._models import CREATE_TABLE


def _django_db(url: str) -> dict[str, Any]:
    parts = make_url(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.database,
        "USER": parts.username,
        "HOST": parts.host,
        "PORT": parts.port,
    }


def _forget_everywhere(aliases: Any) -> None:
    """Close and drop the connections of ``aliases`` in this thread and in asgiref's
    thread-sensitive executor, where Django's ``AsyncClient`` runs sync code (views,
    middleware): connections are cached per thread, and an earlier test's SQLite
    ``default`` left there would answer for the primary."""

    def forget() -> None:
        connections.close_all()
        for alias in list(aliases):
            try:
                del connections[alias]
            except AttributeError:
                pass

    forget()
    SyncToAsync.single_thread_executor.submit(forget).result()


@pytest.fixture
def pg_routed(pg_cluster: Any, pg_url: str) -> Iterator[Any]:
    """Django's aliases on the harness: ``default`` the primary, ``replica1``/``replica2``."""
    dbname = make_url(pg_url).database
    assert pg_cluster.primary is not None
    pg_cluster.primary.execute(CREATE_TABLE.format(serial="SERIAL"), dbname=dbname)
    pg_cluster.wait_for_replicas()
    databases = {
        "default": _django_db(pg_url),
        **{
            f"replica{index}": _django_db(replica.url_for(dbname))
            for index, replica in enumerate(pg_cluster.replicas, 1)
        },
    }
    saved = connections.settings
    _forget_everywhere(databases)
    connections.settings = connections.configure_settings(databases)
    try:
        with override_settings(
            ROOT_URLCONF="tests.unit.django._views",
            DATABASE_ROUTERS=["scalekit.contrib.django.ScalekitRouter"],
            MIDDLEWARE=["scalekit.contrib.django.ConsistencyMiddleware"],
            SCALEKIT={
                "ROUTING": {
                    "PRIMARY": "default",
                    "REPLICAS": ["replica1", "replica2"],
                    "MAX_LAG_SECONDS": 60.0,  # a paused replica stays in rotation
                }
            },
        ):
            _router.reset()
            yield pg_cluster
    finally:
        _forget_everywhere(databases)
        connections.settings = saved
        _router.reset()


@pytest.mark.parametrize("prefix", ["orders", "aorders"])
async def test_token_makes_the_write_visible_through_paused_replicas(
    pg_routed: Any, prefix: str
) -> None:
    replicas = pg_routed.replicas
    for replica in replicas:
        replica.pause_replay()
    try:
        writer = AsyncClient()
        created = await writer.post(f"/{prefix}")
        assert created.status_code == 201
        token = created["X-Scalekit-Consistency"]
        assert ConsistencyToken.decode(token).lsn is not None
        order = created.json()["id"]

        # The writer's next request (its cookie): the primary, and the row is there.
        assert (await writer.get(f"/{prefix}/{order}")).json() == {"found": True, "db": "default"}
        # Another instance given the token in a header: the same.
        relayed = await AsyncClient().get(
            f"/{prefix}/{order}", headers={"X-Scalekit-Consistency": token}
        )
        assert relayed.json() == {"found": True, "db": "default"}
        # No token: a paused replica, which has not replayed the write.
        stranger = (await AsyncClient().get(f"/{prefix}/{order}")).json()
        assert stranger["db"] in ("replica1", "replica2")
        assert stranger["found"] is False
    finally:
        for replica in replicas:
            replica.resume_replay()
    pg_routed.wait_for_replicas()
    # Replay resumed: the same token is satisfied by a replica.
    caught_up = (await writer.get(f"/{prefix}/{order}")).json()
    assert caught_up == {"found": True, "db": caught_up["db"]}
    assert caught_up["db"] in ("replica1", "replica2")


def test_sync_client_on_postgres(pg_routed: Any) -> None:
    replica = pg_routed.replicas
    for node in replica:
        node.pause_replay()
    try:
        client = Client()
        order = client.post("/orders").json()["id"]
        assert client.get(f"/orders/{order}").json() == {"found": True, "db": "default"}
        assert Client().get(f"/orders/{order}").json()["found"] is False
    finally:
        for node in replica:
            node.resume_replay()


def test_replica_down_then_failover(pg_cluster_factory: Any) -> None:
    """A stopped replica leaves the rotation (reads go on, on the primary); after the
    primary dies and the replica is promoted, writes follow it. The pool's events."""
    from scalekit.routing import FailoverEvent, NodeEjected
    from scalekit.testing import capture_events
    from tests.unit.django._models import Order

    cluster = pg_cluster_factory(replicas=1)
    (replica,) = cluster.replicas
    cluster.primary.execute(CREATE_TABLE.format(serial="SERIAL"))
    cluster.wait_for_replicas()
    databases = {"default": _django_db(cluster.url), "replica1": _django_db(replica.url)}
    saved = connections.settings
    _forget_everywhere(databases)
    connections.settings = connections.configure_settings(databases)
    routing = {"PRIMARY": "default", "REPLICAS": ["replica1"], "CHECK_INTERVAL": 0.05}
    try:
        with (
            override_settings(
                DATABASE_ROUTERS=["scalekit.contrib.django.ScalekitRouter"],
                SCALEKIT={"ROUTING": routing},
            ),
            capture_events() as events,
        ):
            _router.reset()
            assert Order.objects.all().db == "replica1"
            replica.stop()
            connections.close_all()
            _router.routing().refresh()
            query = Order.objects.all()
            assert query.db == "default"
            assert query.count() == 0  # the read is served
            assert any(isinstance(e, NodeEjected) and e.node == "replica1" for e in events)

            replica.start()
            cluster.wait_for_replicas()
            cluster.primary.kill()
            replica.promote()
            connections.close_all()
            deadline = time.monotonic() + 30
            while _router.routing().core.primary != "replica1":
                assert time.monotonic() < deadline, "the promotion was not seen"
                time.sleep(0.1)
                _router.routing().refresh()
            order = Order.objects.create(customer="after failover")
            assert order._state.db == "replica1"
            assert any(isinstance(e, FailoverEvent) and e.new_primary == "replica1" for e in events)
    finally:
        connections.close_all()
        for alias in databases:
            try:
                del connections[alias]
            except AttributeError:
                pass
        connections.settings = saved
        _router.reset()
