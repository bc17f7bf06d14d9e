"""scalekit in one page: an orders service on the embedded default, no servers.

SQLite stands in for PostgreSQL (one file is the primary, a second engine on
the same file plays a replica that is never behind) and fakeredis stands in
for Redis. The same code runs on a real primary with streaming replicas and a
real Redis by swapping the engines and the client.

    python -m pip install -e '.[examples]' && python examples/quickstart.py

Each module has its own, longer example beside this one.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import tempfile
from pathlib import Path

import fakeredis
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from scalekit.batch import Upsert, batch_insert
from scalekit.breaker import CircuitBreaker
from scalekit.cache import Cache
from scalekit.errors import CircuitOpenError, InvalidCursor, RateLimitExceeded
from scalekit.pagination import CursorCodec, paginate
from scalekit.ratelimit import Limit, RateLimiter
from scalekit.retry import Backoff, RetryPolicy
from scalekit.routing import RoutingPool
from scalekit.testing import FakeClock


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str]
    total_cents: Mapped[int]
    created_at: Mapped[dt.datetime]


def main() -> None:
    # scalekit reports events (state changes, fallbacks) through logging; the app configures it.
    logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="  log: %(message)s")
    # The database lives in a temporary folder, removed at the end, whatever happens.
    with tempfile.TemporaryDirectory(prefix="scalekit-quickstart-") as folder:
        url = f"sqlite:///{Path(folder) / 'orders.db'}"
        primary, replica = sa.create_engine(url), sa.create_engine(url)
        try:
            tour(primary, replica)
        finally:
            primary.dispose()
            replica.dispose()


def tour(primary: sa.Engine, replica: sa.Engine) -> None:
    """Each module in a few lines, on a primary and a replica engine."""
    Base.metadata.create_all(primary)
    redis = fakeredis.FakeRedis()

    # 1. Batch insert: 2,000 orders in bounded chunks; the method is chosen for the dialect.
    start = dt.datetime(2026, 1, 1)
    rows = (
        {
            "id": n,
            "customer": f"c{n % 7}",
            "total_cents": 100 + n,
            "created_at": start + dt.timedelta(minutes=n // 3),
        }
        for n in range(1, 2_001)
    )
    result = batch_insert(primary, Order, rows, on_conflict=Upsert(index=["id"], update="all"))
    print(f"batch_insert: {result.inserted} inserted with {result.method!r}")

    # 2. Routing: reads go to replicas, writes to the primary, your writes stay visible to you.
    pool = RoutingPool(primary=primary, replicas=[replica])
    Session = pool.sessionmaker()
    with Session() as session:
        session.add(Order(id=5_000, customer="c1", total_cents=999, created_at=start))
        session.commit()
        print(f"routing: the new order reads back as {session.get(Order, 5_000).total_cents}")  # type: ignore[union-attr]

    # 3. Keyset pagination with signed cursors: constant time at any depth.
    codec = CursorCodec(secret="use-a-32-byte-secret-from-config")
    newest_first = [Order.created_at.desc(), Order.id.desc()]
    with Session() as session:
        page = paginate(session, sa.select(Order), order_by=newest_first, limit=3, codec=codec)
        print(f"pagination: page 1 ids {[o.id for o in page.items]}, has_next={page.has_next}")
        page = paginate(
            session,
            sa.select(Order),
            order_by=newest_first,
            limit=3,
            after=page.next_cursor,
            codec=codec,
        )
        print(f"pagination: page 2 ids {[o.id for o in page.items]}")
        try:
            paginate(session, sa.select(Order), order_by=newest_first, after="forged", codec=codec)
        except InvalidCursor as exc:
            print(f"pagination: a forged cursor is refused ({exc.reason})")

    # 4. Cache-aside: the loader runs once; later reads are one Redis GET.
    cache = Cache(redis, namespace="quickstart", default_ttl=60)
    loads = []

    @cache.cached(ttl=30)
    def customer_total(customer: str) -> int:
        loads.append(customer)
        with Session() as session:
            query = sa.select(sa.func.sum(Order.total_cents)).where(Order.customer == customer)
            return int(session.scalar(query) or 0)

    totals = [customer_total("c3") for _ in range(5)]
    print(f"cache: total for c3 = {totals[0]}, loader ran {len(loads)} time(s) for 5 calls")

    # 5. Rate limiting (GCRA on Redis's clock, one round trip per check).
    limiter = RateLimiter(redis, namespace="quickstart")
    decisions = [limiter.hit("customer:c3", Limit.parse("3/minute")) for _ in range(4)]
    print(f"ratelimit: allowed {[d.allowed for d in decisions]}")
    try:
        decisions[-1].raise_for_denied()
    except RateLimitExceeded as exc:
        print(f"ratelimit: retry after {exc.retry_after:.0f}s; headers {decisions[-1].headers()}")

    # 6. A flaky dependency behind a retry policy and a circuit breaker (a fake clock: no waits).
    clock = FakeClock()
    breaker = CircuitBreaker("payments", fail_max=2, reset_timeout=30.0, clock=clock)
    calls = []

    @RetryPolicy(attempts=3, backoff=Backoff.constant(1.0), retry_on=ConnectionError, clock=clock)
    @breaker
    def charge(order_id: int) -> str:
        calls.append(order_id)
        if len(calls) < 2:
            raise ConnectionError("payment gateway reset the connection")
        return f"charged order {order_id}"

    print(f"retry+breaker: {charge(5_000)} after {len(calls)} attempts")
    breaker.force_open()
    try:
        charge(5_001)
    except CircuitOpenError as exc:
        print(f"retry+breaker: fails fast while open ({exc.name}, retry_after={exc.retry_after})")

    pool.close()


if __name__ == "__main__":
    main()
