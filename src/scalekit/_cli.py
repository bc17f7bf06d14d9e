"""The ``scalekit`` command (also ``python -m scalekit``), built on click (the ``cli`` extra).

::

    scalekit health --primary URL [--replica URL ...] [--redis URL ...] [--json]
                    [--watch SECONDS] [--timeout SECONDS]
    scalekit pool-size --max-connections N --instances M [--reserve R] [--overflow O]
    scalekit cursor decode CURSOR [--secret KEY]

``--redis`` URLs: ``redis://``, ``rediss://``, ``unix://`` (standalone),
``redis+cluster://host:port,host:port`` (a cluster, from its startup nodes),
``redis+sentinel://host:port,host:port/service[/db]`` (a sentinel-managed master).

Exit codes: ``health`` 0 / 1 / 2 for ok / warn / critical; any command 2 for
a usage error and 1 for a value it cannot use (a bad URL, a bad cursor).
Errors are one line on stderr, never a traceback, and nothing printed ever
holds a password or a full URL: URLs are named by their option, servers by
``host:port/database``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from scalekit.errors import ConfigurationError, InvalidCursor

__all__ = ["main"]

_STATUS_COLOURS = {"ok": "green", "warn": "yellow", "critical": "red"}


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"scalekit: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-v", "--verbose", is_flag=True, help="Log scalekit's events (ejections, pressure) to stderr."
)
def main(verbose: bool) -> None:
    """scalekit: health reports, pool sizing and cursor inspection for apps on PostgreSQL
    and Redis."""
    # The command is the application here, so it decides: the library's event log
    # (a replica ejected while probing it...) only with -v; the report says it all.
    logger = logging.getLogger("scalekit")
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    else:
        logger.setLevel(logging.CRITICAL)


# -- health -------------------------------------------------------------------------------------


def _split(values: Sequence[str], env: str) -> list[str]:
    """The option's values, else the variable's comma-separated URLs. A piece without
    ``://`` continues the URL before it: the host list of a cluster, sentinel or
    multi-host PostgreSQL URL (``redis+cluster://h1:7000,h2:7001``)."""
    if values:
        return list(values)
    urls: list[str] = []
    for item in os.environ.get(env, "").split(","):
        item = item.strip()
        if not item:
            continue
        if urls and "://" not in item:
            urls[-1] += "," + item
        else:
            urls.append(item)
    return urls


def _engine(option: str, url: str, timeout: float) -> Any:
    """An Engine for ``url`` with a one-connection pool; errors never repeat the URL."""
    import sqlalchemy as sa
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = sa.make_url(url)
    except (ArgumentError, ValueError):
        _fail(f"{option}: not a database URL (expected dialect+driver://user:pass@host/db)")
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = max(1, math.ceil(timeout))
        if parsed.drivername == "postgresql":  # the bare name means psycopg2; we ship psycopg 3
            parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        return sa.create_engine(parsed, pool_size=1, max_overflow=1, connect_args=connect_args)
    except NoSuchModuleError:
        _fail(f"{option}: no SQLAlchemy dialect for {parsed.drivername!r}")
    except (ArgumentError, ImportError, TypeError, ValueError) as error:
        _fail(f"{option}: cannot use this URL ({type(error).__name__})")


_REDIS_URLS = (
    "expected redis://[[user]:password@]host:port/db (also rediss://, unix://), "
    "redis+cluster://[[user]:password@]host:port[,host:port...] or "
    "redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]"
)


def _hosts(option: str, netloc: str) -> tuple[str | None, str | None, list[tuple[str, int]]]:
    """``user:password@host:port,host:port`` as (user, password, [(host, port), ...])."""
    from urllib.parse import unquote

    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    addresses: list[tuple[str, int]] = []
    for host in filter(None, hosts.split(",")):
        if host.startswith("["):  # [IPv6]:port
            name, _, port = host[1:].partition("]")
            port = port.removeprefix(":")
        else:
            name, _, port = host.partition(":")
        if not name or (port and not (port.isdigit() and 0 < int(port) < 65536)):
            _fail(f"{option}: not a Redis URL ({_REDIS_URLS})")
        addresses.append((name, int(port) if port else 0))
    if not addresses:
        _fail(f"{option}: not a Redis URL ({_REDIS_URLS})")
    return username, password, addresses


def _redis(option: str, url: str, timeout: float) -> Any:
    """A client for ``url``: standalone (``redis://``, ``rediss://``, ``unix://``), a cluster
    (``redis+cluster://``, several startup nodes) or sentinel-managed (``redis+sentinel://``)."""
    try:
        import redis
    except ImportError:
        _fail(f"{option}: redis-py is not installed (pip install 'scalekit-blocks[redis]')")
    scheme, separator, rest = url.partition("://")
    timeouts: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if scheme in ("redis+cluster", "rediss+cluster") and separator:
        from redis.cluster import ClusterNode, RedisCluster

        netloc = rest.partition("/")[0]
        username, password, hosts = _hosts(option, netloc)
        nodes = [ClusterNode(host, port or 6379) for host, port in hosts]  # type: ignore[no-untyped-call]
        try:
            # Connects to learn the slots: an unreachable cluster fails here.
            return RedisCluster(
                startup_nodes=nodes,
                username=username,
                password=password,
                ssl=scheme.startswith("rediss"),
                **timeouts,
            )
        except (redis.RedisError, redis.exceptions.RedisClusterException) as error:
            from scalekit.health._core import describe_error

            _fail(f"{option}: Redis Cluster unreachable ({describe_error(error)})", 2)
    if scheme in ("redis+sentinel", "rediss+sentinel") and separator:
        from redis.sentinel import Sentinel

        netloc, _, path = rest.partition("/")
        username, password, hosts = _hosts(option, netloc)
        service, _, db = path.strip("/").partition("/")
        if not service or (db and not db.isdigit()):
            _fail(f"{option}: a sentinel URL needs the service name ({_REDIS_URLS})")
        sentinel = Sentinel([(host, port or 26379) for host, port in hosts], **timeouts)  # type: ignore[no-untyped-call]
        # Lazy: the master is looked up at the first command, inside the probe.
        return sentinel.master_for(  # type: ignore[no-untyped-call]
            service,
            username=username,
            password=password,
            db=int(db or 0),
            ssl=scheme.startswith("rediss"),
            **timeouts,
        )
    try:
        return redis.Redis.from_url(url, **timeouts)
    except (ValueError, TypeError):
        _fail(f"{option}: not a Redis URL ({_REDIS_URLS})")


def _print_table(report: Any) -> None:
    colour = _STATUS_COLOURS[report.status]
    click.echo(
        f"status: {click.style(report.status, fg=colour, bold=True)}  ({report.duration_ms:.0f} ms)"
    )
    for name, component in report.components.items():
        latency = "-" if component.latency_ms is None else f"{component.latency_ms:.1f} ms"
        up = {True: "up", False: "down", None: "?"}[component.up]
        status = click.style(f"{component.status:<9}", fg=_STATUS_COLOURS[component.status])
        role = component.details.get("role") or component.kind
        click.echo(f"  {name:<22} {status} {up:<5} {role:<9} {latency:>10}")
        for reason in component.reasons:
            click.echo(f"  {'':<22} - {reason}")


@main.command()
@click.option("--primary", metavar="URL", help="Primary database URL [env: DATABASE_URL].")
@click.option(
    "--replica",
    "replicas",
    metavar="URL",
    multiple=True,
    help="Replica URL, repeatable [env: REPLICA_URLS, comma-separated].",
)
@click.option(
    "--redis",
    "redis_urls",
    metavar="URL",
    multiple=True,
    help="Redis URL, repeatable: redis://, rediss://, unix://, redis+cluster://h:p,h:p "
    "(a cluster), redis+sentinel://h:p,h:p/service[/db] (sentinel-managed) "
    "[env: REDIS_URL, comma-separated].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.0, min_open=True, max=300.0),
    default=2.0,
    show_default=True,
    help="Seconds each probe may take.",
)
@click.option(
    "--watch",
    type=click.FloatRange(min=0.0, min_open=True),
    metavar="SECONDS",
    help="Check again every SECONDS until interrupted.",
)
def health(
    primary: str | None,
    replicas: tuple[str, ...],
    redis_urls: tuple[str, ...],
    as_json: bool,
    timeout: float,
    watch: float | None,
) -> None:
    """Check databases and Redis; exit 0, 1 or 2 for ok, warn or critical.

    With replicas, the nodes form a routing pool: a replica that is down
    makes the report warn (reads fall back to the primary), the primary
    critical. Passwords never appear in the output.
    """
    from scalekit.health import check_health

    primary = primary or os.environ.get("DATABASE_URL") or None
    replica_urls = _split(replicas, "REPLICA_URLS")
    redis_list = _split(redis_urls, "REDIS_URL")
    if primary is None and replica_urls:
        _fail("--replica needs --primary (or DATABASE_URL)", 2)
    if primary is None and not redis_list:
        _fail("nothing to check: give --primary or --redis (or DATABASE_URL, REDIS_URL)", 2)

    engines: list[Any] = []
    targets: dict[str, Any] = {}
    routing = None
    if primary is not None:
        engines.append(_engine("--primary", primary, timeout))
        engines.extend(_engine("--replica", url, timeout) for url in replica_urls)
        if replica_urls:
            from scalekit.routing import RoutingPool

            routing = RoutingPool(primary=engines[0], replicas=engines[1:], check_interval=None)
            targets["pool"] = routing
        else:
            targets["engines"] = {"primary": engines[0]}
    if redis_list:
        clients = [_redis("--redis", url, timeout) for url in redis_list]
        names = (
            ["default"] if len(clients) == 1 else [f"redis{i}" for i in range(1, len(clients) + 1)]
        )
        targets["redis"] = dict(zip(names, clients, strict=True))

    exit_code = 130  # interrupted before the first report
    try:
        while True:
            report = check_health(**targets, timeout=timeout)
            if as_json:
                click.echo(json.dumps(report.to_dict(), indent=None if watch else 2))
            else:
                _print_table(report)
            for name, component in report.components.items():
                if component.up is False and component.reasons:
                    click.echo(f"scalekit: {name} is down: {component.reasons[0]}", err=True)
            exit_code = report.exit_code
            if watch is None:
                break
            time.sleep(watch)
    except KeyboardInterrupt:
        pass
    finally:
        if routing is not None:
            routing.close()
        for engine in engines:
            engine.dispose()
    sys.exit(exit_code)


# -- pool-size ----------------------------------------------------------------------------------


@main.command("pool-size")
@click.option("--max-connections", type=int, required=True, help="The server's max_connections.")
@click.option("--instances", type=int, required=True, help="Instances sharing the server.")
@click.option(
    "--reserve", type=int, default=3, show_default=True, help="Connections kept for admins."
)
@click.option(
    "--overflow", type=int, default=0, show_default=True, help="Each pool's max_overflow."
)
def pool_size(max_connections: int, instances: int, reserve: int, overflow: int) -> None:
    """The per-instance pool_size: (max_connections - reserve) // instances - overflow."""
    from scalekit.health import pool_size_for

    try:
        size = pool_size_for(
            max_connections=max_connections, instances=instances, reserve=reserve, overflow=overflow
        )
    except ConfigurationError as error:
        _fail(str(error))
    click.echo(
        f"pool_size={size} max_overflow={overflow}  "
        f"(({max_connections} - {reserve}) // {instances} - {overflow}; "
        f"{instances} instances use at most {instances * (size + overflow)} connections)"
    )


# -- cursor -------------------------------------------------------------------------------------


@main.group()
def cursor() -> None:
    """Pagination cursors."""


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return str(value)


def _inspect(token: str) -> dict[str, Any]:
    """The parts of a cursor, read without checking its signature or query fingerprint."""
    import base64

    from scalekit.pagination import _cursor as layout

    codec = layout.CursorCodec()
    if not layout._TOKEN_CHARS.fullmatch(token) or len(token) % 4 == 1:
        raise InvalidCursor("cursor is not URL-safe base64", reason="malformed")
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    if len(raw) < 2 + layout.FINGERPRINT_BYTES + 1 or raw[0] != layout.VERSION:
        raise InvalidCursor("not a version 1 cursor", reason="malformed")
    flags = raw[1]
    signed = bool(flags & layout._FLAG_SIGNED)
    body = raw[: -layout.SIGNATURE_BYTES] if signed else raw
    reader = layout._Reader(body)
    reader.pos = 2
    try:
        fingerprint = reader.take(layout.FINGERPRINT_BYTES)
        expires_at = reader.uvarint() if flags & layout._FLAG_EXPIRES else None
        count = reader.uvarint()
        if count > layout.MAX_VALUES:
            raise InvalidCursor("cursor is malformed (too many values)", reason="malformed")
        values = [layout._decode_value(reader, codec._max_length) for _ in range(count)]
    except layout._Malformed as error:
        raise InvalidCursor(f"cursor is malformed ({error})", reason="malformed") from None
    if reader.pos != len(body):
        raise InvalidCursor("cursor has trailing bytes", reason="malformed")
    return {
        "version": raw[0],
        "signed": signed,
        "inclusive": bool(flags & layout._FLAG_INCLUSIVE),
        "fingerprint": fingerprint.hex(),
        "expires_at": None
        if expires_at is None
        else dt.datetime.fromtimestamp(expires_at, tz=dt.timezone.utc).isoformat(),
        "values": [{"type": type(value).__name__, "value": _jsonable(value)} for value in values],
    }


def _signature(token: str, secret: str | None, signed: bool) -> str:
    from scalekit.pagination import CursorCodec

    if not signed:
        return "unsigned"
    if secret is None:
        return "not checked (no --secret)"
    try:
        CursorCodec(secret=secret).decode(token)
    except InvalidCursor as error:
        # Checks run structure, signature, query, expiry: past the signature it is valid.
        if error.reason in ("wrong_query", "expired"):
            return "valid"
        return "invalid"
    return "valid"


@cursor.command("decode")
@click.argument("token", metavar="CURSOR")
@click.option(
    "--secret",
    envvar="SCALEKIT_CURSOR_SECRET",
    help="The codec's secret, to check the signature [env: SCALEKIT_CURSOR_SECRET].",
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def cursor_decode(token: str, secret: str | None, as_json: bool) -> None:
    """Show what a pagination cursor holds and whether its signature is valid.

    Exit 1 for a cursor that is malformed or whose signature does not match.
    """
    try:
        parts = _inspect(token.strip())
    except InvalidCursor as error:
        _fail(f"invalid cursor: {error}")
    except Exception:  # whatever the token, one line, no traceback
        _fail("invalid cursor: cursor is malformed")
    try:
        parts["signature"] = _signature(token.strip(), secret, parts["signed"])
    except ConfigurationError as error:
        _fail(f"--secret: {error}")
    if as_json:
        click.echo(json.dumps(parts, indent=2))
    else:
        for key in ("version", "signed", "signature", "inclusive", "fingerprint", "expires_at"):
            click.echo(f"{key + ':':<13} {parts[key]}")
        click.echo("values:")
        for index, item in enumerate(parts["values"]):
            click.echo(f"  [{index}] {item['type']}: {item['value']!r}")
    if parts["signature"] == "invalid":
        _fail("the cursor's signature does not match this secret")
