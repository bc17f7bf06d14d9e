"""The ``scalekit`` command in-process (click's CliRunner): pool-size and cursor decode.

The health command against real servers runs as a subprocess in
tests/integration/test_health_cli.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

pytest.importorskip("click")

from click.testing import CliRunner

from scalekit._cli import main
from scalekit.pagination import CursorCodec

SECRET = "0123456789abcdef-secret"


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    logger = logging.getLogger("scalekit")
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, result.stdout, result.stderr


def test_pool_size() -> None:
    code, out, _ = run("pool-size", "--max-connections", "500", "--instances", "100")
    assert (code, out.split()[0]) == (0, "pool_size=4")
    code, out, err = run("pool-size", "--max-connections", "10", "--instances", "20")
    assert code == 1 and out == "" and "cannot fit" in err


def test_cursor_decode_checks_the_signature_without_the_query() -> None:
    token = CursorCodec(secret=SECRET).encode([7, "x"], fingerprint=b"some query")
    code, out, _ = run("cursor", "decode", token, "--json", "--secret", SECRET)
    data = json.loads(out)
    assert code == 0
    assert (data["signed"], data["signature"]) == (True, "valid")
    assert [v["value"] for v in data["values"]] == [7, "x"]
    code, out, err = run("cursor", "decode", token, "--secret", "another-secret-of-16")
    assert code == 1 and "signature: " in out and "does not match" in err
    assert SECRET not in out + err
    code, out, _ = run("cursor", "decode", token)
    assert code == 0 and "not checked" in out


@pytest.mark.parametrize("token", ["", "!!", "AQ", "A" * 5000, "AQDd2cQHZ_kDAwIABQF4AAAA"])
def test_a_bad_cursor_is_one_line(token: str) -> None:
    code, out, err = run("cursor", "decode", token)
    assert code == 1 and out == ""
    assert err.startswith("scalekit: invalid cursor") and err.count("\n") == 1


def test_redis_urls_name_a_standalone_a_cluster_or_a_sentinel_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import redis
    from redis.sentinel import SentinelConnectionPool

    from scalekit import _cli

    standalone = _cli._redis("--redis", "redis://:pw@localhost:6390/2", 1.0)
    assert isinstance(standalone, redis.Redis)
    sentinel = _cli._redis(
        "--redis", f"redis+sentinel://:{SECRET}@[::1]:26390,sentinel-b/mymaster/3", 1.0
    )  # lazy: no I/O until the first command
    pool = sentinel.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 3 and pool.connection_kwargs["password"] == SECRET
    hosts = [
        (c.connection_pool.connection_kwargs["host"], c.connection_pool.connection_kwargs["port"])
        for c in pool.sentinel_manager.sentinels
    ]
    assert hosts == [("::1", 26390), ("sentinel-b", 26379)]
    # Several URLs in REDIS_URL: a cluster's host list stays one URL.
    monkeypatch.setenv("REDIS_URL", "redis+cluster://a:7000,b:7001,redis://c:6379/0")
    assert _cli._split((), "REDIS_URL") == ["redis+cluster://a:7000,b:7001", "redis://c:6379/0"]


@pytest.mark.parametrize(
    "url",
    [
        f"redis+cluster://:{SECRET}@host:notaport",
        "redis+cluster://",
        f"redis+sentinel://:{SECRET}@host:26379",
        "redis+sentinel://host:26379/service/notadb",
        "http://example.com",
    ],
)
def test_a_bad_redis_url_is_one_line(url: str) -> None:
    code, stdout, stderr = run("health", "--redis", url)
    assert code == 1 and stdout == ""
    assert stderr.startswith("scalekit: --redis: ") and stderr.count("\n") == 1
    assert SECRET not in stderr
