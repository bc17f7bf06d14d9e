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
import functools
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
    REDIS_PUBLISH,
    TARGET_FENCE,
    catalog_metadata,
    catalog_table,
    check_map_name,
    check_publish,
    decode_assignment,
    decode_redis_catalog,
    encode_assignment,
    fence_metadata,
    fence_table,
    fence_upserts,
    moved_shards,
    moves_table,
    redis_catalog_key,
)
from scalekit.sharding._core import (
    Distribution,
    aggregate_plan,
    merge_aggregates,
    merge_ordered,
)
from scalekit.sharding._hash import KeyType, ShardKey, _infer_key_type, logical_shard, shard_sql
from scalekit.sharding._ids import DEFAULT_ID_LAYOUT, IdLayout
from scalekit.sharding._map import ShardAssignment
from scalekit.sharding._orm import IdRouting, ShardSession

if TYPE_CHECKING:
    from sqlalchemy.engine import FrozenResult
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from scalekit.pagination._cursor import CursorCodec
    from scalekit.pagination._keyset import Page

__all__ = ["AsyncRedisShardCatalog", "AsyncShardCatalog", "AsyncShardMap"]

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
    "_aprimary_connection": "_primary_connection",
    "amove_shard": "move_shard",
    "_amove_step": "_move_step",
    "_acopy_shard": "_copy_shard",
    "_acopy_table": "_copy_table",
    "_adigests": "_digests",
    "_acatch_up": "_catch_up",
    "_adelete_source": "_delete_source",
    "_aswitch": "_switch",
    "_aboth": "_both",
    "_acopy_keys": "_copy_keys",
    "_acatch_up_since": "_catch_up_since",
    "_akeys_checksum": "_keys_checksum",
    "_asnapshot_filter": "_snapshot_filter",
    "_asum": "_sum",
    "_adelete_keys": "_delete_keys",
    "_achecksum": "_checksum",
    "The asyncio shard map and catalog": "The sync shard map and catalog",
    "This file holds only what talks to the databases, and the sync\n"
    "shell is generated from it by ``scripts/unasync.py``. Fan-outs run one task\n"
    "per target.": (
        "This file is generated from the asyncio shell by ``scripts/unasync.py``.\n"
        "Fan-outs run one thread per target."
    ),
}

_T = TypeVar("_T")
_U = TypeVar("_U")
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
        if not check_publish(self.name, await self.aload(), assignment):
            return
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


class AsyncRedisShardCatalog:
    """The shared, versioned shard map kept in Redis instead of a table.

    One hash per map (``scalekit:shard-catalog:{name}``, a single key, so it
    works on Redis Cluster) holds the newest version, its target names and
    its owners; :meth:`apublish` stores the next version with a
    compare-and-set script. ``client`` is a ``redis.asyncio`` client
    (standalone, Sentinel or cluster, with or without ``decode_responses``).
    The fences stay in the target databases; :meth:`AsyncShardMap.amove_shard`
    records its steps in a table and needs an :class:`AsyncShardCatalog`.

    >>> catalog = AsyncRedisShardCatalog(redis_client)  # doctest: +SKIP
    >>> await catalog.apublish(assign_balanced(["db0", "db1"]))  # doctest: +SKIP
    >>> shards = await AsyncShardMap.afrom_catalog(catalog, targets)  # doctest: +SKIP

    Raises:
        ConfigurationError: a bad ``name``.
    """

    def __init__(self, client: Any, *, name: str = "default") -> None:
        self.client = client
        self.name = check_map_name(name)
        self.key = redis_catalog_key(self.name)

    async def ainstall(self) -> None:
        """Nothing to create in Redis (here so that both catalogs are used alike)."""

    async def aload(self) -> ShardAssignment | None:
        """The newest published assignment of this map, or None when none was published.

        Raises:
            ConfigurationError: the stored hash is corrupt.
        """
        return decode_redis_catalog(self.name, await self.client.hgetall(self.key))

    async def apublish(self, assignment: ShardAssignment) -> None:
        """Store ``assignment`` as the newest version (it must be the newest plus one, or 1).

        Publishing the same assignment again is a no-op. To move shards use
        :meth:`AsyncShardMap.apublish`, which raises the targets' fences first.

        Raises:
            ShardingError: another instance published that version first, or
                the version does not follow the newest.
            ConfigurationError: the logical shard count differs from the stored map's.
        """
        if not check_publish(self.name, await self.aload(), assignment):
            return
        row = encode_assignment(self.name, assignment)
        code, current = await self.client.eval(
            REDIS_PUBLISH, 1, self.key, assignment.version, row["targets"], row["owners"]
        )
        if int(code) < 0:
            raise ShardingError(
                f"cannot publish version {assignment.version} of shard map {self.name!r}: "
                f"version {int(current)} was published by another instance meanwhile; "
                "reload and plan again"
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} at {self.key!r}>"


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
        catalog: AsyncShardCatalog | AsyncRedisShardCatalog | None = None,
    ) -> None:
        if catalog is not None and not isinstance(
            catalog, AsyncShardCatalog | AsyncRedisShardCatalog
        ):
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
        catalog: AsyncShardCatalog | AsyncRedisShardCatalog,
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
        logical = self.shard_for(key)
        name = self._owner_names[logical]
        value = self._targets[name]
        session: AsyncSession
        if isinstance(value, AsyncRoutingPool):
            session = value.sessionmaker(**session_options)()
        else:
            session = AsyncSession(bind=value, **session_options)
        if IS_ASYNC:
            self._watch_writes(session.sync_session, name, logical)
        else:
            self._watch_writes(session, name, logical)
        return session

    def sessionmaker(
        self,
        *,
        id_columns: Sequence[Any] = (),
        id_layout: IdLayout = DEFAULT_ID_LAYOUT,
        **kwargs: Any,
    ) -> async_sessionmaker[Any]:
        """A session factory whose sessions route each statement by its shard key or ID.

        See :class:`~scalekit.sharding.ShardSession`: the key is the
        ``shard_key`` execution option, else (with ``id_columns``) the logical
        shard encoded in a shard-aware ID the statement names, else the
        session's ``shard_key=``; a statement with none raises
        :class:`~scalekit.errors.ShardingError`. ``id_columns`` lists the
        columns holding IDs issued for this map's logical shards
        (``[Order.id, Item.order_id]``), in ``id_layout``::

            Session = shards.sessionmaker(id_columns=[Order.id])
            async with Session() as session:
                order = await session.get(Order, order_id)  # on shard_of_id(order_id)'s target

        Keyword arguments go to the session factory (not ``bind``).

        Raises:
            ConfigurationError: ``id_columns`` holds something that is not a
                column, or ``id_layout`` is not an ``IdLayout``.
        """
        if id_columns:
            kwargs["shard_ids"] = IdRouting(id_columns, id_layout)
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
    async def _aprimary_connection(self, name: str) -> AsyncIterator[AsyncConnection]:
        # An engine's connection, or a routing pool's connection to its primary.
        async with self._targets[name].connect() as conn:
            yield conn

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
    def catalog(self) -> AsyncShardCatalog | AsyncRedisShardCatalog | None:
        """The catalog this map reloads from, or None for a fixed map."""
        return self._catalog

    def _need_catalog(self) -> AsyncShardCatalog | AsyncRedisShardCatalog:
        if self._catalog is None:
            raise ConfigurationError(
                "this shard map has no catalog; build it with afrom_catalog()",
                parameter="catalog",
            )
        return self._catalog

    def _sql_catalog(self) -> AsyncShardCatalog:
        catalog = self._need_catalog()
        if not isinstance(catalog, AsyncShardCatalog):
            raise ConfigurationError(
                "moving shards records its steps in a table: build the map from a "
                "ShardCatalog (a Redis catalog publishes maps, it does not move shards)",
                parameter="catalog",
            )
        return catalog

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
                        sa.select(fence_table.c.version).where(
                            fence_table.c.map_name == self.name,
                            fence_table.c.logical == TARGET_FENCE,
                        )
                    )
                ).first()
                if exists is None:
                    await conn.execute(
                        fence_table.insert().values(
                            map_name=self.name,
                            logical=TARGET_FENCE,
                            version=self._assignment.version,
                        )
                    )

    async def apublish(self, assignment: ShardAssignment) -> None:
        """Publish ``assignment`` (the newest version plus one) and use it here.

        The fences of the moved logical shards, on the targets they leave or
        reach, are raised to the new version first, then the catalog row is
        written, so a stale instance's write to a moved shard is refused from
        that moment (its writes to other shards go on); a publisher that
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
        version = assignment.version
        for name, logicals in moved_shards(base, assignment).items():
            mine = fence_table.c.map_name == self.name
            async with self._awrite_connection(name) as conn:
                # The target row first: its row lock orders this publish after the
                # fenced commits in flight there, and commits after it wait for it.
                await conn.execute(
                    fence_table.update()
                    .where(mine, fence_table.c.logical == TARGET_FENCE)
                    .where(fence_table.c.version < version)
                    .values(version=version)
                )
                present = await conn.execute(
                    sa.select(fence_table.c.logical, fence_table.c.version).where(
                        mine, fence_table.c.logical.in_([TARGET_FENCE, *logicals])
                    )
                )
                update, insert = fence_upserts(
                    {row.logical: row.version for row in present}, self.name, logicals, version
                )
                if update:
                    await conn.execute(
                        fence_table.update()
                        .where(mine, fence_table.c.logical.in_(update))
                        .values(version=version)
                    )
                if insert:
                    await conn.execute(fence_table.insert(), insert)
        await catalog.apublish(assignment)
        self._install(assignment)

    # -- moving a logical shard ----------------------------------------------------------------

    async def amove_shard(
        self,
        logical: int,
        to: str,
        *,
        tables: Sequence[Any],
        cleanup: bool = True,
        _after_step: Callable[[str], None] | None = None,
    ) -> None:
        """Move logical shard ``logical``'s rows of ``tables`` to target ``to``; resumable.

        ``tables`` lists each table's shard-key column (``Order.user_id``);
        every table needs a primary key. PostgreSQL (11 or later) only, on a map with a
        catalog. The steps, each recorded in the catalog's
        ``scalekit_shard_moves`` table so that a rerun after a crash resumes:

        1. **copy**: in one transaction on ``to``, COPY (binary) the source's
           rows in, streamed as they come, from one ``REPEATABLE READ``
           snapshot of the source (rows of the shard already on ``to``,
           written there by mistake or by an interrupted copy, are deleted
           first); meanwhile a second source connection counts and checksums
           that snapshot's rows, and the copied rows are counted and
           checksummed on ``to``: both must agree. Writes go on.
        2. **switch**: take the shard's advisory lock on both databases (a
           commit writing to this logical shard waits, others go on), bring
           ``to`` up to date with the rows changed on the source since the
           copy's snapshot (found by their transaction ids, not by comparing
           every row) and verify those rows on both sides (count and
           checksum), publish the new map version (fences raised: a stale
           instance's write is refused), release the lock. A rerun whose copy
           was made by an earlier (killed) mover compares every row instead.
        3. **clean**: delete the shard's rows from the source (no longer
           authoritative since the publish), then the move's row. With
           ``cleanup=False`` the move stops before this step; a later call
           with the same arguments (and ``cleanup=True``) does it.

        Until the switch the source is authoritative, after it the target;
        killed at any step, a rerun with the same arguments finishes the job.

        Raises:
            ConfigurationError: no catalog (or a Redis one), not PostgreSQL, a
                table without a primary key, or an unknown ``logical``.
            UnknownShard: ``to`` is not a target.
            ShardingError: another move of this shard (to another target) is
                in progress, or verification failed (nothing was switched).
        """
        catalog = self._sql_catalog()
        self.target(to)
        if self._dialect().name != "postgresql":
            raise ConfigurationError("move_shard runs on PostgreSQL only", parameter="targets")
        self._assignment.owner_of(logical)
        columns = [getattr(column, "expression", column) for column in tables]
        for column in columns:
            if not column.table.primary_key.columns:
                raise ConfigurationError(
                    f"table {column.table.name!r} has no primary key; moves compare rows by it",
                    parameter="tables",
                )
        await self.arefresh()
        async with catalog.engine.connect() as conn:
            state = (
                await conn.execute(
                    sa.select(moves_table).where(
                        moves_table.c.map_name == self.name, moves_table.c.logical == logical
                    )
                )
            ).first()
        if state is None:
            source = self._assignment.owners[logical]
            if source == to:
                return
            step = "started"
            async with catalog.engine.begin() as conn:
                await conn.execute(
                    moves_table.insert().values(
                        map_name=self.name, logical=logical, source=source, target=to, step=step
                    )
                )
        else:
            source, step = state.source, state.step
            if state.target != to:
                raise ShardingError(
                    f"logical shard {logical} is being moved to {state.target!r}, not {to!r}; "
                    "rerun with that target to finish it"
                )
        async with contextlib.AsyncExitStack() as stack:
            # The source's snapshot of this run's copy, kept open until the switch.
            snapshot: _CopySnapshot | None = None
            if step == "started":
                snapshot = await self._acopy_shard(logical, source, to, columns, stack)
                step = await self._amove_step(logical, "copied", _after_step)
            if step == "copied":
                if self._assignment.owners[logical] == source:
                    await self._aswitch(logical, source, to, columns, snapshot, _after_step)
                step = await self._amove_step(logical, "switched", _after_step)
        if step == "switched" and cleanup:
            await self._adelete_source(logical, source, columns)
            async with catalog.engine.begin() as conn:
                await conn.execute(
                    moves_table.delete().where(
                        moves_table.c.map_name == self.name, moves_table.c.logical == logical
                    )
                )
            if _after_step is not None:
                _after_step("cleaned")

    async def _aswitch(
        self,
        logical: int,
        source: str,
        to: str,
        columns: list[Any],
        snapshot: _CopySnapshot | None,
        after_step: Callable[[str], None] | None,
    ) -> None:
        """Under the shard's advisory lock on both sides: catch up, verify, publish."""
        lock = sa.select(sa.func.pg_advisory_lock(self.lock_class, logical))
        unlock = sa.select(sa.func.pg_advisory_unlock(self.lock_class, logical))
        async with (
            self._aprimary_connection(source) as source_lock,
            self._aprimary_connection(to) as target_lock,
        ):
            await source_lock.execute(lock)
            await target_lock.execute(lock)
            await source_lock.commit()
            await target_lock.commit()
            try:
                for column in columns:
                    if snapshot is None:
                        await self._acatch_up(logical, source, to, column)
                    else:
                        await self._acatch_up_since(snapshot, logical, source, to, column)
                if after_step is not None:
                    after_step("verified")
                await self.apublish(self._assignment.with_owners({logical: to}))
                if after_step is not None:
                    after_step("published")
            finally:
                await source_lock.execute(unlock)
                await target_lock.execute(unlock)
                await source_lock.commit()
                await target_lock.commit()

    async def _amove_step(
        self, logical: int, step: str, after_step: Callable[[str], None] | None
    ) -> str:
        async with self._sql_catalog().engine.begin() as conn:
            await conn.execute(
                moves_table.update()
                .where(moves_table.c.map_name == self.name, moves_table.c.logical == logical)
                .values(step=step)
            )
        if after_step is not None:
            after_step(step)
        return step

    def _shard_filter(self, column: Any, logical: int) -> Any:
        return shard_sql(column, self._count) == logical

    async def _aboth(
        self, first: Callable[[], Awaitable[_T]], second: Callable[[], Awaitable[_U]]
    ) -> tuple[_T, _U]:
        """Run ``first()`` and ``second()`` at once (a task each, or a thread for ``first``)."""
        if IS_ASYNC:
            outcomes = await asyncio.gather(first(), second(), return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            return cast("_T", outcomes[0]), cast("_U", outcomes[1])
        else:
            future = self._executor().submit(contextvars.copy_context().run, first)
            try:
                other = await second()
            finally:
                concurrent.futures.wait([future])
            return future.result(), other

    async def _acopy_shard(
        self,
        logical: int,
        source: str,
        to: str,
        columns: list[Any],
        stack: contextlib.AsyncExitStack,
    ) -> _CopySnapshot:
        """COPY the shard's rows of each table from ``source`` into ``to``, in one transaction.

        The rows come from one ``REPEATABLE READ`` snapshot of the source,
        whose transaction stays open on ``stack`` (the catch-up reads what
        changed since). Rows of the shard already on ``to`` (written there
        by mistake) are deleted first: a scan of ``to``'s table computing
        the shard hash of its rows, that deletes nothing in the usual case.
        Once a table is copied, the source's rows (in the snapshot) and the
        copied rows (those this transaction wrote) are counted and
        checksummed at once, one pass on each side; they must agree.

        Raises:
            ShardingError: the copy differs from the source's snapshot.
        """
        source_conn = await stack.enter_async_context(self._aprimary_connection(source))
        await source_conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        horizon = (
            await source_conn.execute(
                sa.text("SELECT txid_snapshot_xmin(txid_current_snapshot()) % 4294967296")
            )
        ).scalar_one()
        snapshot = _CopySnapshot(source_conn, int(horizon))
        async with self._awrite_connection(to) as target_conn:
            for column in columns:
                table = column.table
                # Strays (see above): one scan, that deletes nothing in the usual case.
                await target_conn.execute(table.delete().where(self._shard_filter(column, logical)))
                where = await self._asnapshot_filter(source_conn, column, logical)
                await self._acopy_table(source_conn, target_conn, column, where)
                # The rows this transaction wrote are the copied ones (strays were deleted);
                # its id as a constant, not a function call per row.
                xid = (
                    await target_conn.execute(sa.text("SELECT txid_current() % 4294967296"))
                ).scalar_one()
                mine: Any = sa.literal_column("xmin").op("=")(
                    sa.literal_column(f"CAST('{int(xid)}' AS xid)")
                )
                expected, copied = await self._aboth(
                    functools.partial(_asum, source_conn, table, where),
                    functools.partial(_asum, target_conn, table, mine),
                )
                if copied != expected:
                    raise ShardingError(
                        f"verification of the copy of logical shard {logical} failed for "
                        f"{table.name!r}: {source!r} has {expected} (count, checksum), "
                        f"{to!r} got {copied}; nothing was switched"
                    )
        return snapshot

    async def _asnapshot_filter(self, conn: AsyncConnection, column: Any, logical: int) -> Any:
        """A filter selecting the shard's rows of ``column``'s table in ``conn``'s snapshot.

        The shard hash is computed per row (an MD5 for str keys, more than
        the rest of a COPY out; a multiplication for int keys). Where keys
        repeat (an order table's ``user_id``), the keys of the shard are
        found once with the hash computed per distinct key, and the copy and
        its checksum select ``key IN (those keys)``: the same rows in this
        snapshot, a hash look-up per row. Int and str keys
        only, at most ``_MAX_KEYS`` keys, and not when the planner's
        statistics say that most keys are distinct (then the distinct pass
        would cost more than it saves): otherwise the hash filter.
        """
        shard = self._shard_filter(column, logical)
        kind = _infer_key_type(column)
        if kind not in ("int", "str"):
            return shard
        table = column.table
        stats = sa.text(
            "SELECT s.n_distinct, c.reltuples FROM pg_stats s, pg_class c "
            "WHERE c.oid = to_regclass(:qualified) AND s.schemaname = "
            "(SELECT nspname FROM pg_namespace WHERE oid = c.relnamespace) "
            "AND s.tablename = c.relname AND s.attname = :column"
        )
        qualified = table.name if table.schema is None else f"{table.schema}.{table.name}"
        found = (await conn.execute(stats, {"qualified": qualified, "column": column.name})).first()
        if found is not None:
            distinct, rows = float(found[0]), float(found[1])
            share = -distinct if distinct < 0 else distinct / max(rows, 1.0)
            if share > 0.5:
                return shard
        # OFFSET 0 keeps the hash above the DISTINCT (once per key, not per row).
        distinct_keys = sa.select(column.label("k")).distinct().offset(0).subquery()
        key = distinct_keys.c.k
        statement = (
            sa.select(key)
            .where(shard_sql(key, self._count, key_type=kind) == logical)
            .limit(_MAX_KEYS + 1)
        )
        keys = [row[0] for row in await conn.execute(statement)]
        if len(keys) > _MAX_KEYS:
            return shard
        if not keys:
            return sa.false()
        values = sa.values(sa.column("k", column.type), name="scalekit_keys", literal_binds=True)
        return column.in_(sa.select(values.data([(value,) for value in keys]).c.k))

    async def _acopy_table(
        self, source_conn: AsyncConnection, target_conn: AsyncConnection, column: Any, where: Any
    ) -> None:
        """Stream one table's rows (``where``) from ``source_conn`` into ``target_conn``."""
        from sqlalchemy.dialects import postgresql

        # The named paramstyle: "%" stays one "%" (COPY takes no parameters).
        dialect = postgresql.dialect(paramstyle="named")  # type: ignore[no-untyped-call]
        quote = dialect.identifier_preparer.quote
        table = column.table
        names = ", ".join(quote(c.name) for c in table.columns)
        select = sa.select(*table.columns).where(where)
        query = select.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
        if IS_ASYNC:
            source_raw = (await source_conn.get_raw_connection()).driver_connection
            target_raw = (await target_conn.get_raw_connection()).driver_connection
        else:
            source_raw = source_conn.connection.driver_connection
            target_raw = target_conn.connection.driver_connection
        assert source_raw is not None and target_raw is not None
        copy_out_sql = f"COPY ({query}) TO STDOUT (FORMAT BINARY)"
        copy_in_sql = f"COPY {quote(table.name)} ({names}) FROM STDIN (FORMAT BINARY)"
        async with (
            source_raw.cursor() as out_cursor,
            target_raw.cursor() as in_cursor,
            out_cursor.copy(copy_out_sql) as copy_out,
            in_cursor.copy(copy_in_sql) as copy_in,
        ):
            # The source sends a CopyData message per row. The rows libpq already
            # holds are taken without a wait (read() waits for the next one), and
            # go in by chunks: a fifth of the client CPU of a read() and a write()
            # per row. Binary COPY ends with a two-byte trailer, then read() ends it.
            take = source_raw.pgconn.get_copy_data
            chunk = bytearray()
            while True:
                size, data = take(1)
                if size == 0:
                    data = await copy_out.read()
                    if not data:
                        break
                elif size < 0:
                    raise ShardingError(f"the COPY of {table.name!r} ended without its trailer")
                chunk += data
                if len(data) == 2 and data == _COPY_TRAILER:
                    if await copy_out.read():
                        raise ShardingError(f"the COPY of {table.name!r} went on after its trailer")
                    break
                if len(chunk) >= _COPY_CHUNK:
                    await copy_in.write(chunk)
                    chunk = bytearray()
            if chunk:
                await copy_in.write(chunk)

    async def _adigests(self, name: str, column: Any, logical: int) -> dict[tuple[Any, ...], str]:
        table = column.table
        keys = list(table.primary_key.columns)
        statement = (
            sa.select(*keys, sa.func.md5(_row_text(table)))
            .select_from(table)
            .where(self._shard_filter(column, logical))
        )
        async with self._aprimary_connection(name) as conn:
            result = await conn.execute(statement)
            return {tuple(row[: len(keys)]): row[-1] for row in result}

    async def _achecksum(self, name: str, column: Any, logical: int) -> tuple[int, int]:
        """Rows of the shard in ``column``'s table on ``name``, and the sum of their row hashes.

        The row hash is ``hashtextextended`` of the text of the row of the
        table's columns (PostgreSQL 11+), a 64-bit hash the server computes
        about three times faster than an MD5 of the same text; both sides of
        a move compute it the same way.
        """
        async with self._aprimary_connection(name) as conn:
            return await _asum(conn, column.table, self._shard_filter(column, logical))

    async def _acatch_up(self, logical: int, source: str, to: str, column: Any) -> None:
        """Make ``to``'s rows of the shard those of ``source`` by comparing every row."""
        expected, current = await self._arun_all(
            [source, to],
            functools.partial(self._achecksum, column=column, logical=logical),
            None,
        )
        if current == expected:
            return  # nothing changed since the copy
        table = column.table
        on_source = await self._adigests(source, column, logical)
        on_target = await self._adigests(to, column, logical)
        stale = [key for key, digest in on_target.items() if on_source.get(key) != digest]
        missing = [key for key, digest in on_source.items() if on_target.get(key) != digest]
        async with self._awrite_connection(to) as conn:
            await _adelete_keys(conn, table, stale)
            if missing:
                async with self._aprimary_connection(source) as source_conn:
                    await self._acopy_keys(source_conn, conn, column, logical, missing)
        if await self._achecksum(to, column, logical) != expected:
            raise ShardingError(
                f"verification of logical shard {logical} failed for {table.name!r}: "
                f"{source!r} and {to!r} differ (count, checksum) after the catch-up; "
                "nothing was switched"
            )

    async def _acopy_keys(
        self,
        source_conn: AsyncConnection,
        target_conn: AsyncConnection,
        column: Any,
        logical: int,
        keys: list[tuple[Any, ...]],
    ) -> None:
        """Insert on the target the source's current rows of the shard with primary keys ``keys``.

        A row whose shard key was changed to another logical shard is not copied.
        """
        table = column.table
        columns = list(table.primary_key.columns)
        shard = self._shard_filter(column, logical)
        for start in range(0, len(keys), _BATCH):
            batch = keys[start : start + _BATCH]
            statement = sa.select(table).where(sa.tuple_(*columns).in_(batch), shard)
            rows = (await source_conn.execute(statement)).mappings()
            values = [dict(row) for row in rows]
            if values:
                await target_conn.execute(table.insert(), values)

    async def _acatch_up_since(
        self, snapshot: _CopySnapshot, logical: int, source: str, to: str, column: Any
    ) -> None:
        """Apply to ``to`` the source's changes since the copy's snapshot; verify those rows.

        A row changed since the snapshot is either visible in it with a
        deleting or updating transaction's id in ``xmax`` (read in the
        snapshot's own transaction, still open), or visible now with an
        ``xmin`` at or after the snapshot's oldest running transaction
        (``age`` compares transaction ids modulo wraparound). Both tests are
        cheap and come before the shard hash, so each is a plain scan of the
        table; a superset of the changed keys is harmless (their rows are
        replaced by the current ones). Those keys' rows are then counted and
        checksummed on both sides; the rest was verified by the copy.

        Raises:
            ShardingError: the changed rows differ after the catch-up.
        """
        table = column.table
        keys = list(table.primary_key.columns)
        shard = self._shard_filter(column, logical)
        xmax: Any = sa.literal_column("xmax")
        xmin: Any = sa.literal_column("xmin")
        zero: Any = sa.literal_column("CAST('0' AS xid)")
        horizon: Any = sa.literal_column(f"CAST('{snapshot.horizon}' AS xid)")
        gone = sa.case((xmax == zero, False), else_=shard)
        touched = sa.select(*keys).select_from(table).where(gone)
        newer = sa.func.age(xmin) <= sa.func.age(horizon)
        changed_now = (
            sa.select(*keys).select_from(table).where(sa.case((newer, shard), else_=False))
        )
        found: dict[tuple[Any, ...], None] = {
            tuple(row): None for row in await snapshot.conn.execute(touched)
        }
        async with self._aprimary_connection(source) as source_conn:
            for row in await source_conn.execute(changed_now):
                found[tuple(row)] = None
            if not found:
                return  # nothing changed since the copy
            changed = list(found)
            async with self._awrite_connection(to) as target_conn:
                await _adelete_keys(target_conn, table, changed)
                await self._acopy_keys(source_conn, target_conn, column, logical, changed)
            expected = await self._akeys_checksum(source_conn, column, logical, changed)
        async with self._aprimary_connection(to) as target_conn:
            got = await self._akeys_checksum(target_conn, column, logical, changed)
        if got != expected:
            raise ShardingError(
                f"verification of logical shard {logical} failed for {table.name!r}: "
                f"{source!r} and {to!r} differ (count, checksum) on the rows changed "
                "during the copy; nothing was switched"
            )

    async def _akeys_checksum(
        self, conn: AsyncConnection, column: Any, logical: int, keys: list[tuple[Any, ...]]
    ) -> tuple[int, int]:
        """Count and checksum of the shard's rows with primary keys ``keys`` on ``conn``."""
        table = column.table
        columns = list(table.primary_key.columns)
        shard = self._shard_filter(column, logical)
        count = checksum = 0
        for start in range(0, len(keys), _BATCH):
            batch = keys[start : start + _BATCH]
            rows, total = await _asum(conn, table, sa.and_(sa.tuple_(*columns).in_(batch), shard))
            count += rows
            checksum += total
        return count, checksum

    async def _adelete_source(self, logical: int, source: str, columns: list[Any]) -> None:
        """Delete the shard's rows from the source (no longer authoritative since the publish).

        No write to the shard commits there any more (the fences refuse
        them), so the shard's keys found first select the same rows as the
        shard hash when the delete runs.
        """
        async with self._awrite_connection(source) as conn:
            for column in columns:
                where = await self._asnapshot_filter(conn, column, logical)
                await conn.execute(column.table.delete().where(where))


_BATCH = 1000
"""Primary keys per statement when the catch-up reads, deletes or checks rows by key."""

_COPY_CHUNK = 1 << 17
"""Bytes of COPY data gathered before a write to the target."""

_COPY_TRAILER = b"\xff\xff"
"""The last CopyData message of a binary COPY (a field count of -1)."""

_MAX_KEYS = 100_000
"""At most this many shard keys per table are listed in a copy's filter."""


class _CopySnapshot:
    """The source's open ``REPEATABLE READ`` transaction of a copy, for the catch-up.

    ``horizon`` is its snapshot's oldest running transaction id (32 bits):
    every transaction the snapshot does not see is at or after it.
    """

    __slots__ = ("conn", "horizon")

    def __init__(self, conn: AsyncConnection, horizon: int) -> None:
        self.conn = conn
        self.horizon = horizon


async def _asum(conn: AsyncConnection, table: Any, where: Any) -> tuple[int, int]:
    """The count of ``table``'s rows matching ``where`` on ``conn``, and the sum of their hashes."""
    statement = (
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(_row_hash(table)), 0))
        .select_from(table)
        .where(where)
    )
    count, checksum = (await conn.execute(statement)).one()
    return int(count), int(checksum)


async def _adelete_keys(conn: AsyncConnection, table: Any, keys: list[tuple[Any, ...]]) -> None:
    """Delete ``table``'s rows with primary keys ``keys`` on ``conn``, ``_BATCH`` at a time."""
    columns = sa.tuple_(*table.primary_key.columns)
    for start in range(0, len(keys), _BATCH):
        await conn.execute(table.delete().where(columns.in_(keys[start : start + _BATCH])))


def _row_text(table: Any) -> Any:
    """The text of the row of ``table``'s columns, in the model's order (``ROW(...)::text``)."""
    return sa.cast(sa.func.row(*table.columns), sa.Text)


def _row_hash(table: Any) -> Any:
    """A 64-bit hash of :func:`_row_text` (``hashtextextended``, PostgreSQL 11+)."""
    return sa.func.hashtextextended(_row_text(table), 0, type_=sa.BigInteger)
