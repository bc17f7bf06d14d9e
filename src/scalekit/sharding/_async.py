"""The asyncio shard map and catalog: sessions, fan-out reads, pagination, publishing maps.

The rules are pure and live elsewhere: the key hash in ``_hash.py``, the
assignment in ``_map.py``, merging rows in ``_core.py``, the catalog's tables
in ``_catalog.py``; what both shells share without I/O (look-ups, the
commit-time fence check) is in ``_base.py`` and the routing ``Session`` in
``_orm.py``. This file holds only what talks to the databases, and the sync
shell is generated from it by ``scripts/unasync.py``. Fan-outs run one task
per target.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from scalekit._unasync import IS_ASYNC
from scalekit.errors import ConfigurationError, FanOutError, ShardingError
from scalekit.pagination._plan_cache import cached_plan
from scalekit.routing._async import AsyncRoutingPool
from scalekit.sharding._base import ShardMapBase
from scalekit.sharding._catalog import (
    catalog_metadata,
    catalog_table,
    check_map_name,
    decode_assignment,
    encode_assignment,
    fence_metadata,
    fence_table,
    moved_targets,
)
from scalekit.sharding._core import (
    Distribution,
    aggregate_plan,
    merge_aggregates,
    merge_ordered,
)
from scalekit.sharding._hash import KeyType, ShardKey, logical_shard, shard_sql
from scalekit.sharding._map import ShardAssignment
from scalekit.sharding._orm import ShardSession

if TYPE_CHECKING:
    from sqlalchemy.engine import FrozenResult
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from scalekit.pagination._cursor import CursorCodec
    from scalekit.pagination._keyset import Page

__all__ = ["AsyncShardCatalog", "AsyncShardMap"]

__unasync__ = {
    "afan_out": "fan_out",
    "apaginate": "paginate",
    "adistribution": "distribution",
    "arefresh": "refresh",
    "apublish": "publish",
    "ainstall": "install",
    "ainstall_fences": "install_fences",
    "aload": "load",
    "afrom_catalog": "from_catalog",
    "_arun_all": "_run_all",
    "_aread_session": "_read_session",
    "_awrite_connection": "_write_connection",
    "The asyncio shard map and catalog": "The sync shard map and catalog",
    "This file holds only what talks to the databases, and the sync\n"
    "shell is generated from it by ``scripts/unasync.py``. Fan-outs run one task\n"
    "per target.": (
        "This file is generated from the asyncio shell by ``scripts/unasync.py``.\n"
        "Fan-outs run one thread per target."
    ),
}

_T = TypeVar("_T")
_DEFAULT: Any = object()


class AsyncShardCatalog:
    """The shared, versioned shard map: a table on a database every instance reads.

    ``engine`` holds the table ``scalekit_shard_catalog`` (create it with
    :meth:`ainstall`); ``name`` tells several maps apart in one table. Each
    published version is a row; :meth:`aload` reads the newest.

    >>> catalog = AsyncShardCatalog(engine)  # doctest: +SKIP
    >>> await catalog.ainstall()  # doctest: +SKIP
    >>> await catalog.apublish(assign_balanced(["db0", "db1"]))  # doctest: +SKIP

    Raises:
        ConfigurationError: ``engine`` is not an engine of this colour, or a bad ``name``.
    """

    def __init__(self, engine: AsyncEngine, *, name: str = "default") -> None:
        expected: type[Any]
        if IS_ASYNC:
            from sqlalchemy.ext.asyncio import AsyncEngine

            expected = AsyncEngine
        else:
            expected = sa.Engine
        given: object = engine
        if not isinstance(given, expected):
            raise ConfigurationError(
                f"the catalog needs an {expected.__name__}, not {type(given).__name__}",
                parameter="engine",
            )
        self.engine = engine
        self.name = check_map_name(name)

    async def ainstall(self) -> None:
        """Create the catalog table if it does not exist."""
        async with self.engine.begin() as conn:
            if IS_ASYNC:
                await conn.run_sync(catalog_metadata.create_all)
            else:
                catalog_metadata.create_all(conn)

    async def aload(self) -> ShardAssignment | None:
        """The newest published assignment of this map, or None when none was published.

        Raises:
            ConfigurationError: the stored row is corrupt.
        """
        statement = (
            sa.select(catalog_table)
            .where(catalog_table.c.map_name == self.name)
            .order_by(catalog_table.c.version.desc())
            .limit(1)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(statement)).first()
        return None if row is None else decode_assignment(row)

    async def apublish(self, assignment: ShardAssignment) -> None:
        """Store ``assignment`` as the newest version (it must be the newest plus one, or 1).

        Publishing the same assignment again is a no-op, so a publisher that
        died after writing can rerun. To move shards use
        :meth:`AsyncShardMap.apublish`, which raises the targets' fences first.

        Raises:
            ShardingError: another version with that number exists (someone
                published first: reload and plan again), or the version does
                not follow the newest.
            ConfigurationError: the logical shard count differs from the stored map's.
        """
        latest = await self.aload()
        if latest is not None and latest.logical_shards != assignment.logical_shards:
            raise ConfigurationError(
                f"the logical shard count changed from {latest.logical_shards} "
                f"(version {latest.version}) to {assignment.logical_shards}; "
                "it is fixed once data exists",
                parameter="logical_shards",
            )
        if latest == assignment:
            return
        expected = 1 if latest is None else latest.version + 1
        if assignment.version != expected:
            raise ShardingError(
                f"cannot publish version {assignment.version} of shard map {self.name!r}: "
                f"the next version is {expected}"
            )
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    catalog_table.insert().values(encode_assignment(self.name, assignment))
                )
        except IntegrityError as error:
            raise ShardingError(
                f"version {assignment.version} of shard map {self.name!r} was published by "
                "another instance meanwhile; reload and plan again"
            ) from error

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} on {self.engine.url!r}>"


class AsyncShardMap(ShardMapBase):
    """Logical shards assigned to named targets; routes a key to its database.

    A target is an ``AsyncEngine`` or an ``AsyncRoutingPool`` (then each
    shard has its own primary and replicas: reads go to a fresh replica,
    writes to the primary)::

        shards = AsyncShardMap({"db0": engine0, "db1": pool1, "db2": engine2})
        async with shards.session(user_id) as session:   # bound to user_id's target
            session.add(User(id=user_id, ...))
            await session.commit()
        rows = await shards.afan_out(select(func.count()).select_from(User))  # [(total,)]

    ``assignment`` defaults to :func:`assign_balanced` over the names in
    ``targets`` order with ``logical_shards`` (1024) logical shards. A map
    shared by several instances comes from a catalog:
    ``await AsyncShardMap.afrom_catalog(catalog, targets)``; then commits that
    wrote are checked against each target's fence and refused with
    :class:`~scalekit.errors.StaleShardMap` once another instance published
    a map that moved shards there. ``fan_out_timeout`` (seconds, None: no
    limit) bounds each target of a fan-out.

    Raises:
        ConfigurationError: no target, a value that is not an engine or pool
            of this colour, the same engine twice, ``logical_shards`` given
            with an assignment of another count, or target names that differ
            from the assignment's (the names are listed).
    """

    _async = IS_ASYNC

    def __init__(
        self,
        targets: Mapping[str, Any],
        *,
        assignment: ShardAssignment | None = None,
        logical_shards: int | None = None,
        fan_out_timeout: float | None = None,
        catalog: AsyncShardCatalog | None = None,
    ) -> None:
        if catalog is not None and not isinstance(catalog, AsyncShardCatalog):
            raise ConfigurationError("catalog must be a shard catalog", parameter="catalog")
        if catalog is not None and assignment is None:
            raise ConfigurationError(
                "a map from a catalog needs its assignment; use afrom_catalog()",
                parameter="assignment",
            )
        self._catalog = catalog
        self._executor_pool: concurrent.futures.ThreadPoolExecutor | None = None
        super().__init__(
            targets,
            assignment=assignment,
            logical_shards=logical_shards,
            name="default" if catalog is None else catalog.name,
            fenced=catalog is not None,
            fan_out_timeout=fan_out_timeout,
        )

    @classmethod
    async def afrom_catalog(
        cls,
        catalog: AsyncShardCatalog,
        targets: Mapping[str, Any],
        *,
        fan_out_timeout: float | None = None,
    ) -> AsyncShardMap:
        """The map published in ``catalog``, over ``targets`` (a superset of its names).

        Raises:
            ConfigurationError: nothing is published yet, or a target named by
                the map has no engine or pool in ``targets``.
        """
        assignment = await catalog.aload()
        if assignment is None:
            raise ConfigurationError(
                f"shard map {catalog.name!r} has no published version; publish one first "
                "(catalog.apublish(assign_balanced([...])))",
                parameter="catalog",
            )
        return cls(targets, assignment=assignment, fan_out_timeout=fan_out_timeout, catalog=catalog)

    def _install(self, assignment: ShardAssignment, *, exact: bool = False) -> None:
        super()._install(assignment, exact=exact and self._catalog is None)

    # -- sessions ------------------------------------------------------------------------------

    def session(self, key: ShardKey, **session_options: Any) -> AsyncSession:
        """A new session on the target holding ``key`` (its routing session for a pool).

        ``session_options`` go to the session (``expire_on_commit=False``...).
        Use it as a context manager; keep one session to one shard key. With
        a catalog, a commit that wrote is refused with
        :class:`~scalekit.errors.StaleShardMap` when the map is stale.

        Raises:
            ConfigurationError: ``key`` is not an int, str, bytes or UUID.
        """
        name = self.name_for(key)
        value = self._targets[name]
        session: AsyncSession
        if isinstance(value, AsyncRoutingPool):
            session = value.sessionmaker(**session_options)()
        else:
            session = AsyncSession(bind=value, **session_options)
        if IS_ASYNC:
            self._watch_writes(session.sync_session, name)
        else:
            self._watch_writes(session, name)
        return session

    def sessionmaker(self, **kwargs: Any) -> async_sessionmaker[Any]:
        """A session factory whose sessions route each statement by its shard key.

        See :class:`~scalekit.sharding.ShardSession`: the key is the
        ``shard_key`` execution option, else the session's ``shard_key=``;
        a statement with neither raises :class:`~scalekit.errors.ShardingError`.
        Keyword arguments go to the session factory (not ``bind``).
        """
        if IS_ASYNC:
            factory = async_sessionmaker(sync_session_class=ShardSession, shard_map=self, **kwargs)
        else:
            factory = async_sessionmaker(class_=ShardSession, shard_map=self, **kwargs)
        return factory

    @contextlib.asynccontextmanager
    async def _aread_session(self, name: str) -> AsyncIterator[AsyncSession]:
        value = self._targets[name]
        if isinstance(value, AsyncRoutingPool):
            async with value.connect(readonly=True) as conn, AsyncSession(bind=conn) as session:
                yield session
        else:
            async with value.connect() as conn, AsyncSession(bind=conn) as session:
                yield session

    @contextlib.asynccontextmanager
    async def _awrite_connection(self, name: str) -> AsyncIterator[AsyncConnection]:
        value = self._targets[name]
        async with value.begin() as conn:
            yield conn

    # -- fan-out -------------------------------------------------------------------------------

    def _names(self, targets: Sequence[str] | None) -> list[str]:
        if targets is None:
            return list(self._assignment.targets)
        for name in targets:
            self.target(name)
        return list(targets)

    async def _arun_all(
        self,
        names: Sequence[str],
        read: Callable[[str], Awaitable[_T]],
        timeout: float | None,
    ) -> list[_T]:
        """``read(name)`` on every target at once; FanOutError naming the failed ones."""
        failures: dict[str, BaseException] = {}
        results: dict[str, _T] = {}
        if IS_ASYNC:

            async def one(name: str) -> _T:
                if timeout is None:
                    return await read(name)
                return await asyncio.wait_for(read(name), timeout)

            outcomes = await asyncio.gather(*(one(name) for name in names), return_exceptions=True)
            for name, outcome in zip(names, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    failures[name] = outcome
                else:
                    results[name] = outcome
        else:
            executor = self._executor()
            futures = {
                name: executor.submit(contextvars.copy_context().run, read, name) for name in names
            }
            done, _ = concurrent.futures.wait(futures.values(), timeout=timeout)
            for name, future in futures.items():
                if future not in done:
                    future.cancel()
                    failures[name] = TimeoutError(f"no answer within {timeout} seconds")
                elif (error := future.exception()) is not None:
                    failures[name] = error
                else:
                    results[name] = future.result()
        if failures:
            details = ", ".join(
                f"{name} ({type(error).__name__}: {error})" for name, error in failures.items()
            )
            raise FanOutError(
                f"fan-out failed on {len(failures)} of {len(names)} targets: {details}",
                failures=failures,
            ) from next(iter(failures.values()))
        return [results[name] for name in names]

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor_pool is None:
            self._executor_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(len(self._targets), 1), thread_name_prefix="scalekit-shard"
            )
        return self._executor_pool

    def close(self) -> None:
        """Stop the fan-out threads (the sync map's), waiting for reads that timed out.

        A sync fan-out that timed out leaves its threads running the query
        until the server answers; close before disposing of the engines.
        Engines and pools stay yours to close.
        """
        if self._executor_pool is not None:
            self._executor_pool.shutdown(wait=True, cancel_futures=True)
            self._executor_pool = None

    async def afan_out(
        self,
        statement: Any,
        *,
        targets: Sequence[str] | None = None,
        timeout: float | None = _DEFAULT,
    ) -> list[Any]:
        """Run the read ``statement`` on every target at once and return all the rows.

        Rows concatenate in target order. When the select's columns hold
        ``count``, ``sum``, ``min`` or ``max``, rows of the same group (the
        other columns, which must be its GROUP BY) merge into one: counts and
        sums add, minima and maxima take the extreme, so ``count(*)`` gives
        one row with the total. On a routing pool the read goes to a replica.
        ``targets`` limits the targets (names); ``timeout`` (seconds) bounds
        each target, defaulting to the map's ``fan_out_timeout``. For an
        ordered, paged read use :meth:`apaginate`.

        Raises:
            FanOutError: some targets failed or timed out (``.failures`` by name).
            ShardingError: an aggregate that cannot merge (``avg``,
                ``count(DISTINCT ...)``...): select ``sum`` and ``count``.
            UnknownShard: a name in ``targets`` is not a target.
        """
        plan = aggregate_plan(statement)
        names = self._names(targets)

        async def read(name: str) -> FrozenResult[Any]:
            async with self._aread_session(name) as session:
                return (await session.execute(statement)).freeze()

        frozen = await self._arun_all(
            names, read, self.fan_out_timeout if timeout is _DEFAULT else timeout
        )
        if plan is None:
            return [row for result in frozen for row in result.data]
        merged = merge_aggregates(plan, (row for result in frozen for row in result.data))
        return list(frozen[0].with_new_rows(cast("list[Any]", merged))().all())

    async def apaginate(
        self,
        statement: Any,
        *,
        order_by: Sequence[Any] | None = None,
        limit: int = 50,
        after: str | None = None,
        before: str | None = None,
        last: bool = False,
        codec: CursorCodec | None = None,
        timeout: float | None = _DEFAULT,
    ) -> Page[Any]:
        """One keyset page of ``statement`` across every target, in order.

        Each target runs the page's seek (at most ``limit + 1`` rows, the
        same statement :func:`scalekit.pagination.apaginate` runs) and the
        rows merge in order, so a page costs the same at any depth. Cursors
        come from ``codec`` (signed when it has a secret) and work on every
        target: ``after=page.next_cursor``, ``before=page.prev_cursor``,
        ``last=True``. The order must be total (the primary key is appended
        when it is not) and the primary key unique across shards. Sort keys
        compare in Python in the merge: text sorts by code point, so give text
        keys ``COLLATE "C"`` on the server (or sort by non-text keys).

        Raises:
            ConfigurationError: what :func:`scalekit.pagination.apaginate`
                raises for the order, or targets of different dialects.
            InvalidCursor: ``after``/``before`` is not a cursor of this query and codec.
            FanOutError: some targets failed or timed out.
        """
        plan = cached_plan(statement, order_by, limit=limit, codec=codec, dialect=self._dialect())
        prepared = plan.prepare(after=after, before=before, last=last)

        async def read(name: str) -> FrozenResult[Any]:
            async with self._aread_session(name) as session:
                result = await session.execute(prepared.statement, prepared.params)
                return result.freeze()

        frozen = await self._arun_all(
            self._names(None), read, self.fan_out_timeout if timeout is _DEFAULT else timeout
        )
        rows = merge_ordered(
            [result.data for result in frozen],
            plan.row_sort_key(),
            reverse=prepared.backwards,
            take=limit + 1,
        )
        return plan.finish(prepared, frozen[0].with_new_rows(rows)())

    async def adistribution(
        self,
        column: Any,
        *,
        key_type: KeyType | None = None,
        timeout: float | None = _DEFAULT,
    ) -> Distribution:
        """Rows per logical shard and per target for the table of ``column`` (its shard key).

        On PostgreSQL the server groups by :func:`shard_sql` (one row per
        logical shard comes back); elsewhere the keys are read and hashed
        here. ``misplaced`` counts rows found on a target that does not own
        their logical shard (a move in progress or a routing bug).

        Raises:
            FanOutError: some targets failed or timed out.
            ConfigurationError: the key type cannot be inferred (pass ``key_type``).
        """
        count = self._count
        postgres = self._dialect().name == "postgresql"
        if postgres:
            logical = shard_sql(column, count, key_type=key_type).label("logical")
            statement: Any = sa.select(logical, sa.func.count()).group_by(logical)
        else:
            statement = sa.select(column)

        async def read(name: str) -> dict[int, int]:
            found: dict[int, int] = {}
            async with self._aread_session(name) as session:
                result = await session.execute(statement)
                if postgres:
                    for shard, rows in result:
                        found[int(shard)] = int(rows)
                else:
                    for (key,) in result:
                        shard = logical_shard(key, count)
                        found[shard] = found.get(shard, 0) + 1
            return found

        names = self._names(None)
        per_target = await self._arun_all(
            names, read, self.fan_out_timeout if timeout is _DEFAULT else timeout
        )
        return Distribution.build(self._assignment, dict(zip(names, per_target, strict=True)))

    # -- the shared map ------------------------------------------------------------------------

    @property
    def catalog(self) -> AsyncShardCatalog | None:
        """The catalog this map reloads from, or None for a fixed map."""
        return self._catalog

    def _need_catalog(self) -> AsyncShardCatalog:
        if self._catalog is None:
            raise ConfigurationError(
                "this shard map has no catalog; build it with afrom_catalog()",
                parameter="catalog",
            )
        return self._catalog

    async def arefresh(self) -> bool:
        """Reload the catalog; use its newest version if newer. Return whether it changed.

        Raises:
            ConfigurationError: no catalog, or the new map names a target this
                instance has no engine or pool for, or changed the logical count.
        """
        latest = await self._need_catalog().aload()
        if latest is None or latest.version <= self._assignment.version:
            return False
        self._install(latest)
        return True

    async def ainstall_fences(self) -> None:
        """Create the fence table on every target, at the current map version if absent."""
        for name in self._targets:
            async with self._awrite_connection(name) as conn:
                if IS_ASYNC:
                    await conn.run_sync(fence_metadata.create_all)
                else:
                    fence_metadata.create_all(conn)
                exists = (
                    await conn.execute(
                        sa.select(fence_table.c.version).where(fence_table.c.map_name == self.name)
                    )
                ).first()
                if exists is None:
                    await conn.execute(
                        fence_table.insert().values(
                            map_name=self.name, version=self._assignment.version
                        )
                    )

    async def apublish(self, assignment: ShardAssignment) -> None:
        """Publish ``assignment`` (the newest version plus one) and use it here.

        The fences of the targets that gain or lose a logical shard are raised
        to the new version first, then the catalog row is written, so a stale
        instance's write there is refused from that moment; a publisher that
        died half way reruns the same call. Moving the rows is not done here:
        publish once they are where the new map says (or while writes to the
        moving shards are blocked).

        Raises:
            ShardingError: the version is not the newest plus one, or another
                instance published it first.
            ConfigurationError: no catalog, a target without an engine or pool
                here, or a changed logical shard count.
        """
        catalog = self._need_catalog()
        latest = await catalog.aload()
        base = latest if latest is not None else self._assignment
        if latest is not None and latest != assignment and assignment.version != latest.version + 1:
            raise ShardingError(
                f"cannot publish version {assignment.version} of shard map {self.name!r}: "
                f"the newest is {latest.version}"
            )
        self._check_known(assignment)
        for name in moved_targets(base, assignment):
            async with self._awrite_connection(name) as conn:
                updated = await conn.execute(
                    fence_table.update()
                    .where(fence_table.c.map_name == self.name)
                    .where(fence_table.c.version < assignment.version)
                    .values(version=assignment.version)
                )
                if updated.rowcount == 0:
                    present = (
                        await conn.execute(
                            sa.select(fence_table.c.version).where(
                                fence_table.c.map_name == self.name
                            )
                        )
                    ).first()
                    if present is None:
                        await conn.execute(
                            fence_table.insert().values(
                                map_name=self.name, version=assignment.version
                            )
                        )
        await catalog.apublish(assignment)
        self._install(assignment)
