"""An orders service in FastAPI on scalekit: routing, cache, limits, pagination, import, health.

With no settings it runs on the embedded default (a SQLite file, whose second
engine plays a replica, and fakeredis) and drives itself once through
FastAPI's test client, printing what each step shows::

    python -m pip install -e '.[examples]' && python examples/fastapi_app.py

Serve it (uvicorn) on real servers::

    DATABASE_URL=postgresql+psycopg://app@db/orders \\
    REPLICA_URLS=postgresql+psycopg://app@replica1/orders \\
    REDIS_URL=redis://localhost:6379/0 \\
    python examples/fastapi_app.py --serve --port 8000

What each piece does: ``Scalekit`` opens the routing pool, the Redis client,
the cache and the limiter with the app and closes them after;
``ConsistencyMiddleware`` hands the client a signed token after a write, so
its next request (on any instance) reads from a replica that has the write,
or from the primary; ``RateLimitMiddleware`` applies the app-wide limit and
sets ``RateLimit``/``RateLimit-Policy`` on every response, and ``limit``
adds a route's own limit, merged into the same headers.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from scalekit.batch import Upsert, abatch_insert
from scalekit.contrib.starlette import (
    Scalekit,
    export_response,
    get_cache,
    get_session,
    health_routes,
    limit,
)
from scalekit.errors import InvalidCursor
from scalekit.pagination import CursorCodec, apaginate

# FastAPI's Annotated dependencies: a routed AsyncSession per request, the app's cache.
Session = Annotated[Any, Depends(get_session)]
CacheDep = Annotated[Any, Depends(get_cache)]

SECRET = os.environ.get("SCALEKIT_SECRET", "example secret, change me in production")
CODEC = CursorCodec(secret=SECRET)


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(sa.String(64), index=True)
    total: Mapped[int]


class OrderIn(BaseModel):
    customer: str
    total: int


class OrderRow(OrderIn):
    id: int


def _row(order: Order) -> dict[str, Any]:
    return {"id": order.id, "customer": order.customer, "total": order.total}


def _api_key(request: Request) -> str:
    return request.headers.get("x-api-key") or (request.client.host if request.client else "-")


def create_app(
    database_url: str | None = None,
    replica_urls: list[str] | None = None,
    redis_url: str | None = None,
    *,
    redis: Any = None,
    default_limits: str = "120/minute",
    secure_cookies: bool = True,
    features: bool = True,
) -> FastAPI:
    """Build the app; without URLs, a SQLite file and fakeredis (pass ``redis`` to share one).

    ``features=False`` turns scalekit's routing and caching off (every query
    on the primary, no cache), for ``examples/load_test.py`` to compare.
    """
    engine_options: dict[str, Any] = {}
    if database_url is None:
        folder = tempfile.mkdtemp(prefix="scalekit-fastapi-")
        atexit.register(shutil.rmtree, folder, True)  # the demo database goes with the process
        path = Path(folder) / "orders.db"
        database_url = f"sqlite+aiosqlite:///{path}"
        replica_urls = [database_url]  # a second engine on the file: a replica never behind
    if not features:
        replica_urls = []
    if redis_url is None and redis is None:
        import fakeredis

        redis = fakeredis.aioredis.FakeRedis()
    scalekit = Scalekit(
        database_url=database_url,
        replica_urls=replica_urls or [],
        redis_url=redis_url,
        redis=redis,
        engine_options=engine_options,
        routing={"check_interval": None},
        cache={"namespace": "orders", "default_ttl": 30},
        limiter={"fallback": "local"},
        token_secret=SECRET,
        default_limits=default_limits,
        secure_cookies=secure_cookies,  # False: the test client speaks plain HTTP
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with scalekit.lifespan(app) as state:
            async with scalekit.pool.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            yield state

    app = FastAPI(title="orders", lifespan=lifespan)
    scalekit.install(app)
    app.router.routes.extend(health_routes())

    @app.post("/orders", status_code=201, dependencies=[Depends(limit("30/minute", key=_api_key))])
    async def create_order(order: OrderIn, session: Session) -> OrderRow:
        row = Order(customer=order.customer, total=order.total)
        session.add(row)
        await session.commit()
        cache = scalekit.cache
        await cache.invalidate_tags(f"customer:{order.customer}")
        return OrderRow(**_row(row))

    @app.get("/orders/{order_id}")
    async def get_order(order_id: int, session: Session) -> OrderRow:
        order = await session.get(Order, order_id)
        if order is None:
            raise HTTPException(404, "no such order")
        return OrderRow(**_row(order))

    @app.get("/orders")
    async def list_orders(
        session: Session, after: str | None = None, size: int = 20
    ) -> dict[str, Any]:
        try:
            page = await apaginate(
                session,
                sa.select(Order),
                order_by=[Order.id.desc()],
                limit=min(max(size, 1), 100),
                after=after,
                codec=CODEC,
            )
        except InvalidCursor as error:
            raise HTTPException(400, str(error)) from None
        return {"items": [_row(o) for o in page.items], "next": page.next_cursor}

    @app.get("/customers/{customer}/total")
    async def customer_total(customer: str, session: Session, cache: CacheDep) -> dict[str, Any]:
        async def load() -> int:
            query = sa.select(sa.func.coalesce(sa.func.sum(Order.total), 0))
            return int(await session.scalar(query.where(Order.customer == customer)))

        if not features:
            return {"customer": customer, "total": await load()}
        total = await cache.get_or_set(
            f"total:{customer}", load, ttl=60, tags=[f"customer:{customer}"]
        )
        return {"customer": customer, "total": total}

    @app.post("/orders/import", dependencies=[Depends(limit("5/minute", key=_api_key))])
    async def import_orders(rows: list[OrderRow], session: Session) -> dict[str, int]:
        result = await abatch_insert(
            session,
            Order,
            [row.model_dump() for row in rows],
            on_conflict=Upsert(index=["id"], update=["customer", "total"]),
        )
        await session.commit()
        for customer in {row.customer for row in rows}:
            await scalekit.cache.invalidate_tags(f"customer:{customer}")
        return {"rows": result.rows}

    @app.get("/orders.csv")
    async def orders_csv() -> Any:
        primary = scalekit.pool.nodes[scalekit.pool.primary_name]
        return export_response(primary, sa.select(Order.__table__), filename="orders.csv")

    app.state.scalekit = scalekit
    return app


def demo() -> None:
    """Drive the app once with the test client (what CI runs)."""
    from fastapi.testclient import TestClient

    app = create_app(secure_cookies=False)
    with TestClient(app) as client:
        created = client.post("/orders", json={"customer": "ada", "total": 42})
        print("POST /orders ->", created.status_code, created.json())
        print("  RateLimit:", created.headers["RateLimit"])
        print("  token cookie set:", "scalekit_token" in created.cookies)
        order_id = created.json()["id"]
        print("GET /orders/id ->", client.get(f"/orders/{order_id}").json())
        rows = [{"id": 1000 + i, "customer": f"c{i % 3}", "total": i} for i in range(50)]
        print("POST /orders/import ->", client.post("/orders/import", json=rows).json())
        page = client.get("/orders", params={"size": 20}).json()
        second = client.get("/orders", params={"size": 20, "after": page["next"]}).json()
        print("GET /orders ->", len(page["items"]), "then", len(second["items"]), "items")
        print("total of c1 ->", client.get("/customers/c1/total").json())
        print("GET /orders.csv ->", client.get("/orders.csv").text.count("\n"), "lines")
        denied = [client.post("/orders/import", json=rows[:1]) for _ in range(6)][-1]
        print(
            "import 6 times ->", denied.status_code, "Retry-After:", denied.headers["Retry-After"]
        )
        print("GET /readyz ->", client.get("/readyz").json()["status"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="serve with uvicorn")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if not args.serve:
        demo()
        return 0
    import uvicorn

    replicas = [u for u in os.environ.get("REPLICA_URLS", "").split(",") if u]
    app = create_app(
        os.environ.get("DATABASE_URL"),
        replicas,
        os.environ.get("REDIS_URL"),
        default_limits=os.environ.get("DEFAULT_LIMITS", "120/minute"),
        features=os.environ.get("SCALEKIT_FEATURES", "on") != "off",
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
