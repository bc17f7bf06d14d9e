"""Read/write routing: reads on replicas, writes on the primary, your writes visible to you.

By default this runs on SQLite files, a "primary" and two "replicas" (each a
file with a ``whoami`` row, so every read says where it ran); no server is
needed. Give real URLs to run it on PostgreSQL streaming replication, where
read-your-writes uses WAL positions (LSN tokens) instead of time:

    python examples/routing.py
    python examples/routing.py --primary postgresql+psycopg://app@db1/app \\
        --replica postgresql+psycopg://app@db2/app --replica postgresql+psycopg://app@db3/app
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from scalekit.errors import ReadOnlyViolation
from scalekit.routing import AsyncRoutingPool, RoutingPool, classify
from scalekit.testing import capture_events


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "example_orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    total: Mapped[int]


def section(title: str) -> None:
    print(f"\n== {title}")


def sqlite_nodes(root: Path) -> tuple[str, list[str]]:
    """Three SQLite files with the same schema; each knows its own name."""
    urls = []
    for name in ("primary", "replica1", "replica2"):
        url = f"sqlite:///{root / name}.db"
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            Base.metadata.create_all(conn)
            conn.exec_driver_sql("CREATE TABLE whoami (name TEXT)")
            conn.exec_driver_sql(f"INSERT INTO whoami VALUES ('{name}')")
        engine.dispose()
        urls.append(url)
    return urls[0], urls[1:]


def where_sql(url: str) -> sa.Select[tuple[str]] | sa.TextClause:
    if url.startswith("sqlite"):
        return sa.text("SELECT name FROM whoami")  # raw SQL that only reads: a replica
    # On PostgreSQL a plain select tells us the role and port of the server that ran it.
    return sa.select(
        sa.case((sa.func.pg_is_in_recovery(), "replica"), else_="primary")
        + sa.literal(":")
        + sa.cast(sa.func.inet_server_port(), sa.String)
    )


def sync_demo(primary_url: str, replica_urls: list[str]) -> None:
    primary = sa.create_engine(primary_url)
    replicas = [sa.create_engine(url) for url in replica_urls]
    if not primary_url.startswith("sqlite"):
        with primary.begin() as conn:
            Base.metadata.create_all(conn)
    pool = RoutingPool(primary=primary, replicas=replicas, sticky_seconds=0.5)
    Session = pool.sessionmaker()
    where = where_sql(primary_url)
    print(f"consistency mode: {pool.health()['consistency']}")

    section("reads go to the replicas in turn")
    for _ in range(4):
        with Session() as session:
            print("  read ran on", session.scalar(where))

    section("a write goes to the primary; the next read sees it")
    with capture_events() as events:
        with Session() as session:
            session.merge(Order(id=1, total=42))
            session.commit()
        with Session() as session:
            print("  read-your-write ran on", session.scalar(where))
            print("  order 1 total:", session.get(Order, 1).total)  # type: ignore[union-attr]
    for event in events:
        print("  event:", event)

    section("a token carries read-your-writes to another request or a job")
    token = pool.export_token()
    print("  exported token:", token)
    pool.reset_context()  # a new request starts clean...
    pool.import_token(token)  # ...and adopts the cookie/header/payload
    with Session() as session:
        print("  follow-up read ran on", session.scalar(where))

    section("explicit control")
    pool.reset_context()
    with pool.use_primary(), Session() as session:
        print("  inside use_primary():", session.scalar(where))
    with pool.use_replica(), Session() as session:
        session.add(Order(id=2, total=1))
        try:
            session.flush()
        except ReadOnlyViolation as exc:
            print("  inside use_replica(), a write is refused:", exc)
    with pool.connect(readonly=True) as conn:
        print("  pool.connect(readonly=True) ran on", conn.execute(where).scalar())

    section("raw SQL: a read goes to a replica, anything doubtful to the primary")
    for sql in ("SELECT total FROM example_orders", "SELECT id FROM example_orders FOR UPDATE"):
        print(f"  {sql!r}: {classify(sa.text(sql)).reason}")
    forced = sa.text("SELECT count(*) FROM example_orders")
    print(
        "  marked scalekit_route='write':",
        classify(forced.execution_options(scalekit_route="write")).reason,
    )

    section("health (no I/O; URLs masked)")
    pool.refresh()
    print(" ", repr(pool))
    for name, node in pool.health()["nodes"].items():
        print(f"  {name:9} role={node['role']:8} up={node['up']} pool={node['pool']['size']}")
    pool.close()
    for engine in (primary, *replicas):
        engine.dispose()


async def async_demo(primary_url: str, replica_urls: list[str]) -> None:
    def to_async(url: str) -> str:
        return url.replace("sqlite://", "sqlite+aiosqlite://", 1)

    primary = create_async_engine(to_async(primary_url))
    replicas = [create_async_engine(to_async(url)) for url in replica_urls]
    pool = AsyncRoutingPool(primary=primary, replicas=replicas)
    Session = pool.sessionmaker()
    where = where_sql(primary_url)
    section("asyncio: the same routing over AsyncEngine")
    async with Session() as session:
        print("  async read ran on", await session.scalar(where))
    async with pool.begin() as conn:
        await conn.execute(sa.delete(Order).where(Order.id == 3))
        await conn.execute(sa.insert(Order).values(id=3, total=7))
    async with Session() as session:
        print("  async read-your-write ran on", await session.scalar(where))
    pool.close()
    for engine in (primary, *replicas):
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--primary", help="SQLAlchemy URL of the primary")
    parser.add_argument("--replica", action="append", default=[], help="a replica URL (repeat)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if args.primary:
            primary_url, replica_urls = args.primary, args.replica
        else:
            primary_url, replica_urls = sqlite_nodes(Path(folder))
        sync_demo(primary_url, replica_urls)
        if primary_url.startswith("sqlite"):
            asyncio.run(async_demo(primary_url, replica_urls))


if __name__ == "__main__":
    main()
