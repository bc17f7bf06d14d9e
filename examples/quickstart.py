"""scalekit in one page, on the embedded default: SQLite and fakeredis, no servers.

Run it with ``python examples/quickstart.py``. Each section is a building block;
the same code runs against PostgreSQL and Redis by swapping the engine and client.
"""

from __future__ import annotations

import logging
import sys

import scalekit
from scalekit import ConfigurationError, ScalekitError, set_hooks
from scalekit.instrumentation import FallbackUsed, LoggingHook, emit
from scalekit.testing import FakeClock, capture_events


def show_clock() -> None:
    # Every primitive takes its time from a Clock; tests pass a FakeClock and never wait.
    clock = FakeClock()
    clock.sleep(30)  # returns at once, moves time
    print(f"fake clock after a 30 s sleep: monotonic={clock.monotonic():.1f}")
    print(f"real clock: {scalekit.SYSTEM_CLOCK.monotonic():.1f}s since an arbitrary origin")


def show_errors() -> None:
    # One error tree: catch ScalekitError, or the precise subclass with its data.
    try:
        FakeClock().advance(-1)
    except ConfigurationError as exc:
        print(f"bad input -> {type(exc).__name__}({exc}); parameter={exc.parameter!r}")
        print(f"  is a ScalekitError: {isinstance(exc, ScalekitError)}, "
              f"a ValueError: {isinstance(exc, ValueError)}")


def show_hooks() -> None:
    # Events go to hooks: logging by default, Prometheus/OpenTelemetry when you add them.
    logging.basicConfig(
        stream=sys.stdout, level=logging.INFO, format="  log: %(name)s %(levelname)s %(message)s"
    )
    set_hooks([LoggingHook()])
    with capture_events() as events:
        emit(FallbackUsed(name="demo", component_name="cache", fallback="loader",
                          reason="ConnectionError"))
    print(f"captured {len(events)} event(s): {[e.kind for e in events]}")


def show_embedded_services() -> None:
    # The embedded default the module examples use: SQLite for SQL, fakeredis for Redis.
    import fakeredis
    from sqlalchemy import create_engine, text

    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE orders (id INTEGER PRIMARY KEY, amount INTEGER)"))
        conn.execute(text("INSERT INTO orders (amount) VALUES (10), (20), (30)"))
        total = conn.execute(text("SELECT sum(amount) FROM orders")).scalar_one()
    redis_client = fakeredis.FakeRedis()
    redis_client.set("orders:total", total)
    print(f"sqlite total={total}, fakeredis says {int(redis_client.get('orders:total') or 0)}")


def main() -> None:
    print(f"scalekit {scalekit.__version__}")
    show_clock()
    show_errors()
    show_hooks()
    show_embedded_services()


if __name__ == "__main__":
    main()
