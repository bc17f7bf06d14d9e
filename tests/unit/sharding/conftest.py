"""Shared fixtures of the sharding unit tests: four SQLite files as shard targets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

SHARD_NAMES = ["db0", "db1", "db2", "db3"]


@pytest.fixture
def sqlite_shards(tmp_path: Path) -> Iterator[Callable[[sa.MetaData], dict[str, sa.Engine]]]:
    """A factory: four SQLite engines (``db0``..``db3``) holding ``metadata``'s tables."""
    made: list[sa.Engine] = []

    def build(metadata: sa.MetaData) -> dict[str, sa.Engine]:
        engines = {n: sa.create_engine(f"sqlite:///{tmp_path / n}.db") for n in SHARD_NAMES}
        for engine in engines.values():
            metadata.create_all(engine)
        made.extend(engines.values())
        return engines

    yield build
    for engine in made:
        engine.dispose()
