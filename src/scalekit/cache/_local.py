"""The local tier: a bounded in-process cache in front of Redis.

Entries are decoded values with their envelope, kept in a cachetools
``LRUCache`` (bounded by ``maxsize``) and expired by a TTL that is capped at
``ttl`` seconds whatever the Redis entry says, so a lost invalidation message
cannot keep stale data for longer than that. Other processes' writes and
invalidations reach it as messages (see ``Cache``); losing the connection
that carries them flushes it (under the ``stale_local`` policy the entries are
only marked expired, so that they can still be served while Redis is down).
"""

from __future__ import annotations

import threading
from typing import Any

from scalekit.cache._core import Envelope
from scalekit.errors import ConfigurationError

__all__ = ["LocalCache"]


class LocalCache:
    """A bounded, thread-safe, TTL-capped in-process tier.

    ``maxsize`` bounds the number of entries (least recently used go first);
    ``ttl`` caps how long an entry is served from this process without
    asking Redis. Give one instance to one cache.

    >>> local = LocalCache(maxsize=10_000, ttl=5.0)

    Raises:
        ConfigurationError: ``maxsize`` < 1 or ``ttl`` <= 0.
    """

    __slots__ = ("_data", "_lock", "maxsize", "ttl")

    def __init__(self, maxsize: int = 10_000, ttl: float = 5.0) -> None:
        from cachetools import LRUCache

        given: tuple[object, object] = (maxsize, ttl)
        if not isinstance(given[0], int) or maxsize < 1:
            raise ConfigurationError("maxsize must be an int >= 1", parameter="maxsize")
        if not isinstance(given[1], int | float) or not ttl > 0:
            raise ConfigurationError("ttl must be a number > 0", parameter="ttl")
        self.maxsize = maxsize
        self.ttl = float(ttl)
        self._lock = threading.Lock()
        self._data: LRUCache[str, tuple[float, Envelope, Any]] = LRUCache(maxsize=maxsize)

    def get(
        self, key: str, now: float, *, allow_expired: bool = False
    ) -> tuple[Envelope, Any] | None:
        """The entry of ``key`` unless past its local TTL (any entry, with ``allow_expired``)."""
        with self._lock:
            item = self._data.get(key)
        if item is None:
            return None
        expires, envelope, value = item
        if now >= expires and not allow_expired:
            return None
        return envelope, value

    def put(self, key: str, envelope: Envelope, value: Any, now: float) -> None:
        """Keep ``value`` until the earlier of the entry's hard expiry and ``now + ttl``."""
        expires = min(envelope.hard_expiry, now + self.ttl)
        with self._lock:
            self._data[key] = (expires, envelope, value)

    def discard(self, key: str) -> None:
        """Forget ``key``."""
        with self._lock:
            self._data.pop(key, None)

    def discard_tag(self, tag: str) -> int:
        """Forget every entry carrying ``tag``; returns how many."""
        with self._lock:
            doomed = [
                k for k, (_, env, _) in self._data.items() if any(t == tag for t, _ in env.tags)
            ]
            for key in doomed:
                del self._data[key]
        return len(doomed)

    def expire_all(self) -> None:
        """Mark every entry expired but keep it, for ``allow_expired`` reads only.

        Used when the invalidation channel is lost under the ``stale_local``
        policy: the entries can no longer be trusted as fresh, but may still be
        served while Redis is down.
        """
        with self._lock:
            for key, (_, envelope, value) in list(self._data.items()):
                self._data[key] = (float("-inf"), envelope, value)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"LocalCache(maxsize={self.maxsize}, ttl={self.ttl})"
