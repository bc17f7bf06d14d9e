"""Every bad constructor argument of the pools is a ConfigurationError naming it; repr is safe.

The sweep passes each parameter a handful of wrong values (wrong type, out of
range, not finite) to ``RoutingPool`` and ``AsyncRoutingPool``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from scalekit.errors import ConfigurationError
from scalekit.routing import AsyncRoutingPool, RoutingPool
from scalekit.testing import FakeClock

NAN = float("nan")
BAD: list[tuple[str, Any]] = [
    ("name", None),
    ("name", 3),
    ("name", ""),
    ("blacklist_seconds", "x"),
    ("blacklist_seconds", -1),
    ("blacklist_seconds", NAN),
    ("blacklist_seconds", True),
    ("max_blacklist_seconds", "x"),
    ("max_blacklist_seconds", 1.0),  # below blacklist_seconds
    ("max_lag_seconds", "x"),
    ("max_lag_seconds", -1),
    ("max_lag_bytes", "x"),
    ("max_lag_bytes", 1.5),
    ("max_lag_bytes", -1),
    ("lag_readmit_ratio", "x"),
    ("lag_readmit_ratio", None),
    ("lag_readmit_ratio", 0),
    ("lag_readmit_ratio", 2),
    ("lag_readmit_ratio", NAN),
    ("consistency", "x"),
    ("consistency", None),
    ("sticky_seconds", "x"),
    ("sticky_timeout", None),
    ("lsn_probe_interval", -0.5),
    ("balancer", "x"),
    ("balancer", None),
    ("balancer", ["round_robin"]),
    ("weights", "x"),
    ("weights", 3),
    ("weights", [1]),
    ("weights", {"replica1": "x"}),
    ("weights", {"replica1": 0}),
    ("weights", {"replica1": float("inf")}),
    ("weights", {"nope": 1}),
    ("weights", {3: 1}),
    ("fallback_to_primary", "yes"),
    ("fallback_to_primary", None),
    ("fallback_to_primary", 1),
    ("max_primary_read_share", "x"),
    ("max_primary_read_share", None),
    ("max_primary_read_share", 2),
    ("spill_window_seconds", "x"),
    ("spill_window_seconds", 0),
    ("check_interval", "x"),
    ("check_interval", -1),
    ("role_check_interval", None),
    ("clock", None),
    ("clock", "x"),
    ("clock", object()),
    ("primary", None),
    ("primary", "x"),
    ("primary", []),
    ("primary", {"": None}),
    ("replicas", None),
    ("replicas", "x"),
    ("replicas", [None]),
    ("replicas", {"r": None}),
    ("replicas", {3: None}),
]


@pytest.fixture
def sync_engines() -> Iterator[tuple[sa.Engine, sa.Engine]]:
    primary = sa.create_engine("postgresql+psycopg://app:s3cret-pw@db-primary.internal/app")
    replica = sa.create_engine("postgresql+psycopg://app:s3cret-pw@db-replica.internal/app")
    yield primary, replica
    primary.dispose()
    replica.dispose()


@pytest.mark.parametrize(
    ("parameter", "value"), BAD, ids=[f"{p}-{index}" for index, (p, _) in enumerate(BAD)]
)
def test_every_bad_argument_is_a_configuration_error(
    sync_engines: tuple[sa.Engine, sa.Engine], parameter: str, value: Any
) -> None:
    primary, replica = sync_engines
    kwargs: dict[str, Any] = {"primary": primary, "replicas": [replica], parameter: value}
    with pytest.raises(ConfigurationError) as info:
        RoutingPool(**kwargs)
    assert info.value.parameter == parameter
    assert str(info.value)


@pytest.mark.parametrize(
    ("parameter", "value"),
    [("weights", "x"), ("clock", object()), ("name", 3), ("fallback_to_primary", "no")],
)
async def test_the_async_pool_checks_its_arguments_alike(parameter: str, value: Any) -> None:
    primary = create_async_engine("postgresql+psycopg://app:pw@h1/app")
    replica = create_async_engine("postgresql+psycopg://app:pw@h2/app")
    try:
        kwargs: dict[str, Any] = {"primary": primary, "replicas": [replica], parameter: value}
        with pytest.raises(ConfigurationError) as info:
            AsyncRoutingPool(**kwargs)
        assert info.value.parameter == parameter
    finally:
        await primary.dispose()
        await replica.dispose()


def test_repr_names_nodes_roles_and_health_never_urls(
    sync_engines: tuple[sa.Engine, sa.Engine],
) -> None:
    primary, replica = sync_engines
    clock = FakeClock()
    pool = RoutingPool(primary=primary, replicas={"eu": replica}, name="orders", clock=clock)
    try:
        text = repr(pool)
        nodes = "nodes=[primary: primary up, eu: replica up]"
        assert text == f"<RoutingPool 'orders' primary='primary' {nodes}>"
        pool.router.record_failure("eu", "OperationalError")
        assert "eu: replica down" in repr(pool)
        for secret in ("s3cret-pw", "db-primary.internal", "db-replica.internal", "postgresql"):
            assert secret not in repr(pool)
    finally:
        pool.close()


async def test_async_repr() -> None:
    primary = create_async_engine("postgresql+psycopg://app:s3cret-pw@h1/app")
    try:
        pool = AsyncRoutingPool(primary=primary)
        assert (
            repr(pool)
            == "<AsyncRoutingPool 'default' primary='primary' nodes=[primary: primary up]>"
        )
        assert "s3cret-pw" not in repr(pool)
        pool.close()
    finally:
        await primary.dispose()
