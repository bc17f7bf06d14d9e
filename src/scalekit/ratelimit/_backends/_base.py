"""What the limiters expect of a store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from scalekit.ratelimit._core import Outcome

__all__ = ["AsyncBackend", "StoreUnavailable", "SyncBackend"]

Params = Sequence[tuple[float, float, float]]


class StoreUnavailable(Exception):
    """The store could not be reached (internal; limiters turn it into a fallback).

    ``reason`` is the class name of the underlying error (never its message,
    which could hold a host name or password); the error is ``__cause__``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SyncBackend(Protocol):
    """A blocking store: Redis through redis-py, or memory."""

    def evaluate(
        self,
        algorithm: str,
        keys: Sequence[str],
        params: Params,
        cost: float,
        *,
        consume_denied: bool,
        write: bool,
        now: float | None = None,
    ) -> Outcome:
        """Run one check of ``algorithm`` against every key at once; returns the raw outcome.

        Raises:
            StoreUnavailable: the store is unreachable.

        ``now`` (microseconds) replaces the store's clock: for tests only.
        """

    def delete(self, keys: Sequence[str]) -> None:
        """Delete the state under ``keys`` (``reset``)."""

    def acquire(
        self, key: str, limit: int, lease: float, lease_id: str, *, now: float | None = None
    ) -> tuple[bool, int, float]:
        """Try to take one of ``limit`` slots of ``key``: ``(granted, in_flight, retry_after)``.

        Raises:
            StoreUnavailable: the store is unreachable.

        Expired leases are dropped first; ``lease`` and ``retry_after`` are in microseconds.
        """

    def renew(self, key: str, lease: float, lease_id: str) -> bool:
        """Extend a live lease by ``lease`` microseconds; False if it expired or was released."""

    def release(self, key: str, lease_id: str) -> bool:
        """Remove a lease; False if it was not there (expired, or released already)."""


class AsyncBackend(Protocol):
    """The asyncio twin of :class:`SyncBackend`."""

    async def evaluate(
        self,
        algorithm: str,
        keys: Sequence[str],
        params: Params,
        cost: float,
        *,
        consume_denied: bool,
        write: bool,
        now: float | None = None,
    ) -> Outcome:
        """Run one check of ``algorithm`` against every key at once; returns the raw outcome.

        Raises:
            StoreUnavailable: the store is unreachable.

        ``now`` (microseconds) replaces the store's clock: for tests only.
        """

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete the state under ``keys`` (``reset``)."""

    async def acquire(
        self, key: str, limit: int, lease: float, lease_id: str, *, now: float | None = None
    ) -> tuple[bool, int, float]:
        """Try to take one of ``limit`` slots of ``key``: ``(granted, in_flight, retry_after)``.

        Raises:
            StoreUnavailable: the store is unreachable.

        Expired leases are dropped first; ``lease`` and ``retry_after`` are in microseconds.
        """

    async def renew(self, key: str, lease: float, lease_id: str) -> bool:
        """Extend a live lease by ``lease`` microseconds; False if it expired or was released."""

    async def release(self, key: str, lease_id: str) -> bool:
        """Remove a lease; False if it was not there (expired, or released already)."""
