"""An orders service in Flask on scalekit: routing, cache, rate limits, pagination, import, health.

With no settings it runs on the embedded default (a SQLite file, whose second
engine plays a replica, and fakeredis) and drives itself once through
Flask's test client, printing what each step shows::

    python -m pip install -e '.[examples]' && python examples/flask_app.py

Serve it on real servers (Flask's development server here; use gunicorn or
waitress in production: ``gunicorn 'examples.flask_app:create_app()'``)::

    DATABASE_URL=postgresql+psycopg://app@db/orders \\
    REPLICA_URLS=postgresql+psycopg://app@replica1/orders \\
    REDIS_URL=redis://localhost:6379/0 \\
    python examples/flask_app.py --serve --port 8000

The extension is made once and bound to each app in the factory
(``scalekit.init_app(app)``); it reads the ``SCALEKIT_*`` settings, gives
each app context a routed session, hands the client a signed consistency
token after a write (so its next request reads its write), and sets
``RateLimit``/``RateLimit-Policy`` on every response.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask, abort, jsonify, request
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from scalekit.batch import Upsert, batch_insert
from scalekit.contrib.flask import Scalekit, export_response, health_blueprint, limit
from scalekit.errors import InvalidCursor
from scalekit.pagination import CursorCodec, paginate

SECRET = os.environ.get("SCALEKIT_SECRET", "example secret, change me in production")
CODEC = CursorCodec(secret=SECRET)

scalekit = Scalekit()


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(sa.String(64), index=True)
    total: Mapped[int]


def _row(order: Order) -> dict[str, Any]:
    return {"id": order.id, "customer": order.customer, "total": order.total}


def _api_key(req: Any) -> str:
    return str(req.headers.get("X-Api-Key") or req.remote_addr or "-")


def create_app(
    database_url: str | None = None,
    replica_urls: list[str] | None = None,
    redis_url: str | None = None,
    *,
    redis: Any = None,
    default_limits: str = "120/minute",
    secure_cookies: bool = True,
    features: bool = True,
) -> Flask:
    """Build the app; without URLs, a SQLite file and fakeredis (pass ``redis`` to share one).

    ``features=False`` turns scalekit's routing and caching off (every query
    on the primary, no cache), for ``examples/load_test.py`` to compare.
    """
    if database_url is None:
        folder = tempfile.mkdtemp(prefix="scalekit-flask-")
        atexit.register(shutil.rmtree, folder, True)  # the demo database goes with the process
        path = Path(folder) / "orders.db"
        database_url = f"sqlite:///{path}"
        replica_urls = [database_url]  # a second engine on the file: a replica never behind
    if not features:
        replica_urls = []
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=SECRET,
        SCALEKIT_DATABASE_URL=database_url,
        SCALEKIT_REPLICA_URLS=replica_urls or [],
        SCALEKIT_REDIS_URL=redis_url,
        SCALEKIT_ROUTING={"check_interval": None},
        SCALEKIT_CACHE={"namespace": "orders", "default_ttl": 30},
        SCALEKIT_DEFAULT_LIMITS=default_limits,
        SCALEKIT_TOKEN_SECURE=secure_cookies,  # False: the test client speaks plain HTTP
    )
    if redis_url is None and redis is None:
        import fakeredis

        redis = fakeredis.FakeRedis()
    scalekit.init_app(app, redis=redis)
    app.register_blueprint(health_blueprint())
    with Scalekit.state(app).pool.begin() as conn:
        Base.metadata.create_all(conn)

    @app.post("/orders")
    @limit("30/minute", key=_api_key)
    def create_order() -> Any:
        body = request.get_json()
        order = Order(customer=str(body["customer"]), total=int(body["total"]))
        session = scalekit.session
        session.add(order)
        session.commit()
        scalekit.cache.invalidate_tags(f"customer:{order.customer}")
        return jsonify(_row(order)), 201

    @app.get("/orders/<int:order_id>")
    def get_order(order_id: int) -> Any:
        order = scalekit.session.get(Order, order_id)
        if order is None:
            abort(404)
        return jsonify(_row(order))

    @app.get("/orders")
    def list_orders() -> Any:
        size = min(max(request.args.get("size", 20, type=int), 1), 100)
        try:
            page = paginate(
                scalekit.session,
                sa.select(Order),
                order_by=[Order.id.desc()],
                limit=size,
                after=request.args.get("after"),
                codec=CODEC,
            )
        except InvalidCursor as error:
            return jsonify({"detail": str(error)}), 400
        return jsonify({"items": [_row(o) for o in page.items], "next": page.next_cursor})

    @app.get("/customers/<customer>/total")
    def customer_total(customer: str) -> Any:
        def load() -> int:
            query = sa.select(sa.func.coalesce(sa.func.sum(Order.total), 0))
            return int(scalekit.session.scalar(query.where(Order.customer == customer)) or 0)

        if not features:
            return jsonify({"customer": customer, "total": load()})
        total = scalekit.cache.get_or_set(
            f"total:{customer}", load, ttl=60, tags=[f"customer:{customer}"]
        )
        return jsonify({"customer": customer, "total": total})

    @app.post("/orders/import")
    @limit("5/minute", key=_api_key)
    def import_orders() -> Any:
        rows = [
            {"id": int(r["id"]), "customer": str(r["customer"]), "total": int(r["total"])}
            for r in request.get_json()
        ]
        session = scalekit.session
        result = batch_insert(
            session, Order, rows, on_conflict=Upsert(index=["id"], update=["customer", "total"])
        )
        session.commit()
        for customer in {row["customer"] for row in rows}:
            scalekit.cache.invalidate_tags(f"customer:{customer}")
        return jsonify({"rows": result.rows})

    @app.get("/orders.csv")
    def orders_csv() -> Any:
        pool = scalekit.pool
        primary = pool.nodes[pool.primary_name]
        return export_response(primary, sa.select(Order.__table__), filename="orders.csv")

    return app


def demo() -> None:
    """Drive the app once with the test client (what CI runs)."""
    app = create_app(secure_cookies=False)
    client = app.test_client()
    created = client.post("/orders", json={"customer": "ada", "total": 42})
    print("POST /orders ->", created.status_code, created.get_json())
    print("  RateLimit:", created.headers["RateLimit"])
    print("  token cookie set:", client.get_cookie("scalekit_token") is not None)
    order_id = created.get_json()["id"]
    print("GET /orders/id ->", client.get(f"/orders/{order_id}").get_json())
    rows = [{"id": 1000 + i, "customer": f"c{i % 3}", "total": i} for i in range(50)]
    print("POST /orders/import ->", client.post("/orders/import", json=rows).get_json())
    page = client.get("/orders", query_string={"size": 20}).get_json()
    second = client.get("/orders", query_string={"size": 20, "after": page["next"]}).get_json()
    print("GET /orders ->", len(page["items"]), "then", len(second["items"]), "items")
    print("total of c1 ->", client.get("/customers/c1/total").get_json())
    print(
        "GET /orders.csv ->", client.get("/orders.csv").get_data(as_text=True).count("\n"), "lines"
    )
    denied = [client.post("/orders/import", json=rows[:1]) for _ in range(6)][-1]
    print("import 6 times ->", denied.status_code, "Retry-After:", denied.headers["Retry-After"])
    print("GET /readyz ->", client.get("/readyz").get_json()["status"])
    Scalekit.state(app).close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="serve with Flask's server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if not args.serve:
        demo()
        return 0
    replicas = [u for u in os.environ.get("REPLICA_URLS", "").split(",") if u]
    app = create_app(
        os.environ.get("DATABASE_URL"),
        replicas,
        os.environ.get("REDIS_URL"),
        default_limits=os.environ.get("DEFAULT_LIMITS", "120/minute"),
        features=os.environ.get("SCALEKIT_FEATURES", "on") != "off",
    )
    app.run(host=args.host, port=args.port, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
