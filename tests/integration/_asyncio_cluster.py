"""What the asyncio Redis Cluster tests share."""

from __future__ import annotations

import gc
import warnings


def collect_dropped_connections() -> None:
    """Collect the connections redis-py's asyncio ``RedisCluster`` dropped unclosed.

    When a command times out or is cancelled, the asyncio cluster client drops
    that node's connection without closing it: a ``ResourceWarning`` when it is
    collected, an error under warnings-as-errors in whichever later test the
    collector happens to run. Call this inside the test's own event loop,
    after closing scalekit's objects (which close their bounded twins): what
    is left is redis-py's, not scalekit's.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
