"""One scenario list, run through the sync pool (SQLite) and the async pool (aiosqlite).

Each node is its own SQLite file with a ``whoami`` table naming it, so a
read reports where it ran. Replicas are opened read-only (``mode=ro``); a
replica "dies" when its file is moved away (connecting then fails) and comes
back when it is moved back. Time is a FakeClock, so stickiness and
blacklist periods are stepped by hand.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool

from scalekit.errors import ConfigurationError, NoHealthyNode, ReadOnlyViolation
from scalekit.instrumentation import capture_events
from scalekit.routing import (
    AsyncRoutingPool,
    NodeEjected,
    NodeReadmitted,
    ReadRetried,
    RouteDecision,
    RoutingPool,
    read_only,
    route_to_primary,
)
from scalekit.testing import FakeClock

NODES = ("primary", "replica1", "replica2")
WHOAMI = sa.text("SELECT name FROM whoami")


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str]


class WhoAmI(Base):
    __tablename__ = "whoami"

    name: Mapped[str] = mapped_column(primary_key=True)


WHO = sa.select(WhoAmI.name)


def _make_files(root: Path) -> dict[str, Path]:
    files = {}
    for name in NODES:
        path = root / f"{name}.db"
        engine = sa.create_engine(f"sqlite:///{path}")
        with engine.begin() as conn:
            Base.metadata.create_all(conn)
            conn.execute(sa.insert(WhoAmI), {"name": name})
        engine.dispose()
        files[name] = path
    return files


def _url(path: Path, name: str, driver: str) -> str:
    mode = "rw" if name == "primary" else "ro"
    return f"sqlite+{driver}:///file:{path}?mode={mode}&uri=true"


class Driver:
    """The same operations over the sync or the async pool; every method is ``async``."""

    def __init__(self, root: Path, kind: str, **options: Any) -> None:
        self.kind = kind
        self.files = _make_files(root)
        self.clock = FakeClock()
        options.setdefault("clock", self.clock)
        options.setdefault("blacklist_seconds", 5.0)
        driver = "pysqlite" if kind == "sync" else "aiosqlite"
        if kind == "sync":
            self.engines: list[Any] = [
                sa.create_engine(_url(self.files[n], n, driver), poolclass=NullPool) for n in NODES
            ]
            self.pool: Any = RoutingPool(
                primary=self.engines[0], replicas=self.engines[1:], **options
            )
        else:
            self.engines = [
                create_async_engine(_url(self.files[n], n, driver), poolclass=NullPool)
                for n in NODES
            ]
            self.pool = AsyncRoutingPool(
                primary=self.engines[0], replicas=self.engines[1:], **options
            )
        self.Session = self.pool.sessionmaker()

    async def close(self) -> None:
        self.pool.close()
        for engine in self.engines:
            if self.kind == "sync":
                engine.dispose()
            else:
                await engine.dispose()
        if self.kind == "async":
            # aiosqlite stops the worker thread of a *failed* connect by posting its result
            # back to the loop; let those threads finish while the loop is still open.
            for _ in range(100):
                if not any("_connection_worker" in t.name for t in threading.enumerate()):
                    break
                await asyncio.sleep(0.01)

    # -- sessions ------------------------------------------------------------------------------

    async def run(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(session)`` in a fresh session; ``fn`` returns a value or an awaitable."""
        if self.kind == "sync":
            with self.Session() as session:
                return fn(session)
        async with self.Session() as session:
            result = fn(session)
            while isinstance(result, Awaitable):
                result = await result
            return result

    async def read(self, statement: Any = WHO) -> str:
        return str(await self.run(lambda s: s.scalar(statement)))

    async def write(self, item_id: int) -> None:
        async def go(session: Any) -> None:
            session.add(Item(id=item_id, label="x"))
            result = session.commit()
            if isinstance(result, Awaitable):
                await result

        if self.kind == "sync":
            with self.Session() as session:
                session.add(Item(id=item_id, label="x"))
                session.commit()
        else:
            await self.run(go)

    async def write_then_read(self, item_id: int) -> str:
        if self.kind == "sync":
            with self.Session() as session:
                session.execute(sa.insert(Item).values(id=item_id, label="y"))
                where = session.scalar(WHO)
                session.commit()
                return str(where)
        async with self.Session() as session:
            await session.execute(sa.insert(Item).values(id=item_id, label="y"))
            where = await session.scalar(WHO)
            await session.commit()
            return str(where)

    async def text_write(self, item_id: int) -> None:
        insert = sa.text("INSERT INTO items (id, label) VALUES (:id, 'text')")
        if self.kind == "sync":
            with self.Session() as session:
                session.execute(insert, {"id": item_id})
                session.commit()
            return
        async with self.Session() as session:
            await session.execute(insert, {"id": item_id})
            await session.commit()

    async def read_in_explicit_transaction(self) -> str:
        if self.kind == "sync":
            with self.Session() as session, session.begin():
                return str(session.scalar(WHO))
        async with self.Session() as session, session.begin():
            return str(await session.scalar(WHO))

    async def readonly_connection(self, statement: Any) -> Any:
        if self.kind == "sync":
            with self.pool.connect(readonly=True) as conn:
                return conn.execute(statement).scalar()
        async with self.pool.connect(readonly=True) as conn:
            return (await conn.execute(statement)).scalar()

    async def begin_write(self, item_id: int) -> str:
        if self.kind == "sync":
            with self.pool.begin() as conn:
                conn.execute(sa.insert(Item).values(id=item_id, label="core"))
                return str(conn.execute(WHO).scalar())
        async with self.pool.begin() as conn:
            await conn.execute(sa.insert(Item).values(id=item_id, label="core"))
            return str((await conn.execute(WHO)).scalar())

    async def export_token(self) -> str | None:
        token = self.pool.export_token()
        if isinstance(token, Awaitable):
            token = await token
        return token  # type: ignore[no-any-return]

    # -- nodes ---------------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        path = self.files[name]
        path.rename(path.with_suffix(".gone"))

    def revive(self, name: str) -> None:
        path = self.files[name]
        path.with_suffix(".gone").rename(path)

    def rows_on(self, name: str) -> set[int]:
        engine = sa.create_engine(f"sqlite:///{self.files[name]}")
        try:
            with engine.connect() as conn:
                return set(conn.execute(sa.select(Item.id)).scalars())
        finally:
            engine.dispose()


@pytest.fixture(params=["sync", "async"])
async def driver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Driver]:
    d = Driver(tmp_path, request.param, check_interval=None)
    try:
        yield d
    finally:
        await d.close()


# -- the scenarios ------------------------------------------------------------------------------


async def test_reads_on_replicas_in_turn_writes_on_primary(driver: Driver) -> None:
    assert [await driver.read() for _ in range(4)] == ["replica1", "replica2"] * 2
    await driver.write(1)
    assert driver.rows_on("primary") == {1}
    assert driver.rows_on("replica1") == set()


async def test_reads_inside_a_transaction_that_wrote_stay_on_primary(driver: Driver) -> None:
    assert await driver.write_then_read(2) == "primary"


async def test_text_reads_go_to_replicas_anything_doubtful_to_the_primary(
    driver: Driver,
) -> None:
    assert (await driver.read(WHOAMI)).startswith("replica")
    # (SQLite has no FOR UPDATE: a doubtful word, here an alias named "share", does.)
    assert await driver.read(sa.text("SELECT name AS share FROM whoami")) == "primary"
    cte = sa.text("WITH w AS (SELECT name FROM whoami) SELECT name /* UPDATE */ FROM w")
    assert (await driver.read(cte)).startswith("replica")
    marked = sa.text("SELECT name FROM whoami").execution_options(scalekit_route="write")
    assert await driver.read(marked) == "primary"
    assert (await driver.read(read_only(sa.text("SELECT name AS share FROM whoami")))).startswith(
        "replica"
    )
    assert await driver.read(route_to_primary(WHO)) == "primary"
    assert await driver.read(WHO.with_for_update()) == "primary"
    with driver.pool.use_replica():  # a text read is no ReadOnlyViolation
        assert (await driver.read(WHOAMI)).startswith("replica")


async def test_a_text_read_on_the_primary_leaves_no_token(driver: Driver) -> None:
    with driver.pool.use_primary():
        assert await driver.read(WHOAMI) == "primary"
    assert driver.pool.router.var.get().pending_write_at is None
    assert (await driver.read()).startswith("replica")


async def test_time_stickiness_after_a_write(driver: Driver) -> None:
    await driver.write(3)
    with capture_events() as events:
        assert await driver.read() == "primary"
    assert [e.reason for e in events if isinstance(e, RouteDecision)] == ["sticky"]
    driver.clock.advance(2.0)  # sticky_seconds
    assert (await driver.read()).startswith("replica")


async def test_a_write_in_text_is_a_write_for_read_your_writes(driver: Driver) -> None:
    await driver.text_write(30)
    assert 30 in driver.rows_on("primary")
    assert await driver.read() == "primary"  # sticky after the text INSERT


async def test_reads_in_an_explicit_transaction_are_not_retried(driver: Driver) -> None:
    driver.kill("replica1")
    with pytest.raises(sa.exc.OperationalError):
        await driver.read_in_explicit_transaction()
    # The failure blacklisted replica1: the next transaction picks a live node.
    assert await driver.read_in_explicit_transaction() == "replica2"


async def test_use_primary_and_use_replica(driver: Driver) -> None:
    with driver.pool.use_primary():
        assert await driver.read() == "primary"
    assert (await driver.read()).startswith("replica")
    await driver.write(4)
    with driver.pool.use_replica():
        # Forced to a replica: stickiness is ignored, and writes are refused.
        assert (await driver.read()).startswith("replica")
        with pytest.raises(ReadOnlyViolation, match="use_replica"):
            await driver.write(5)
    assert 5 not in driver.rows_on("primary")


async def test_readonly_connection_guard_and_begin(driver: Driver) -> None:
    assert str(await driver.readonly_connection(WHO)).startswith("replica")
    with pytest.raises(ReadOnlyViolation):
        await driver.readonly_connection(sa.delete(Item))
    with pytest.raises(ReadOnlyViolation):
        await driver.readonly_connection(sa.text("DELETE FROM items"))
    assert await driver.begin_write(6) == "primary"
    assert 6 in driver.rows_on("primary")


async def test_token_export_and_import(driver: Driver) -> None:
    assert await driver.export_token() is None
    await driver.write(7)
    token = await driver.export_token()
    assert token is not None
    driver.pool.reset_context()
    assert (await driver.read()).startswith("replica")
    driver.pool.import_token(token)
    assert await driver.read() == "primary"
    with pytest.raises(ConfigurationError):
        driver.pool.import_token("not a token")


async def test_dead_replica_read_is_retried_and_node_rejoins(driver: Driver) -> None:
    with capture_events() as events:
        driver.kill("replica1")
        where = [await driver.read() for _ in range(6)]
        assert where == ["replica2"] * 6
        assert [e.node for e in events if isinstance(e, NodeEjected)] == ["replica1"]
        retried = [e.failed_node for e in events if isinstance(e, ReadRetried)]
        assert retried == ["replica1"]  # once: then it is blacklisted, not tried
        driver.revive("replica1")
        assert "replica1" not in [await driver.read() for _ in range(4)]  # still blacklisted
        driver.clock.advance(5.0)
        assert "replica1" in [await driver.read() for _ in range(4)]
        assert [e.node for e in events if isinstance(e, NodeReadmitted)] == ["replica1"]


async def test_all_replicas_dead_falls_back_to_primary(driver: Driver) -> None:
    driver.kill("replica1")
    driver.kill("replica2")
    assert [await driver.read() for _ in range(3)] == ["primary"] * 3
    assert str(await driver.readonly_connection(WHO)) == "primary"


async def test_everything_dead_raises_no_healthy_node(driver: Driver) -> None:
    for name in NODES:
        driver.kill(name)
    with pytest.raises(NoHealthyNode) as info:
        await driver.read()
    assert set(info.value.tried) >= {"replica1", "replica2"}


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_no_fallback_raises_when_replicas_are_dead(tmp_path: Path, kind: str) -> None:
    d = Driver(tmp_path, kind, check_interval=None, fallback_to_primary=False)
    try:
        d.kill("replica1")
        d.kill("replica2")
        with pytest.raises(NoHealthyNode) as info:
            await d.read()
        assert info.value.role == "replica"
    finally:
        await d.close()


async def test_empty_replica_list_sends_everything_to_primary(tmp_path: Path) -> None:
    files = _make_files(tmp_path)
    engine = sa.create_engine(_url(files["primary"], "primary", "pysqlite"))
    pool = RoutingPool(primary=engine)
    try:
        with pool.sessionmaker()() as session:
            assert session.scalar(WHO) == "primary"
    finally:
        pool.close()
        engine.dispose()


# -- context isolation: threads and tasks -------------------------------------------------------


def test_use_primary_is_scoped_to_its_thread(tmp_path: Path) -> None:
    d = Driver(tmp_path, "sync", check_interval=None)
    inside = threading.Event()
    done = threading.Event()
    seen: list[str] = []

    def forced() -> None:
        with d.pool.use_primary():
            inside.set()
            done.wait(5)
            with d.Session() as session:
                seen.append(str(session.scalar(WHO)))

    thread = threading.Thread(target=forced)
    thread.start()
    inside.wait(5)
    with d.Session() as session:
        other = str(session.scalar(WHO))
    done.set()
    thread.join()
    asyncio.run(d.close())
    assert other.startswith("replica")
    assert seen == ["primary"]


async def test_use_primary_is_scoped_to_its_task(tmp_path: Path) -> None:
    d = Driver(tmp_path, "async", check_interval=None)
    inside = asyncio.Event()
    done = asyncio.Event()

    async def forced() -> str:
        with d.pool.use_primary():
            inside.set()
            await done.wait()
            return await d.read()

    async def plain() -> str:
        await inside.wait()
        where = await d.read()
        done.set()
        return where

    try:
        forced_where, plain_where = await asyncio.gather(forced(), plain())
    finally:
        await d.close()
    assert forced_where == "primary"
    assert plain_where.startswith("replica")


# -- construction errors and health -------------------------------------------------------------


def test_configuration_errors(tmp_path: Path) -> None:
    files = _make_files(tmp_path)
    primary = sa.create_engine(f"sqlite:///{files['primary']}")
    replica = sa.create_engine(f"sqlite:///{files['replica1']}")
    async_replica = create_async_engine(f"sqlite+aiosqlite:///{files['replica2']}")
    cases: list[tuple[Callable[[], Any], str]] = [
        (lambda: RoutingPool(primary=primary, replicas=[primary]), "same engine"),
        (lambda: RoutingPool(primary=primary, replicas=[async_replica]), "AsyncEngine"),
        (lambda: AsyncRoutingPool(primary=async_replica, replicas=[replica]), "sync Engine"),
        (lambda: RoutingPool(primary=primary, blacklist_seconds=-1), "blacklist_seconds"),
        (lambda: RoutingPool(primary=primary, sticky_seconds=float("nan")), "sticky_seconds"),
        (lambda: RoutingPool(primary=primary, replicas="sqlite://"), "replicas"),
        (lambda: RoutingPool(primary=primary, consistency="lsn"), "PostgreSQL"),
        (lambda: RoutingPool(primary=primary, replicas={"": replica}), "names"),
        (lambda: RoutingPool(primary=[]), "primary"),
    ]
    for build, fragment in cases:
        with pytest.raises(ConfigurationError, match=fragment):
            build()
    primary.dispose()
    replica.dispose()


def test_health_pool_usage_warnings_and_masked_urls(tmp_path: Path) -> None:
    files = _make_files(tmp_path)
    primary = sa.create_engine(f"sqlite:///{files['primary']}", pool_size=5, max_overflow=0)
    secret = sa.create_engine("postgresql+psycopg://app:hunter2@db.invalid:5432/app")
    pool = RoutingPool(primary=primary, replicas={"analytics": secret}, check_interval=None)
    try:
        held = [primary.connect() for _ in range(4)]
        report = pool.health()
        assert report["nodes"]["primary"]["pool"]["checked_out"] == 4
        assert report["nodes"]["primary"]["warnings"] == ["pool usage above 80%"]
        held.append(primary.connect())
        report = pool.health()
        assert report["nodes"]["primary"]["warnings"] == ["pool usage above 95%"]
        assert report["nodes"]["primary"]["pool"]["usage"] == 1.0
        assert report["nodes"]["analytics"]["role"] == "replica"
        assert "hunter2" not in repr(report)
        assert "***" in report["nodes"]["analytics"]["url"]
        for conn in held:
            conn.close()
    finally:
        pool.close()
        primary.dispose()
        secret.dispose()


async def test_async_pool_waits_through_the_greenlet_bridge(tmp_path: Path) -> None:
    # sticky_timeout waits happen inside the router, which the async pool runs in
    # SQLAlchemy's greenlet bridge: the wait must suspend the task, not block the loop.
    from sqlalchemy.util import greenlet_spawn

    d = Driver(tmp_path, "async", check_interval=None)
    try:
        await greenlet_spawn(d.pool.router._sleep, 0.25)
        assert d.clock.sleeps == [0.25]
    finally:
        await d.close()


def test_least_in_use_reads_the_engines_checked_out_connections(tmp_path: Path) -> None:
    files = _make_files(tmp_path)
    engines = [sa.create_engine(_url(files[n], n, "pysqlite")) for n in NODES]
    pool = RoutingPool(
        primary=engines[0], replicas=engines[1:], balancer="least_in_use", check_interval=None
    )
    Session = pool.sessionmaker()
    try:
        held = [engines[1].connect() for _ in range(2)]  # replica1 is busy
        for _ in range(4):
            with Session() as session:
                assert session.scalar(WHO) == "replica2"
        for conn in held:
            conn.close()
        held = [engines[2].connect() for _ in range(3)]  # now replica2 is the busy one
        with Session() as session:
            assert session.scalar(WHO) == "replica1"
        for conn in held:
            conn.close()
    finally:
        pool.close()
        for engine in engines:
            engine.dispose()


# -- the read fast path --------------------------------------------------------------------------


def spy_fast_path(driver: Driver) -> list[bool]:
    """Record, per call of the core's fast path, whether it gave a plan."""
    core = driver.pool.router.core
    original = core.fast_read
    taken: list[bool] = []

    def fast_read(context: Any) -> Any:
        attempts = original(context)
        taken.append(attempts is not None)
        return attempts

    core.fast_read = fast_read
    return taken


async def test_plain_reads_take_the_fast_path_and_keep_the_rotation(driver: Driver) -> None:
    taken = spy_fast_path(driver)
    # The first read builds the fast path through the full plan; the others use it.
    assert [await driver.read() for _ in range(5)] == ["replica1", "replica2"] * 2 + ["replica1"]
    assert taken == [False, True, True, True, True]
    assert str(await driver.readonly_connection(WHO)) == "replica2"  # Core path, same rotation
    assert taken[-1] is True


async def test_fast_path_is_not_taken_for_writes_tokens_forced_roles_or_locks(
    driver: Driver,
) -> None:
    taken = spy_fast_path(driver)
    await driver.read()
    # Statements that write never reach it: a FOR UPDATE select, text, DML in a transaction.
    assert await driver.read(WHO.with_for_update()) == "primary"
    assert await driver.read(sa.text("SELECT name AS share FROM whoami")) == "primary"
    assert await driver.read(route_to_primary(WHO)) == "primary"
    assert await driver.write_then_read(40) == "primary"
    assert taken == [False]
    # After a commit the context holds a pending write, then a token: declined.
    assert await driver.read() == "primary"
    assert taken[-1] is False
    with driver.pool.use_primary():
        assert await driver.read() == "primary"
    assert taken[-1] is False
    driver.pool.reset_context()
    assert (await driver.read()).startswith("replica")
    assert taken[-1] is True
    with driver.pool.use_primary():
        assert await driver.read() == "primary"
    assert taken[-1] is False
    with driver.pool.use_replica():
        assert (await driver.read()).startswith("replica")
    assert taken[-1] is False
    driver.pool.import_token(await _token_after_write(driver, 41))
    driver_token_reads = [await driver.read() for _ in range(2)]
    assert driver_token_reads == ["primary", "primary"]  # sticky, not the fast rotation
    assert taken[-1] is False


async def _token_after_write(driver: Driver, item_id: int) -> str:
    driver.pool.reset_context()
    await driver.write(item_id)
    token = await driver.export_token()
    assert token is not None
    driver.pool.reset_context()
    return token


async def test_fast_path_is_dropped_when_a_replica_fails_and_rebuilt_when_it_rejoins(
    driver: Driver,
) -> None:
    taken = spy_fast_path(driver)
    await driver.read()
    await driver.read()
    assert taken == [False, True]
    driver.kill("replica1")
    where = [await driver.read() for _ in range(4)]
    assert where == ["replica2"] * 4
    # The first read picked replica1 on the fast path, failed and was retried on the full
    # path; while replica1 is blacklisted the fast path declines.
    assert taken[2:] == [True, False, False, False]
    driver.revive("replica1")
    driver.clock.advance(5.0)
    assert "replica1" in [await driver.read() for _ in range(4)]  # probation, then readmitted
    assert sorted([await driver.read() for _ in range(2)]) == ["replica1", "replica2"]
    assert taken[-2:] == [True, True]


async def test_an_expired_time_token_is_dropped_and_the_fast_path_resumes(driver: Driver) -> None:
    taken = spy_fast_path(driver)
    await driver.write(50)
    assert await driver.read() == "primary"  # sticky
    assert await driver.export_token() is not None
    driver.clock.advance(2.0)  # sticky_seconds
    assert (await driver.read()).startswith("replica")
    assert await driver.export_token() is None  # nothing left to ask of a read
    assert (await driver.read()).startswith("replica")
    assert taken[-1] is True
