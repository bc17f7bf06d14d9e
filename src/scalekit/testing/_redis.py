"""Fake Redis clients (fakeredis, Lua enabled) that fail on demand.

``fake_redis()`` and ``fake_async_redis()`` return fakeredis clients whose
connections first consult a :class:`RedisFaults`: while it has failures
queued, each round trip (one command, or one pipeline) raises the next one
instead of reaching the fake server, as a stopped, slow or read-only Redis
would. The clients run Lua (``EVAL``/``EVALSHA``), so the rate limiter, the
shared breaker and the retry budget work on them as on a real server.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any, Literal

from scalekit.errors import ConfigurationError

if TYPE_CHECKING:
    import fakeredis

__all__ = ["FaultKind", "RedisFaults", "fake_async_redis", "fake_redis", "faults_of"]

FaultKind = Literal["stopped", "timeout", "readonly"]
_KINDS: tuple[str, ...] = ("stopped", "timeout", "readonly")
_INSTALL = "pip install 'fakeredis[lua]'"


class RedisFaults:
    """Failures for a fake Redis to raise, in order, one per round trip.

    >>> faults = RedisFaults()
    >>> faults.fail("timeout", calls=2)   # the next two round trips time out
    >>> faults.pending
    2

    The kinds, as redis-py reports them from a real server:

    - ``"stopped"``: :class:`redis.exceptions.ConnectionError` (connection refused);
    - ``"timeout"``: :class:`redis.exceptions.TimeoutError` (no reply in time);
    - ``"readonly"``: :class:`redis.exceptions.ReadOnlyError` (a replica, e.g.
      after a failover, refusing a write).

    :meth:`stop` makes every round trip fail until :meth:`start`. Thread-safe.
    :attr:`raised` lists the kinds raised so far.
    """

    __slots__ = ("_lock", "_queue", "_stopped", "raised")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[str] = deque()
        self._stopped = False
        self.raised: list[str] = []

    def fail(self, kind: FaultKind = "stopped", *, calls: int = 1) -> None:
        """Make the next ``calls`` round trips fail with ``kind`` (after those already queued).

        Raises:
            ConfigurationError: an unknown ``kind`` or ``calls`` below 1.
        """
        if kind not in _KINDS:
            raise ConfigurationError(
                f"kind must be one of {', '.join(_KINDS)}, got {kind!r}", parameter="kind"
            )
        if type(calls) is not int or calls < 1:
            raise ConfigurationError(f"calls must be an int >= 1, got {calls!r}", parameter="calls")
        with self._lock:
            self._queue.extend([kind] * calls)

    def stop(self) -> None:
        """Refuse every round trip (``"stopped"``) until :meth:`start`."""
        self._stopped = True

    def start(self) -> None:
        """End :meth:`stop`; queued failures stay queued."""
        self._stopped = False

    def clear(self) -> None:
        """Drop the queued failures and end :meth:`stop`."""
        with self._lock:
            self._queue.clear()
            self._stopped = False

    @property
    def pending(self) -> int:
        """How many queued failures are left."""
        return len(self._queue)

    def _next_error(self) -> Exception | None:
        with self._lock:
            if self._stopped:
                kind = "stopped"
            elif self._queue:
                kind = self._queue.popleft()
            else:
                return None
            self.raised.append(kind)
        from redis import exceptions

        if kind == "stopped":
            return exceptions.ConnectionError(
                "Error 111 connecting to fake Redis. Connection refused (scalekit.testing fault)."
            )
        if kind == "timeout":
            return exceptions.TimeoutError("Timeout reading from socket (scalekit.testing fault)")
        return exceptions.ReadOnlyError(
            "You can't write against a read only replica. (scalekit.testing fault)"
        )

    def __repr__(self) -> str:
        state = " stopped" if self._stopped else ""
        return f"<RedisFaults pending={self.pending}{state} raised={len(self.raised)}>"


def _fakeredis() -> Any:
    import importlib.util

    try:
        import fakeredis
    except ImportError as exc:
        raise ConfigurationError(
            f"the fake Redis clients need fakeredis with Lua: {_INSTALL}"
        ) from exc
    if importlib.util.find_spec("lupa") is None:  # fakeredis runs Lua through lupa
        raise ConfigurationError(f"the fake Redis clients need Lua (lupa): {_INSTALL}")
    return fakeredis


def _sync_connection_class(faults: RedisFaults) -> type[Any]:
    module = _fakeredis()
    # FakeRedisConnection since fakeredis 2.2x; FakeConnection before.
    base: Any = getattr(module, "FakeRedisConnection", None) or module.FakeConnection

    def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
        error = faults._next_error()
        if error is not None:
            raise error
        base.send_packed_command(self, command, check_health)

    return type(
        "FaultyFakeRedisConnection",
        (base,),
        {"send_packed_command": send_packed_command, "scalekit_faults": faults},
    )


def _async_connection_class(faults: RedisFaults) -> type[Any]:
    module = _fakeredis()
    base: Any = getattr(module, "FakeAsyncRedisConnection", None)
    if base is None:
        import importlib

        base = importlib.import_module("fakeredis.aioredis").FakeConnection

    async def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
        error = faults._next_error()
        if error is not None:
            raise error
        await base.send_packed_command(self, command, check_health)

    return type(
        "FaultyFakeAsyncRedisConnection",
        (base,),
        {"send_packed_command": send_packed_command, "scalekit_faults": faults},
    )


def fake_redis(
    *, server: Any = None, faults: RedisFaults | None = None, **kwargs: Any
) -> fakeredis.FakeRedis:
    """A ``fakeredis.FakeRedis`` (Lua enabled) that raises ``faults`` when told to.

    ``server`` (a ``fakeredis.FakeServer``) shares data between clients, sync
    and asyncio alike; a new one by default. Other keyword arguments go to
    ``FakeRedis`` (``decode_responses=True``...).

    Raises:
        ConfigurationError: fakeredis or lupa is not installed.
    """
    module = _fakeredis()
    faults = faults if faults is not None else RedisFaults()
    client: fakeredis.FakeRedis = module.FakeRedis(
        server=server if server is not None else module.FakeServer(),
        connection_class=_sync_connection_class(faults),
        **kwargs,
    )
    return client


def fake_async_redis(
    *, server: Any = None, faults: RedisFaults | None = None, **kwargs: Any
) -> fakeredis.FakeAsyncRedis:
    """A ``fakeredis.FakeAsyncRedis`` (Lua enabled) that raises ``faults`` when told to.

    Same arguments as :func:`fake_redis`; pass the same ``server`` and
    ``faults`` to both for a sync and an asyncio client of one fake Redis.

    Raises:
        ConfigurationError: fakeredis or lupa is not installed.
    """
    module = _fakeredis()
    faults = faults if faults is not None else RedisFaults()
    client: fakeredis.FakeAsyncRedis = module.FakeAsyncRedis(
        server=server if server is not None else module.FakeServer(),
        connection_class=_async_connection_class(faults),
        **kwargs,
    )
    return client


def faults_of(client: Any) -> RedisFaults:
    """The :class:`RedisFaults` of a client made by :func:`fake_redis` or :func:`fake_async_redis`.

    Raises:
        ConfigurationError: ``client`` was not made by them.
    """
    pool = getattr(client, "connection_pool", None)
    faults = getattr(getattr(pool, "connection_class", None), "scalekit_faults", None)
    if not isinstance(faults, RedisFaults):
        raise ConfigurationError(
            "not a client made by scalekit.testing.fake_redis()/fake_async_redis()",
            parameter="client",
        )
    return faults
