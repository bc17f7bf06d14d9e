"""Cache events. They carry the cache's namespace and numbers, never keys or values
(keys often hold user data such as e-mail addresses)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from scalekit.instrumentation import Event

__all__ = [
    "CacheDecodeFailed",
    "CacheLeaseWait",
    "CacheLoaded",
    "CacheRefreshFailed",
    "CacheStaleServed",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheLoaded(Event):
    """A loader ran and its result was stored.

    ``reason`` is ``"miss"``, ``"early"`` (XFetch volunteered) or ``"stale"``
    (stale-while-revalidate refresh); ``seconds`` the loader's run time.
    """

    kind: ClassVar[str] = "cache.loaded"
    level: ClassVar[int] = logging.DEBUG

    reason: str
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheStaleServed(Event):
    """A stale value was returned while a refresh runs (or is run by another process)."""

    kind: ClassVar[str] = "cache.stale_served"
    level: ClassVar[int] = logging.DEBUG

    age: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheLeaseWait(Event):
    """A caller waited for another process's loader (the lease holder).

    ``outcome`` is ``"filled"`` (the value arrived), ``"acquired"`` (the lease
    was freed and taken) or ``"timeout"`` (waited ``lease_wait`` and loaded).
    """

    kind: ClassVar[str] = "cache.lease_wait"
    level: ClassVar[int] = logging.DEBUG

    seconds: float
    outcome: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheDecodeFailed(Event):
    """A stored entry could not be read (other serialiser, corruption, bad signature).

    It was treated as a miss. ``reason`` is the error class and a short text.
    """

    kind: ClassVar[str] = "cache.decode_failed"
    level: ClassVar[int] = logging.WARNING

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheRefreshFailed(Event):
    """A background or early refresh's loader raised; the old value stays served."""

    kind: ClassVar[str] = "cache.refresh_failed"
    level: ClassVar[int] = logging.WARNING

    reason: str
