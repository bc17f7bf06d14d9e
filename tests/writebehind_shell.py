"""One write-behind driven through the sync or the asyncio shell, for tests of both colours."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from scalekit.batch import AsyncWriteBehind, WriteBehind, WriteBehindMetrics


class Writer:
    """Wraps a :class:`WriteBehind` (``mode="sync"``) or an :class:`AsyncWriteBehind`.

    Every method is a coroutine; in sync mode it calls the blocking shell.
    """

    def __init__(self, mode: str, engine: Any, async_engine: Any, table: Any, **options: Any):
        self.mode = mode
        if mode == "sync":
            self.sync: WriteBehind | None = WriteBehind(engine, table, **options)
            self.asyncw: AsyncWriteBehind | None = None
        else:
            self.sync = None
            self.asyncw = AsyncWriteBehind(async_engine, table, **options)

    async def put(self, row: Mapping[str, Any]) -> None:
        if self.sync is not None:
            self.sync.put(row)
        else:
            assert self.asyncw is not None
            await self.asyncw.put(row)

    async def put_many(self, rows: Iterable[Mapping[str, Any]]) -> None:
        if self.sync is not None:
            self.sync.put_many(rows)
        else:
            assert self.asyncw is not None
            await self.asyncw.put_many(rows)

    async def flush(self) -> int:
        if self.sync is not None:
            return self.sync.flush()
        assert self.asyncw is not None
        return await self.asyncw.flush()

    async def close(self) -> None:
        if self.sync is not None:
            self.sync.close()
        else:
            assert self.asyncw is not None
            await self.asyncw.aclose()

    def metrics(self) -> WriteBehindMetrics:
        inner: Any = self.sync if self.sync is not None else self.asyncw
        return inner.metrics()  # type: ignore[no-any-return]
