"""scalekit.contrib.starlette through FastAPI's and Starlette's test clients, on fakes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import fakeredis
import pytest
import sqlalchemy as sa
from fastapi import BackgroundTasks, Depends, FastAPI
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from scalekit.contrib import current_request
from scalekit.contrib.starlette import (
    ConsistencyMiddleware,
    RateLimitMiddleware,
    Scalekit,
    export_response,
    get_limiter,
    get_pool,
    get_session,
    health_routes,
    limit,
)
from scalekit.errors import ConfigurationError
from scalekit.ratelimit import AsyncRateLimiter, MemoryBackend
from tests.unit.contrib._apps import example, rate_limit_fields

SECRET = "0123456789abcdef-secret"


def _app(**options: Any) -> tuple[FastAPI, Scalekit]:
    scalekit = Scalekit(
        database_url="sqlite+aiosqlite:///:memory:",
        redis=fakeredis.aioredis.FakeRedis(),
        token_secret=SECRET,
        default_limits=options.pop("default_limits", "5/minute"),
        secure_cookies=False,
        **options,
    )
    app = FastAPI(lifespan=scalekit.lifespan)
    scalekit.install(app)
    app.router.routes.extend(health_routes())
    return app, scalekit


@pytest.fixture
def client() -> Iterator[TestClient]:
    app, _ = _app()

    @app.get("/limited", dependencies=[Depends(limit("2/minute", key=lambda r: "same"))])
    async def limited() -> dict[str, int]:
        return {"ok": 1}

    @app.get("/free")
    async def free() -> dict[str, int]:
        return {"ok": 1}

    with TestClient(app) as test_client:
        yield test_client


def test_every_response_carries_one_set_of_rate_limit_headers(client: TestClient) -> None:
    response = client.get("/free")
    fields = rate_limit_fields(response.headers)
    assert fields["ratelimit-policy"] == [("5-per-60s", {"q": 5, "w": 60})]
    assert fields["ratelimit"][0][1]["r"] == 4
    assert "retry-after" not in fields


def test_the_app_limit_answers_429_with_retry_after(client: TestClient) -> None:
    statuses = [client.get("/free").status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    denied = client.get("/free")
    fields = rate_limit_fields(denied.headers)
    assert denied.status_code == 429 and fields["retry-after"] >= 1
    assert fields["ratelimit"][0][1]["r"] == 0
    assert denied.json() == {"detail": "rate limit exceeded"}


def test_a_route_limit_merges_with_the_app_limit_without_duplicates(client: TestClient) -> None:
    responses = [client.get("/limited") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    for response in responses:
        fields = rate_limit_fields(response.headers)  # asserts each field appears once
        assert [name for name, _ in fields["ratelimit-policy"]] == ["5-per-60s", "2-per-60s"]
        assert len(fields["ratelimit"]) == 2
    assert rate_limit_fields(responses[2].headers)["retry-after"] >= 1


def test_health_routes_are_exempt_and_answer(client: TestClient) -> None:
    for _ in range(7):
        assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] in ("ok", "warn")
    assert "ratelimit" not in ready.headers


def test_the_middleware_is_pure_asgi() -> None:
    for cls in (RateLimitMiddleware, ConsistencyMiddleware):
        assert not issubclass(cls, BaseHTTPMiddleware)


def test_context_variables_reach_endpoints_and_background_tasks() -> None:
    app, scalekit = _app()
    seen: dict[str, Any] = {}

    async def in_background() -> None:
        scope = current_request()
        seen["background"] = None if scope is None else (scope.path, len(scope.decisions))
        seen["token"] = await scalekit.pool.token()  # the routing context of the request

    @app.post("/bg")
    async def with_task(
        tasks: BackgroundTasks, session: Annotated[Any, Depends(get_session)]
    ) -> dict[str, bool]:
        await session.execute(sa.text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
        await session.commit()
        scope = current_request()
        seen["endpoint"] = None if scope is None else scope.path
        tasks.add_task(in_background)
        return {"ok": True}

    with TestClient(app) as client:
        response = client.post("/bg")
        assert response.status_code == 200
    assert seen["endpoint"] == "/bg" and seen["background"] == ("/bg", 1)
    assert seen["token"] is not None
    assert seen["token"].encode() == response.headers["x-scalekit-token"].rpartition(".")[0]
    assert current_request() is None


def test_the_token_cookie_carries_a_write_to_the_next_request() -> None:
    app, _ = _app()
    tokens: list[Any] = []

    @app.post("/write")
    async def write(session: Annotated[Any, Depends(get_session)]) -> dict[str, bool]:
        await session.execute(sa.text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
        await session.execute(sa.text("INSERT INTO t VALUES (1)"))
        await session.commit()
        return {"ok": True}

    @app.get("/read")
    async def read(pool: Annotated[Any, Depends(get_pool)]) -> dict[str, bool]:
        tokens.append((await pool.token(), current_request().token_in))  # type: ignore[union-attr]
        return {"ok": True}

    with TestClient(app) as client:
        assert client.get("/read").status_code == 200
        written = client.post("/write")
        signed = written.headers["x-scalekit-token"]
        assert client.cookies["scalekit_token"] == signed
        assert "HttpOnly" in written.headers["set-cookie"]
        read = client.get("/read")
        assert "set-cookie" not in read.headers  # a read hands back no new token
        client.cookies.clear()
        client.get("/read", headers={"X-Scalekit-Token": signed})
        client.get("/read", headers={"X-Scalekit-Token": signed[:-2] + "xx"})  # forged
    assert tokens[0] == (None, None)
    assert tokens[1][0] is not None and tokens[1][1] == signed.rpartition(".")[0]
    assert tokens[2][1] == tokens[1][1]
    assert tokens[3] == (None, None)


def test_a_plain_starlette_endpoint_can_be_decorated() -> None:
    limiter = AsyncRateLimiter(MemoryBackend())

    @limit("1/minute").decorate
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/", hello)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    with TestClient(app) as client:
        first, second = client.get("/"), client.get("/")
    assert (first.status_code, second.status_code) == (200, 429)
    assert rate_limit_fields(second.headers)["retry-after"] >= 1


def test_redis_down_never_turns_into_a_500() -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.aioredis.FakeRedis(server=server)
    for fallback in ("local", "allow", "raise"):
        scalekit = Scalekit(
            redis=redis, default_limits="100/minute", limiter={"fallback": fallback}
        )
        app = FastAPI(lifespan=scalekit.lifespan)
        scalekit.install(app)

        @app.get("/cached")
        async def cached(request: Request) -> dict[str, int]:
            cache = request.app.state.scalekit.cache

            async def load() -> int:
                return 7

            return {"value": await cache.get_or_set("k", load)}

        with TestClient(app) as client:
            assert client.get("/cached").json() == {"value": 7}
            server.connected = False
            try:
                responses = [client.get("/cached") for _ in range(3)]
            finally:
                server.connected = True
        assert [r.status_code for r in responses] == [200] * 3, fallback
        assert all(r.json() == {"value": 7} for r in responses)


def test_export_response_streams_csv() -> None:
    app, scalekit = _app()

    @app.get("/rows.csv")
    async def rows() -> Any:
        primary = scalekit.pool.nodes[scalekit.pool.primary_name]
        return export_response(primary, sa.select(sa.literal(1).label("one")), filename="r.csv")

    with TestClient(app) as client:
        response = client.get("/rows.csv")
    assert response.text.splitlines() == ["one", "1"]
    assert response.headers["content-disposition"] == 'attachment; filename="r.csv"'
    assert response.headers["content-type"].startswith("text/csv")


def test_lifespan_opens_and_closes_and_dependencies_find_it() -> None:
    app, scalekit = _app()

    @app.get("/limiter")
    async def limiter(value: Annotated[Any, Depends(get_limiter)]) -> dict[str, str]:
        return {"limiter": type(value).__name__}

    assert scalekit.pool is None
    with TestClient(app) as client:
        assert client.get("/limiter").json() == {"limiter": "AsyncRateLimiter"}
        assert scalekit.pool is not None
    assert scalekit._owned == []


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        Scalekit(database_url="sqlite://", primary=object())
    with pytest.raises(ConfigurationError):
        Scalekit(token_secret="short")
    with pytest.raises(ConfigurationError):
        RateLimitMiddleware(FastAPI())
    with pytest.raises(ConfigurationError):
        ConsistencyMiddleware(FastAPI(), pool=object())
    with pytest.raises(ConfigurationError):
        limit("5/minute").decorate(lambda request: None)


def test_the_example_app_runs_on_fakes() -> None:
    module = example("fastapi_app")
    app = module.create_app(secure_cookies=False)
    with TestClient(app) as client:
        created = client.post("/orders", json={"customer": "ada", "total": 5})
        assert created.status_code == 201
        assert client.get(f"/orders/{created.json()['id']}").json()["total"] == 5
        rows = [{"id": 100 + i, "customer": "bob", "total": 1} for i in range(30)]
        assert client.post("/orders/import", json=rows).json() == {"rows": 30}
        assert client.get("/customers/bob/total").json()["total"] == 30
        page = client.get("/orders", params={"size": 10}).json()
        assert len(page["items"]) == 10 and page["next"]
        assert client.get("/orders", params={"after": "garbage"}).status_code == 400
        assert client.get("/orders.csv").text.count("\n") == 32


def test_a_token_that_cannot_be_resolved_is_not_a_500() -> None:
    app, scalekit = _app()

    @app.post("/write")
    async def write(session: Annotated[Any, Depends(get_session)]) -> dict[str, bool]:
        async def broken() -> None:
            raise OSError("the primary went away")

        scalekit.pool.export_token = broken
        await session.execute(sa.text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
        await session.commit()
        return {"ok": True}

    with TestClient(app) as client:
        response = client.post("/write")
    assert response.status_code == 200 and "x-scalekit-token" not in response.headers


def test_one_app_serves_several_lifespans() -> None:
    app, scalekit = _app()

    @app.get("/free")
    async def free() -> dict[str, int]:
        return {"ok": 1}

    for _ in range(2):
        with TestClient(app) as client:
            assert client.get("/free").status_code == 200
            assert client.get("/readyz").status_code == 200
        assert scalekit._owned == []
