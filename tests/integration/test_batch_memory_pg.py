"""A generator of 5,000,000 rows loads into PostgreSQL with flat memory (peak RSS measured).

Each load runs in a fresh interpreter and reads its own peak RSS (``VmHWM``): the peak
after loading 5,000,000 rows must stay within a few MB of the peak after
200,000 rows (holding the rows would take hundreds of MB).
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = """
import sys
import sqlalchemy as sa
from scalekit.batch import batch_insert

def high_water_kib():
    # VmHWM is reset by exec; ru_maxrss is not (it would report pytest's peak).
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

url, count, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
metadata = sa.MetaData()
table = sa.Table(name, metadata,
                 sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
                 sa.Column("v", sa.Integer))
engine = sa.create_engine(url)
metadata.create_all(engine)
before = high_water_kib()
result = batch_insert(engine, table, ((i, i % 1024) for i in range(count)),
                      transaction="per_chunk")
peak = high_water_kib()
with engine.connect() as connection:
    stored = connection.execute(sa.text(f"SELECT count(*), sum(id) FROM {name}")).one()
metadata.drop_all(engine)
print(before, peak, result.inserted, result.method, stored[0], stored[1])
"""


def peak_rss_kib(pg_url: str, count: int) -> tuple[int, int]:
    name = f"batch_mem_{uuid.uuid4().hex[:8]}"
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, pg_url, str(count), name],
        check=True,
        capture_output=True,
        text=True,
        timeout=240,
    ).stdout.split()
    before, peak, inserted, method, stored, total = out
    assert method == "copy"
    assert int(inserted) == int(stored) == count
    assert int(total) == count * (count - 1) // 2  # every id, once
    return int(before), int(peak)


def test_five_million_rows_with_flat_memory(pg_url: str) -> None:
    small_before, small_peak = peak_rss_kib(pg_url, 200_000)
    big_before, big_peak = peak_rss_kib(pg_url, 5_000_000)
    growth_small = small_peak - small_before
    growth_big = big_peak - big_before
    print(f"\n[batch memory] before/peak KiB: {small_before}/{small_peak}, {big_before}/{big_peak}")
    print(f"[batch memory] peak RSS growth: 200k rows {growth_small / 1024:.1f} MiB, "
          f"5M rows {growth_big / 1024:.1f} MiB")  # fmt: skip
    assert growth_big - growth_small < 16 * 1024  # KiB: flat, whatever the input size
    assert growth_big < 64 * 1024
