"""The asyncio shell of shard-aware IDs: the ID function's installer, worker leases, the generator.

The rule lives in :mod:`scalekit.sharding._ids` (layout, :class:`IdIssuer`,
the SQL of the function); this file does the I/O around it.
:class:`AsyncWorkerLease` keeps one row per worker id in a table (PostgreSQL,
or SQLite for tests and examples): a holder token, an expiry on the
database's clock, and the floor/ceiling milliseconds that keep successive
holders of one worker id apart in time. :class:`AsyncIdGenerator` leases a
worker id, renews it as it issues, and stops when it is lost.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from scalekit._clock import SYSTEM_CLOCK
from scalekit._unasync import IS_ASYNC
from scalekit.errors import ConfigurationError, WorkerLeaseError
from scalekit.sharding._ids import (
    DEFAULT_ID_LAYOUT,
    GENERATOR_ID_LAYOUT,
    IdIssuer,
    IdLayout,
    IdWait,
    LeaseGrant,
    LeaseSettings,
    id_function_sql,
)

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from scalekit.typing import Clock

__all__ = [
    "AsyncIdGenerator",
    "AsyncRedisWorkerLease",
    "AsyncWorkerLease",
    "ainstall_id_function",
]

__unasync__ = {
    "ainstall_id_function": "install_id_function",
    "aacquire": "acquire",
    "arenew": "renew",
    "arelease": "release",
    "acreate_table": "create_table",
    "anext_id": "next_id",
    "astart": "start",
    "_arenew_for": "_renew_for",
    "The asyncio shell": "The sync shell",
}


async def ainstall_id_function(
    target: AsyncEngine | AsyncConnection,
    *,
    shard: int,
    layout: IdLayout = DEFAULT_ID_LAYOUT,
    worker: int = 0,
    function: str = "scalekit_next_id",
    sequence: str | None = None,
    schema: str | None = None,
) -> None:
    """Install (or replace) the ID function on one shard database (PostgreSQL).

    Run it once per shard database, each with the logical shard its IDs
    carry; then use the function as a column default::

        await ainstall_id_function(engine, shard=3)
        sa.Column("id", sa.BigInteger, primary_key=True,
                  server_default=sa.text("scalekit_next_id()"))

    With an engine the statements run in their own transaction; with a
    connection they run in its transaction and the caller commits. The
    sequence is kept when the function is replaced, so reinstalling never
    reissues an ID.

    Raises:
        ConfigurationError: a bad shard, worker or name (see
            :func:`~scalekit.sharding.id_function_sql`), or a database that is
            not PostgreSQL.
    """
    statements = id_function_sql(
        shard=shard,
        layout=layout,
        worker=worker,
        function=function,
        sequence=sequence,
        schema=schema,
    )
    if target.dialect.name != "postgresql":
        raise ConfigurationError(
            f"the ID function needs PostgreSQL, not {target.dialect.name}", parameter="target"
        )
    from sqlalchemy.ext.asyncio import AsyncEngine

    if isinstance(target, AsyncEngine):
        async with target.begin() as connection:
            for statement in statements:
                await connection.exec_driver_sql(statement)
        return
    for statement in statements:
        await target.exec_driver_sql(statement)


def _lease_table(name: str) -> sa.Table:
    import sqlalchemy as sa

    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("pool", sa.String(200), primary_key=True),
        sa.Column("worker", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("expires_ms", sa.BigInteger, nullable=False),
        sa.Column("floor_ms", sa.BigInteger, nullable=False),
        sa.Column("ceiling_ms", sa.BigInteger, nullable=False),
    )


def _server_ms(dialect: str) -> Any:
    """Milliseconds since the Unix epoch on the database's clock (one clock for all holders)."""
    import sqlalchemy as sa

    if dialect == "postgresql":
        epoch = sa.func.extract("epoch", sa.func.clock_timestamp())
        return sa.cast(sa.func.floor(epoch * 1000), sa.BigInteger)
    if dialect == "sqlite":
        return sa.cast((sa.func.julianday("now") - 2440587.5) * 86400000.0, sa.BigInteger)
    raise ConfigurationError(
        f"worker leases need PostgreSQL or SQLite, not {dialect}", parameter="engine"
    )


class AsyncWorkerLease(LeaseSettings):
    """Worker ids leased from a table, so that no two live generators share one.

    Each worker id of ``workers`` in ``pool`` is a row: a holder, an expiry
    on the database's clock (``ttl`` seconds after the last renewal), and the
    milliseconds its holders may use (see :class:`AsyncIdGenerator`). A lease
    that is not renewed expires and another process may take it; the holder,
    timing its lease from before each request, has stopped by then.
    Worker 0 is left out by default: it is the database function's.

    ::

        lease = AsyncWorkerLease(engine, pool="orders")
        await lease.acreate_table()
        async with AsyncIdGenerator(lease) as ids:
            order_id = await ids.anext_id(shard=7)

    Raises:
        ConfigurationError: an empty worker range, a negative worker id, or a
            ``ttl``/``renew_after`` that is not positive (``renew_after < ttl``).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        pool: str = "default",
        workers: Iterable[int] = range(1, 16),
        ttl: float = 30.0,
        renew_after: float | None = None,
        table: str = "scalekit_id_workers",
    ) -> None:
        super().__init__(pool=pool, workers=workers, ttl=ttl, renew_after=renew_after)
        self.engine = engine
        self.table = _lease_table(table)

    async def acreate_table(self) -> None:
        """Create the lease table if it does not exist."""
        async with self.engine.begin() as connection:
            if IS_ASYNC:
                await connection.run_sync(self.table.metadata.create_all)
            else:
                self.table.metadata.create_all(connection)

    async def aacquire(self, ceiling_ms: int) -> LeaseGrant:
        """Lease a free worker id, recording ``ceiling_ms`` as the highest millisecond it may use.

        Raises:
            WorkerLeaseError: every worker id of the pool is held.
        """
        import sqlalchemy as sa

        table, dialect = self.table, self.engine.dialect.name
        now = _server_ms(dialect)
        async with self.engine.begin() as connection:
            busy = set(
                (
                    await connection.execute(
                        sa.select(table.c.worker).where(
                            table.c.pool == self.pool, table.c.expires_ms >= now
                        )
                    )
                ).scalars()
            )
        free = [worker for worker in self.workers if worker not in busy]
        random.shuffle(free)  # holders starting together try different rows first
        for worker in free:
            insert = _dialect_insert(dialect)(table).values(
                pool=self.pool,
                worker=worker,
                holder=self.holder,
                expires_ms=now + self.ttl_ms,
                floor_ms=-1,
                ceiling_ms=ceiling_ms,
            )
            statement = insert.on_conflict_do_update(
                index_elements=[table.c.pool, table.c.worker],
                set_={
                    "holder": insert.excluded.holder,
                    "expires_ms": insert.excluded.expires_ms,
                    # The previous holders used no millisecond above their ceiling.
                    "floor_ms": table.c.ceiling_ms,
                    "ceiling_ms": _greatest(table.c.ceiling_ms, insert.excluded.ceiling_ms),
                },
                where=table.c.expires_ms < now,
            ).returning(table.c.floor_ms, table.c.ceiling_ms)
            async with self.engine.begin() as connection:
                row = (await connection.execute(statement)).first()
            if row is not None:
                return LeaseGrant(worker=worker, floor_ms=row[0], ceiling_ms=row[1])
        raise WorkerLeaseError(
            f"no free worker id in pool {self.pool!r} ({len(self.workers)} ids, all held)"
        )

    async def arenew(self, worker: int, ceiling_ms: int) -> LeaseGrant:
        """Extend the lease on ``worker`` and raise its ceiling to ``ceiling_ms``.

        Raises:
            WorkerLeaseError: the lease was taken by another holder.
        """
        table = self.table
        now = _server_ms(self.engine.dialect.name)
        statement = (
            table.update()
            .where(
                table.c.pool == self.pool,
                table.c.worker == worker,
                table.c.holder == self.holder,
            )
            .values(
                expires_ms=now + self.ttl_ms,
                ceiling_ms=_greatest(table.c.ceiling_ms, ceiling_ms),
            )
            .returning(table.c.floor_ms, table.c.ceiling_ms)
        )
        async with self.engine.begin() as connection:
            row = (await connection.execute(statement)).first()
        if row is None:
            raise WorkerLeaseError(
                f"the lease on worker {worker} of pool {self.pool!r} was lost", worker=worker
            )
        return LeaseGrant(worker=worker, floor_ms=row[0], ceiling_ms=row[1])

    async def arelease(self, worker: int, last_ms: int) -> None:
        """Give ``worker`` back now; ``last_ms`` (the last millisecond used) becomes its ceiling."""
        table = self.table
        statement = (
            table.update()
            .where(
                table.c.pool == self.pool,
                table.c.worker == worker,
                table.c.holder == self.holder,
            )
            .values(expires_ms=0, ceiling_ms=last_ms)
        )
        async with self.engine.begin() as connection:
            await connection.execute(statement)


# The lease key holds the holder and expires; the ceiling key outlives it, so
# the next holder knows which milliseconds the previous ones may have used.
# KEYS: lease, ceiling. Lua numbers are doubles: exact for milliseconds (< 2**53).
_REDIS_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    local old = tonumber(redis.call('GET', KEYS[2]) or '-1')
    local new = math.max(old, tonumber(ARGV[3]))
    redis.call('SET', KEYS[2], string.format('%d', new))
    return {old, new}
end
return false
"""
_REDIS_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    local old = tonumber(redis.call('GET', KEYS[2]) or '-1')
    local new = math.max(old, tonumber(ARGV[3]))
    redis.call('SET', KEYS[2], string.format('%d', new))
    return {old, new}
end
return false
"""
_REDIS_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    redis.call('SET', KEYS[2], ARGV[2])
end
return 1
"""


class AsyncRedisWorkerLease(LeaseSettings):
    """Worker ids leased in Redis: ``SET key holder NX PX ttl``, renewed with ``PEXPIRE``.

    The same contract as :class:`AsyncWorkerLease` over a ``redis.asyncio``
    client (standalone, Sentinel or ``RedisCluster``: a worker id's two keys
    share a hash tag). The lease key expires on Redis's clock; a second key
    per worker id, without expiry, keeps the ceiling (the highest millisecond
    its holders may have used) for the next holder. A lease that expired is
    lost even if nobody took it: the holder cannot tell, so it stops.

    Raises:
        ConfigurationError: as :class:`AsyncWorkerLease`.
    """

    def __init__(
        self,
        client: Any,
        *,
        pool: str = "default",
        workers: Iterable[int] = range(1, 16),
        ttl: float = 30.0,
        renew_after: float | None = None,
        prefix: str = "scalekit:ids",
    ) -> None:
        super().__init__(pool=pool, workers=workers, ttl=ttl, renew_after=renew_after)
        self.client = client
        self.prefix = prefix

    def _keys(self, worker: int) -> tuple[str, str]:
        tag = f"{{{self.prefix}:{self.pool}:{worker}}}"
        return f"{tag}:lease", f"{tag}:ceiling"

    async def aacquire(self, ceiling_ms: int) -> LeaseGrant:
        """Lease a free worker id (see :meth:`AsyncWorkerLease.aacquire`).

        Raises:
            WorkerLeaseError: every worker id of the pool is held.
        """
        workers = list(self.workers)
        random.shuffle(workers)
        for worker in workers:
            reply = await self.client.eval(
                _REDIS_ACQUIRE, 2, *self._keys(worker), self.holder, self.ttl_ms, ceiling_ms
            )
            if reply:
                return LeaseGrant(worker=worker, floor_ms=int(reply[0]), ceiling_ms=int(reply[1]))
        raise WorkerLeaseError(
            f"no free worker id in pool {self.pool!r} ({len(self.workers)} ids, all held)"
        )

    async def arenew(self, worker: int, ceiling_ms: int) -> LeaseGrant:
        """Extend the lease on ``worker`` and raise its ceiling to ``ceiling_ms``.

        Raises:
            WorkerLeaseError: the lease expired or was taken by another holder.
        """
        reply = await self.client.eval(
            _REDIS_RENEW, 2, *self._keys(worker), self.holder, self.ttl_ms, ceiling_ms
        )
        if not reply:
            raise WorkerLeaseError(
                f"the lease on worker {worker} of pool {self.pool!r} was lost", worker=worker
            )
        return LeaseGrant(worker=worker, floor_ms=int(reply[0]), ceiling_ms=int(reply[1]))

    async def arelease(self, worker: int, last_ms: int) -> None:
        """Give ``worker`` back now; ``last_ms`` (the last millisecond used) becomes its ceiling."""
        await self.client.eval(_REDIS_RELEASE, 2, *self._keys(worker), self.holder, last_ms)


def _dialect_insert(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert
    from sqlalchemy.dialects import sqlite

    return sqlite.insert


def _greatest(column: Any, value: Any) -> Any:
    import sqlalchemy as sa

    return sa.case((column > value, column), else_=value)


class AsyncIdGenerator:
    """Shard-aware 64-bit IDs issued in this process, under a leased worker id.

    ``await ids.anext_id(shard)`` returns an ID carrying the logical shard
    (read back by :func:`~scalekit.sharding.shard_of_id`), the time, the
    worker id and a sequence; IDs increase over time. It is unique across
    processes because each live generator holds its own worker id, and over
    time because a worker id's holders use disjoint milliseconds (see
    :class:`~scalekit.sharding.IdIssuer`). When the wall clock steps back,
    the generator waits up to ``max_backwards_seconds`` for it to catch up,
    else raises :class:`~scalekit.errors.ClockMovedBackwards`; it never
    issues a duplicate. The lease is renewed as IDs are issued; when it is
    lost, the generator raises :class:`~scalekit.errors.WorkerLeaseError`
    until :meth:`astart` leases a new worker id.

    Raises:
        ConfigurationError: a layout with no worker bits, a worker range that
            does not fit the layout, or a negative bound.
    """

    def __init__(
        self,
        lease: AsyncWorkerLease | AsyncRedisWorkerLease,
        *,
        layout: IdLayout = GENERATOR_ID_LAYOUT,
        max_backwards_seconds: float = 0.2,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if max(lease.workers) >= layout.worker_count:
            raise ConfigurationError(
                f"worker id {max(lease.workers)} does not fit {layout.worker_bits} worker bits",
                parameter="lease",
            )
        if not max_backwards_seconds >= 0:
            raise ConfigurationError(
                f"max_backwards_seconds must be >= 0, got {max_backwards_seconds!r}",
                parameter="max_backwards_seconds",
            )
        self.lease = lease
        self.layout = layout
        self._clock = clock
        self._issuer = IdIssuer(layout, max_backwards_ms=int(max_backwards_seconds * 1000))
        self._lock = threading.Lock()
        self._renew_lock = asyncio.Lock()

    @property
    def worker(self) -> int | None:
        """The leased worker id, or ``None`` when none is held."""
        return self._issuer.worker if self._issuer.has_lease else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lease={self.lease!r}, worker={self.worker})"

    def _now_ms(self) -> int:
        return int(self._clock.time() * 1000)

    async def astart(self) -> None:
        """Lease a worker id (a no-op when one is held).

        Raises:
            WorkerLeaseError: every worker id is held.
        """
        async with self._renew_lock:
            if self._issuer.has_lease:
                return
            asked_at = self._clock.monotonic()
            grant = await self.lease.aacquire(
                self._issuer.ceiling_for(self._now_ms(), self.lease.ttl_ms)
            )
            with self._lock:
                self._issuer.granted(
                    grant, asked_at=asked_at, ttl=self.lease.ttl, renew_after=self.lease.renew_after
                )

    async def aclose(self) -> None:
        """Release the worker id, so another process may take it at once."""
        async with self._renew_lock:
            if not self._issuer.has_lease:
                return
            with self._lock:
                worker, last_ms = self._issuer.worker, self._issuer.last_ms
                self._issuer.lost()
            await self.lease.arelease(worker, max(last_ms, 0))

    async def __aenter__(self) -> AsyncIdGenerator:
        await self.astart()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def anext_id(self, shard: int) -> int:
        """The next ID for logical ``shard``.

        Raises:
            ClockMovedBackwards: the clock is behind the last ID's time by more
                than ``max_backwards_seconds``.
            WorkerLeaseError: no lease is held, or it was lost.
            ConfigurationError: ``shard`` does not fit the layout.
        """
        issuer, clock = self._issuer, self._clock
        while True:
            with self._lock:  # the issuer's state changes only under this lock
                decision = issuer.step(shard, int(clock.time() * 1000), clock.monotonic())
            if type(decision) is int:
                return decision
            if isinstance(decision, IdWait):
                await clock.asleep(decision.seconds)
            else:
                await self._arenew_for()

    async def _arenew_for(self) -> None:
        async with self._renew_lock:
            issuer = self._issuer
            if not issuer.has_lease:
                raise WorkerLeaseError("no worker lease is held; call start() first")
            asked_at = self._clock.monotonic()
            now_ms = self._now_ms()
            if not issuer.needs_renewal(now_ms, asked_at):
                return  # another caller renewed it meanwhile
            worker = issuer.worker
            try:
                grant = await self.lease.arenew(
                    worker, issuer.ceiling_for(now_ms, self.lease.ttl_ms)
                )
            except WorkerLeaseError:
                with self._lock:
                    issuer.lost()
                raise
            except Exception as exc:
                if issuer.expired(asked_at):
                    with self._lock:
                        issuer.lost()
                    raise WorkerLeaseError(
                        f"could not renew the lease on worker {worker}: {exc!r}", worker=worker
                    ) from exc
                # The lease still holds: keep issuing within it, retry the renewal soon.
                with self._lock:
                    issuer.defer_renewal(asked_at + min(1.0, self.lease.renew_after))
                if now_ms > issuer.ceiling_ms:
                    raise WorkerLeaseError(
                        f"could not raise the ceiling of worker {worker}: {exc!r}", worker=worker
                    ) from exc
                return
            with self._lock:
                issuer.granted(
                    grant, asked_at=asked_at, ttl=self.lease.ttl, renew_after=self.lease.renew_after
                )
