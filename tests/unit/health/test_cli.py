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
