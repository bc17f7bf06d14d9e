"""Routing overhead: a read/write through RoutingPool vs plain SQLAlchemy on the same engines.

Default: the machine's PostgreSQL (``--url``), where the "replica" is a
second engine on the same server, which measures exactly what
routing adds to a query (node choice, statement classification, events) over
the same engine doing the same work. ``--cluster`` instead starts a private
primary + 1 streaming replica with the test harness (PostgreSQL binaries on
the machine or the pgserver wheel), so read-your-writes runs against real
replay positions, and also reports the failover time (primary stopped → first
successful write after promoting the replica) and the failed reads while a
replica is killed under load.

Cases (a primary-key SELECT on a 1,000-row table; ORM session per call):
  direct replica engine      Session(bind=replica).get(...)           the baseline
  direct via sessionmaker    sessionmaker(replica)().get(...)         built like the routed one
  pristine engine            Session(bind=<engine without the pool's listeners>).get(...)
  routed read                RoutingPool session .get(...) (a replica)
  direct core read           replica.connect() + execute(select)      core baseline
  routed core read           pool.connect(readonly=True) + execute(select)
  routing decision only      get_bind() for a select in a fresh transaction, no I/O
  insert+read direct         insert on primary, then read on primary (what RYW costs at best)
  insert+read-your-write     insert through the pool, then read through the pool

Run:  python benchmarks/bench_routing.py [--url URL] [--cluster] [--n 400]
It creates and drops a scratch database ``scalekit_bench_routing_<pid>`` (not with --cluster).

``--before SRC`` (a checkout folder or a git rev such as ``main``) starts a
primary + 1 streaming replica with the test harness and runs the issue-20
cases of this checkout and of SRC in one run, interleaved, best of
``--rounds``: a wrapped engine used directly vs a pristine engine (target
<= 1.02x), a routed read (and its decision) holding a token the replica
has replayed vs one with no token (target <= 1.05x), and a Core read through
``pool.connect(readonly=True)``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _bench import (
    SERVE_FLAG,
    Result,
    before_after_table,
    compare_with_before,
    print_table,
    serve_cases,
)

from scalekit.routing import RoutingPool

DIRECT = "direct replica engine (ORM get)"
MAKER = "direct via sessionmaker (ORM get)"
PRISTINE = "pristine engine, no pool events (ORM get)"


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "bench_routing_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int]


ROUNDS: list[dict[str, list[float]]] = []  # every round's samples, for the ranges


def interleaved_us(
    cases: dict[str, Callable[[], Any]], n: int, rounds: int = 7
) -> dict[str, float]:
    """Median-over-``rounds`` microseconds per call of each case, the cases taking turns.

    Taking turns within each round spreads the machine's noise evenly over the
    cases, so their ratios are fairer than timing each case in one block. The
    samples are kept in ``ROUNDS`` so that best-of and ranges can be printed too.
    """
    for fn in cases.values():
        for _ in range(min(n, 50)):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            started = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - started) / n * 1e6)
    ROUNDS.append(samples)
    return {name: sorted(values)[len(values) // 2] for name, values in samples.items()}


def print_ratios(pairs: list[tuple[str, str, str]]) -> None:
    """Per pair: the median ratio, the ratio of the bests, and the range over rounds.

    A round's ratio divides the two cases' times of that round (they ran back to
    back), so the range shows how much the machine's noise moves the figure.
    """
    samples = {name: values for group in ROUNDS for name, values in group.items()}
    print(f"\n{'ratio':<44} {'median':>8} {'best/best':>10} {'range over rounds':>20}")
    for label, case, base in pairs:
        a, b = samples[case], samples[base]
        per_round = sorted(x / y for x, y in zip(a, b, strict=True))
        median = sorted(a)[len(a) // 2] / sorted(b)[len(b) // 2]
        best = min(a) / min(b)
        spread = f"{per_round[0]:.3f}-{per_round[-1]:.3f}x"
        print(f"{label:<44} {median:>7.3f}x {best:>9.3f}x {spread:>20}")


@contextmanager
def scratch_database(url: str) -> Iterator[str]:
    name = f"scalekit_bench_routing_{os.getpid()}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def run(primary_url: str, replica_url: str, n: int, wait_replica: Callable[[], None]) -> None:
    primary = sa.create_engine(primary_url)
    replica = sa.create_engine(replica_url)
    # The same server as ``replica`` through an engine the pool never saw (no listeners):
    # what the pool's engine events cost every user of the wrapped engines.
    pristine = sa.create_engine(replica_url)
    with primary.begin() as conn:
        Base.metadata.drop_all(conn)
        Base.metadata.create_all(conn)
        conn.execute(sa.insert(Account), [{"id": i, "balance": i} for i in range(1000)])
    wait_replica()
    same_server = primary_url == replica_url
    # On one server the "replica" is not in recovery: skip role checks (they would see two
    # primaries and refuse writes, which is right for a real deployment but not a benchmark).
    pool = RoutingPool(
        primary=primary,
        replicas=[replica],
        check_interval=None if same_server else 1.0,
        consistency="time" if same_server else "auto",
        sticky_seconds=0.0 if same_server else 2.0,
    )
    Routed = pool.sessionmaker()
    counter = iter(range(10**9))
    by_id = sa.select(Account.balance).where(Account.id == 7)

    def direct_read() -> None:
        with Session(replica) as session:
            session.get(Account, next(counter) % 1000)

    Direct = sessionmaker(replica)

    def direct_sessionmaker_read() -> None:
        with Direct() as session:
            session.get(Account, next(counter) % 1000)

    def pristine_read() -> None:
        with Session(pristine) as session:
            session.get(Account, next(counter) % 1000)

    def routed_read() -> None:
        with Routed() as session:
            session.get(Account, next(counter) % 1000)

    def direct_core() -> None:
        with replica.connect() as conn:
            conn.execute(by_id).scalar()

    def routed_core() -> None:
        with pool.connect(readonly=True) as conn:
            conn.execute(by_id).scalar()

    decision_session = Routed()

    def decision() -> None:
        # A fresh transaction's decision (not the replica the session already holds).
        decision_session._sk_reset()
        decision_session.get_bind(clause=by_id)

    next_id = iter(range(10_000, 10**9))

    def insert_read_direct() -> None:
        row_id = next(next_id)
        with Session(primary) as session:
            session.add(Account(id=row_id, balance=1))
            session.commit()
        with Session(primary) as session:
            assert session.get(Account, row_id) is not None

    ryw_nodes: dict[str, int] = {}

    def insert_read_routed() -> None:
        row_id = next(next_id)
        with Routed() as session:
            session.add(Account(id=row_id, balance=1))
            session.commit()
        with Routed() as session:
            assert session.get(Account, row_id) is not None
            node = session.get_bind(clause=by_id)
            name = "primary" if node is primary else "replica"
            ryw_nodes[name] = ryw_nodes.get(name, 0) + 1

    reads = interleaved_us(
        {
            "direct replica engine (ORM get)": direct_read,
            "routed read (ORM get)": routed_read,
            "direct via sessionmaker (ORM get)": direct_sessionmaker_read,
            "pristine engine, no pool events (ORM get)": pristine_read,
            "direct core read": direct_core,
            "routed core read": routed_core,
        },
        n,
    )
    writes = interleaved_us(
        {
            "insert+read direct (primary)": insert_read_direct,
            "insert+read-your-write routed": insert_read_routed,
        },
        max(n // 4, 10),
    )
    # The decision in a fresh context (the write cases above left a token in this one).
    pool.reset_context()
    decision_us = interleaved_us({"routing decision only (get_bind)": decision}, n * 10)
    decision_samples = ROUNDS[-1]["routing decision only (get_bind)"]
    timings = {**reads, **decision_us, **writes}
    results = [Result(name, us * 1000) for name, us in timings.items()]
    decision_session.close()
    where = "same server (second engine)" if same_server else "real streaming replica"
    print_table(
        f"RoutingPool vs plain SQLAlchemy; replica: {where}; mode {pool.router.mode}",
        results,
        baseline="direct replica engine (ORM get)",
        peer="direct core read",
    )
    by_name = {r.name: r.ns_per_call for r in results}
    print(
        f"\nrouted ORM read / direct:  {by_name['routed read (ORM get)'] / by_name['direct replica engine (ORM get)']:.3f}x"  # noqa: E501
        f"\nrouted core read / direct: {by_name['routed core read'] / by_name['direct core read']:.3f}x"  # noqa: E501
        f"\nrouting decision / loopback core query: "
        f"{by_name['routing decision only (get_bind)'] / by_name['direct core read']:.1%}"
        f"\nread-your-write reads served by: {ryw_nodes}"
    )
    print_ratios(
        [
            ("routed ORM get / direct ORM get", "routed read (ORM get)", DIRECT),
            ("routed ORM get / direct sessionmaker get", "routed read (ORM get)", MAKER),
            ("direct ORM get / pristine engine get", DIRECT, PRISTINE),
            ("routed core read / direct core read", "routed core read", "direct core read"),
        ]
    )
    print(
        f"routing decision: median {decision_us['routing decision only (get_bind)']:.2f} us, "
        f"best {min(decision_samples):.2f} us"
    )
    pool.close()
    primary.dispose()
    replica.dispose()
    pristine.dispose()


def failover_figures(cluster: Any) -> None:
    """Kill the replica under reads, then stop the primary and promote the replica."""
    primary_node, replica_node = cluster.primary, cluster.replicas[0]
    primary = primary_node.engine()
    replica = replica_node.engine()
    pool = RoutingPool(
        primary=primary, replicas=[replica], blacklist_seconds=0.5, role_check_interval=0.1
    )
    Routed = pool.sessionmaker()
    failed_reads = 0
    for index in range(1000):
        if index == 300:
            replica_node.kill()
        try:
            with Routed() as session:
                session.get(Account, index % 1000)
        except Exception:
            failed_reads += 1
    print(f"\nreplica SIGKILLed during 1,000 reads: {failed_reads} failed reads")
    replica_node.start()
    cluster.wait_for_replicas()
    time.sleep(1.0)
    primary_node.stop()
    stopped = time.monotonic()
    errors = 0
    promoted = False
    row_id = 5_000_000
    while True:
        try:
            with Routed() as session:
                session.add(Account(id=row_id, balance=0))
                session.commit()
            break
        except Exception:
            errors += 1
        if not promoted:
            replica_node.promote()
            promoted = True
        time.sleep(0.01)
    print(
        f"failover: first successful write {time.monotonic() - stopped:.2f}s after the primary "
        f"stopped (promotion included); {errors} failed write(s) before it"
    )
    pool.close()
    primary.dispose()
    replica.dispose()


def issue20_cases(primary_url: str, replica_url: str) -> dict[str, Callable[[int], float]]:
    """The issue-20 cases, each timing ``n`` calls in its own context (for --before workers)."""
    import contextvars

    from scalekit.routing import ConsistencyToken

    primary = sa.create_engine(primary_url)
    replica = sa.create_engine(replica_url)
    pristine = sa.create_engine(replica_url)
    pool = RoutingPool(primary=primary, replicas=[replica], check_interval=None)
    pool.refresh()  # the replica's replayed position is known
    reached = pool.router.core.snapshot()["replica1"].replay_lsn
    assert reached is not None
    Routed = pool.sessionmaker()
    counter = iter(range(10**9))
    by_id = sa.select(Account.balance).where(Account.id == 7)

    def get(factory: Callable[[], Session]) -> Callable[[], None]:
        def read() -> None:
            with factory() as session:
                session.get(Account, next(counter) % 1000)

        return read

    decision_session = Routed()

    def decision() -> None:
        decision_session._sk_reset()  # type: ignore[attr-defined]
        decision_session.get_bind(clause=by_id)

    def core_read() -> None:
        with pool.connect(readonly=True) as conn:
            conn.execute(by_id).scalar()

    clean = contextvars.copy_context()
    holding = contextvars.copy_context()
    holding.run(pool.import_token, ConsistencyToken(lsn=reached, written_at=time.time()))
    plain: dict[str, tuple[contextvars.Context, Callable[[], None]]] = {
        "pristine engine (ORM get)": (clean, get(lambda: Session(pristine))),
        "wrapped engine used directly (ORM get)": (clean, get(lambda: Session(replica))),
        "routed read, no token (ORM get)": (clean, get(Routed)),
        "routed read, token reached (ORM get)": (holding, get(Routed)),
        "routing decision, no token (get_bind)": (clean, decision),
        "routing decision, token reached (get_bind)": (holding, decision),
        "routed core read (connect(readonly=True))": (clean, core_read),
    }

    def timed(context: contextvars.Context, fn: Callable[[], None]) -> Callable[[int], float]:
        def loop(n: int) -> float:
            for _ in range(min(n, 20)):
                fn()
            started = time.perf_counter_ns()
            for _ in range(n):
                fn()
            return (time.perf_counter_ns() - started) / n

        return lambda n: context.run(loop, n)

    return {name: timed(context, fn) for name, (context, fn) in plain.items()}


def run_before_after(args: argparse.Namespace) -> None:
    from tests.harness import PgCluster, find_pg_binaries

    binaries = find_pg_binaries()
    if binaries is None:
        sys.exit("no PostgreSQL binaries found for --before")
    with tempfile.TemporaryDirectory(prefix="bench-routing-") as folder:
        root = Path(folder)
        root.chmod(0o711)
        with PgCluster.start(root / "pg", binaries, replicas=1) as cluster:
            engine = sa.create_engine(cluster.primary.url)
            with engine.begin() as conn:
                Base.metadata.drop_all(conn)
                Base.metadata.create_all(conn)
                conn.execute(sa.insert(Account), [{"id": i, "balance": i} for i in range(1000)])
            engine.dispose()
            cluster.wait_for_replicas()
            argv = ["--primary-url", cluster.primary.url, "--replica-url", cluster.replicas[0].url]
            best = compare_with_before(args.before, __file__, argv, args.n, args.rounds)
    before_after_table(
        f"routing, before ({args.before}) / after, real streaming replica, best of "
        f"{args.rounds} x {args.n} calls",
        best,
        baseline="pristine engine (ORM get)",
    )
    print(f"\n{'ratio (target)':<58} {'before':>8} {'after':>8}")
    for label, case, base in (
        (
            "wrapped engine direct / pristine (<= 1.02x)",
            "wrapped engine used directly (ORM get)",
            "pristine engine (ORM get)",
        ),
        (
            "routed read token reached / no token (<= 1.05x)",
            "routed read, token reached (ORM get)",
            "routed read, no token (ORM get)",
        ),
        (
            "decision token reached / no token",
            "routing decision, token reached (get_bind)",
            "routing decision, no token (get_bind)",
        ),
    ):
        b, a = best["before"], best["after"]
        print(f"{label:<58} {b[case] / b[base]:>7.3f}x {a[case] / a[base]:>7.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--cluster", action="store_true", help="start primary + 1 replica")
    parser.add_argument("--n", type=int, default=400, help="calls per case per round")
    parser.add_argument("--rounds", type=int, default=9, help="--before: rounds (best of)")
    parser.add_argument("--before", help="an older checkout folder or git rev to compare with")
    parser.add_argument("--primary-url", help=argparse.SUPPRESS)
    parser.add_argument("--replica-url", help=argparse.SUPPRESS)
    parser.add_argument(SERVE_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_cases:
        serve_cases(issue20_cases(args.primary_url, args.replica_url))
        return
    if args.before:
        run_before_after(args)
        return
    if args.cluster:
        from tests.harness import PgCluster, find_pg_binaries

        binaries = find_pg_binaries()
        if binaries is None:
            sys.exit("no PostgreSQL binaries found for --cluster")
        with tempfile.TemporaryDirectory(prefix="bench-routing-") as folder:
            root = Path(folder)
            root.chmod(0o711)
            with PgCluster.start(root / "pg", binaries, replicas=1) as cluster:
                run(cluster.primary.url, cluster.replicas[0].url, args.n, cluster.wait_for_replicas)
                failover_figures(cluster)
        return
    with scratch_database(args.url) as url:
        run(url, url, args.n, lambda: None)


if __name__ == "__main__":
    main()
