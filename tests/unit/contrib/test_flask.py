"""scalekit.contrib.flask through Flask's test client, on fakes."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
import sqlalchemy as sa
from flask import Flask, jsonify

from scalekit.contrib import current_request
from scalekit.contrib.flask import Scalekit, export_response, health_blueprint, limit
from scalekit.errors import ConfigurationError
from tests.unit.contrib._apps import example, rate_limit_fields

SECRET = "0123456789abcdef-secret"
scalekit = Scalekit()


def create_app(**config: Any) -> Flask:
    app = Flask(__name__)
    settings: dict[str, Any] = {
        "SECRET_KEY": SECRET,
        "SCALEKIT_DATABASE_URL": "sqlite://",
        "SCALEKIT_DEFAULT_LIMITS": "5/minute",
        "SCALEKIT_TOKEN_SECURE": False,
    }
    app.config.update(settings | config)
    scalekit.init_app(app, redis=fakeredis.FakeRedis())
    app.register_blueprint(health_blueprint())

    @app.get("/free")
    def free() -> Any:
        return jsonify(ok=1)

    @app.get("/limited")
    @limit("2/minute", key=lambda request: "same")
    def limited() -> Any:
        return jsonify(ok=1)

    @app.get("/async")
    @limit("1/minute")
    async def limited_async() -> Any:
        return jsonify(path=current_request().path)  # type: ignore[union-attr]

    @app.post("/write")
    def write() -> Any:
        session = scalekit.session
        session.execute(sa.text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
        session.execute(sa.text("INSERT INTO t VALUES (1)"))
        session.commit()
        return jsonify(ok=1)

    @app.get("/token")
    def token() -> Any:
        pool_token = scalekit.pool.token()
        scope = current_request()
        return jsonify(
            pool=None if pool_token is None else pool_token.encode(),
            token_in=None if scope is None else scope.token_in,
        )

    return app


def test_every_response_carries_one_set_of_rate_limit_headers() -> None:
    client = create_app().test_client()
    fields = rate_limit_fields(client.get("/free").headers)
    assert fields["ratelimit-policy"] == [("5-per-60s", {"q": 5, "w": 60})]
    assert fields["ratelimit"][0][1]["r"] == 4


def test_the_app_limit_answers_429_with_retry_after() -> None:
    client = create_app().test_client()
    statuses = [client.get("/free").status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    assert rate_limit_fields(client.get("/free").headers)["retry-after"] >= 1


def test_a_view_limit_merges_with_the_app_limit_without_duplicates() -> None:
    client = create_app().test_client()
    responses = [client.get("/limited") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    for response in responses:
        fields = rate_limit_fields(response.headers)
        assert [name for name, _ in fields["ratelimit-policy"]] == ["5-per-60s", "2-per-60s"]
    assert rate_limit_fields(responses[2].headers)["retry-after"] >= 1


def test_async_views_are_limited_and_see_the_request_scope() -> None:
    client = create_app().test_client()
    first, second = client.get("/async"), client.get("/async")
    assert first.get_json() == {"path": "/async"}
    assert second.status_code == 429


def test_health_blueprint_is_exempt_and_answers() -> None:
    client = create_app().test_client()
    for _ in range(7):
        assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and "RateLimit" not in ready.headers


def test_the_token_cookie_carries_a_write_to_the_next_request() -> None:
    client = create_app().test_client()
    assert client.get("/token").get_json() == {"pool": None, "token_in": None}
    written = client.post("/write")
    signed = written.headers["X-Scalekit-Token"]
    assert client.get_cookie("scalekit_token").value == signed  # type: ignore[union-attr]
    read = client.get("/token")
    assert "Set-Cookie" not in read.headers  # a read hands back no new token
    after = read.get_json()
    assert after["pool"] is not None and after["token_in"] == signed.rpartition(".")[0]
    client.delete_cookie("scalekit_token")
    forged = client.get("/token", headers={"X-Scalekit-Token": signed[:-2] + "xx"})
    assert forged.get_json() == {"pool": None, "token_in": None}


def test_app_factories_make_independent_apps() -> None:
    first, second = create_app(), create_app(SCALEKIT_DEFAULT_LIMITS="1/minute")
    assert Scalekit.state(first) is not Scalekit.state(second)
    one, two = first.test_client(), second.test_client()
    assert [two.get("/free").status_code for _ in range(2)] == [200, 429]
    assert one.get("/free").status_code == 200


def test_the_session_lives_for_the_app_context() -> None:
    app = create_app()
    with app.app_context():
        session = scalekit.session
        assert scalekit.session is session
    with app.app_context():
        assert scalekit.session is not session


def test_redis_down_never_turns_into_a_500() -> None:
    for fallback in ("local", "allow", "raise"):
        server = fakeredis.FakeServer()
        app = Flask(__name__)
        app.config.update(
            SCALEKIT_DEFAULT_LIMITS="100/minute", SCALEKIT_LIMITER={"fallback": fallback}
        )
        Scalekit(app, redis=fakeredis.FakeRedis(server=server))

        @app.get("/cached")
        @limit("50/minute")
        def cached() -> Any:
            return jsonify(value=scalekit.cache.get_or_set("k", lambda: 7))

        client = app.test_client()
        assert client.get("/cached").get_json() == {"value": 7}
        server.connected = False
        responses = [client.get("/cached") for _ in range(3)]
        assert [r.status_code for r in responses] == [200] * 3, fallback
        assert all(r.get_json() == {"value": 7} for r in responses)


def test_export_response_streams_csv() -> None:
    app = create_app()

    @app.get("/rows.csv")
    def rows() -> Any:
        pool = scalekit.pool
        return export_response(
            pool.nodes[pool.primary_name], sa.select(sa.literal(1).label("one")), filename="r.csv"
        )

    response = app.test_client().get("/rows.csv")
    assert response.get_data(as_text=True).splitlines() == ["one", "1"]
    assert response.headers["Content-Disposition"] == 'attachment; filename="r.csv"'


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        Scalekit(no_such_setting=1)
    with pytest.raises(ConfigurationError):
        create_app(SCALEKIT_HEADER_STYLE="fancy")
    with pytest.raises(ConfigurationError):
        create_app(SCALEKIT_DEFAULT_LIMITS="lots")
    with pytest.raises(RuntimeError):
        Scalekit.state(Flask(__name__))


def test_the_example_app_runs_on_fakes() -> None:
    app = example("flask_app").create_app(secure_cookies=False)
    client = app.test_client()
    created = client.post("/orders", json={"customer": "ada", "total": 5})
    assert created.status_code == 201
    assert client.get(f"/orders/{created.get_json()['id']}").get_json()["total"] == 5
    rows = [{"id": 100 + i, "customer": "bob", "total": 1} for i in range(30)]
    assert client.post("/orders/import", json=rows).get_json() == {"rows": 30}
    assert client.get("/customers/bob/total").get_json()["total"] == 30
    page = client.get("/orders", query_string={"size": 10}).get_json()
    assert len(page["items"]) == 10 and page["next"]
    assert client.get("/orders", query_string={"after": "garbage"}).status_code == 400
    assert client.get("/orders.csv").get_data(as_text=True).count("\n") == 32


def test_without_a_secret_each_request_still_starts_a_fresh_routing_context() -> None:
    app = create_app(SECRET_KEY=None)
    client = app.test_client()
    written = client.post("/write")
    assert "X-Scalekit-Token" not in written.headers
    assert client.get("/token").get_json()["pool"] is None


def test_a_token_that_cannot_be_resolved_is_not_a_500(monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app()

    def broken() -> None:
        raise OSError("the primary went away")

    monkeypatch.setattr(Scalekit.state(app).pool, "export_token", broken)
    response = app.test_client().post("/write")
    assert response.status_code == 200 and "X-Scalekit-Token" not in response.headers
