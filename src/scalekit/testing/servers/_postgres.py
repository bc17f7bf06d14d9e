"""A PostgreSQL primary with streaming replicas, in a temporary folder, for tests.

The primary is made with ``initdb`` and each replica with ``pg_basebackup -R``
(a physical replication slot per replica), all on free loopback ports with
trust authentication. Each server runs in its own process group (pg_ctl
detaches it), so ``kill()`` and ``pause()`` reach exactly the processes this
harness started and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scalekit.testing.servers._process import (
    HarnessError,
    PgBinaries,
    ServiceUser,
    free_port,
    make_traversable,
    service_user,
    wait_until,
)

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy import Engine

__all__ = ["PgCluster", "PgNode"]

_SERVER_SETTINGS = """
# scalekit test harness
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
max_connections = 200
shared_buffers = 32MB
fsync = off
full_page_writes = off
wal_level = replica
max_wal_senders = 16
max_replication_slots = 16
wal_keep_size = 128MB
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s
wal_retrieve_retry_interval = 200ms
max_standby_streaming_delay = 30s
log_min_messages = warning
log_line_prefix = '%m [%p] '
"""


class PgNode:
    """One PostgreSQL server of a :class:`PgCluster` (the primary or a replica)."""

    def __init__(self, cluster: PgCluster, name: str, port: int, role: str) -> None:
        self.cluster = cluster
        self.name = name
        self.port = port
        self.role = role  # "primary" or "replica"; a promoted replica stays named as it was
        self.datadir = cluster.root / name
        self.logfile = cluster.root / "logs" / f"{name}.log"
        self.host = "127.0.0.1"
        self.user = "postgres"
        self.dbname = "postgres"

    # -- addresses ---------------------------------------------------------------------------

    def url_for(self, dbname: str | None = None, driver: str = "psycopg") -> str:
        return f"postgresql+{driver}://{self.user}@{self.host}:{self.port}/{dbname or self.dbname}"

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3, sync)."""
        return self.url_for()

    @property
    def async_url(self) -> str:
        """SQLAlchemy URL for ``create_async_engine`` (psycopg 3 runs async too)."""
        return self.url_for()

    @property
    def dsn(self) -> str:
        """libpq connection string."""
        return f"host={self.host} port={self.port} user={self.user} dbname={self.dbname}"

    def engine(self, dbname: str | None = None, **kwargs: Any) -> Engine:
        """A new SQLAlchemy Engine on this node (the caller disposes of it)."""
        from sqlalchemy import create_engine

        return create_engine(self.url_for(dbname), **kwargs)

    def connect(self, dbname: str | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new autocommit psycopg connection."""
        import psycopg

        kwargs.setdefault("connect_timeout", 5)
        return psycopg.connect(
            f"host={self.host} port={self.port} user={self.user} dbname={dbname or self.dbname}",
            autocommit=True,
            **kwargs,
        )

    def scalar(self, sql: str, params: tuple[Any, ...] = (), dbname: str | None = None) -> Any:
        with self.connect(dbname) as conn:
            row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type, unused-ignore]
            return None if row is None else row[0]

    def execute(self, sql: str, params: tuple[Any, ...] = (), dbname: str | None = None) -> None:
        with self.connect(dbname) as conn:
            conn.execute(sql, params)  # type: ignore[arg-type, unused-ignore]

    # -- process control ---------------------------------------------------------------------

    def _pg_ctl(self, *args: str, timeout: float = 90) -> None:
        user = self.cluster.user
        argv = user.command([self.cluster.binaries.tool("pg_ctl"), "-D", str(self.datadir), *args])
        # In a folder the service user may enter (the caller's may be a private one).
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.cluster.root,
        )
        if result.returncode != 0:
            raise HarnessError(
                f"pg_ctl {' '.join(args)} failed for {self.name}: {result.stderr.strip()}\n"
                f"{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def pid(self) -> int | None:
        """The postmaster's PID, if this node is running."""
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    @property
    def running(self) -> bool:
        return self.pid() is not None

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._pg_ctl("-l", str(self.logfile), "-w", "-t", "60", "-s", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop cleanly (``fast``: disconnect clients, checkpoint) or ``immediate``."""
        if self.running:
            self._pg_ctl("-m", mode, "-w", "-t", "60", "-s", "stop")

    def kill(self) -> None:
        """SIGKILL the postmaster and all its backends (a crash), then wait until they are gone."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        wait_until(lambda: not _group_alive(pid), timeout=30, what=f"{self.name} to die")

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the whole server (SIGSTOP): connections hang instead of failing."""
        pid = self.pid()
        if pid is None:
            raise HarnessError(f"{self.name} is not running")
        os.killpg(pid, signal.SIGSTOP)

    def resume(self) -> None:
        pid = self.pid()
        if pid is not None:
            os.killpg(pid, signal.SIGCONT)

    # -- replication -------------------------------------------------------------------------

    def is_in_recovery(self) -> bool:
        return bool(self.scalar("SELECT pg_is_in_recovery()"))

    def current_lsn(self) -> str:
        """The primary's WAL flush position: every committed transaction is at or before it.

        (Not the insert position: WAL inserted but not yet flushed, such as a
        standby snapshot record, is not streamed until the next flush, so a
        replica may not reach the insert position for many seconds.)
        """
        return str(self.scalar("SELECT pg_current_wal_flush_lsn()"))

    def replay_lsn(self) -> str | None:
        """The last WAL position this replica has replayed."""
        value = self.scalar("SELECT pg_last_wal_replay_lsn()")
        return None if value is None else str(value)

    def lag_bytes(self, primary_lsn: str) -> int:
        """How many bytes of WAL behind ``primary_lsn`` this replica's replay is."""
        return int(
            self.scalar("SELECT pg_wal_lsn_diff(%s, pg_last_wal_replay_lsn())", (primary_lsn,))
        )

    def lag_seconds(self) -> float | None:
        """Seconds since the last replayed transaction committed on the primary."""
        value = self.scalar(
            "SELECT EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8"
        )
        return None if value is None else float(value)

    def pause_replay(self) -> None:
        """Stop applying WAL (it still arrives): the replica falls behind on purpose."""
        self.execute("SELECT pg_wal_replay_pause()")
        wait_until(
            lambda: self.scalar("SELECT pg_get_wal_replay_pause_state()") == "paused",
            timeout=10,
            what=f"{self.name} replay to pause",
        )

    def resume_replay(self) -> None:
        self.execute("SELECT pg_wal_replay_resume()")

    def promote(self) -> None:
        """Turn this replica into a primary (``pg_promote``) and wait until it accepts writes."""
        if not self.scalar("SELECT pg_promote(true, 60)"):
            raise HarnessError(f"{self.name} did not promote\n{self.log_tail()}")
        wait_until(lambda: not self.is_in_recovery(), timeout=30, what=f"{self.name} to promote")
        self.role = "primary"

    def __repr__(self) -> str:
        return f"<PgNode {self.name} {self.role} port={self.port}>"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PgCluster:
    """A primary and ``replicas`` streaming replicas under ``root``; :meth:`close` removes all."""

    def __init__(self, root: Path, binaries: PgBinaries, user: ServiceUser | None = None) -> None:
        self.root = root
        self.binaries = binaries
        self.user = user or service_user()
        self.primary: PgNode | None = None
        self.replicas: list[PgNode] = []
        self._install_binaries()

    @classmethod
    def start(cls, root: Path, binaries: PgBinaries, replicas: int = 2) -> PgCluster:
        root.mkdir(parents=True, exist_ok=True)
        make_traversable(root)
        cluster = cls(root, binaries)
        try:
            cluster._init_primary()
            for _ in range(replicas):
                cluster.add_replica()
            cluster.wait_for_replicas()
        except BaseException:
            cluster.close()
            raise
        return cluster

    @property
    def nodes(self) -> list[PgNode]:
        assert self.primary is not None
        return [self.primary, *self.replicas]

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg) of the primary's ``postgres`` database."""
        assert self.primary is not None
        return self.primary.url

    @property
    def replica_urls(self) -> list[str]:
        """SQLAlchemy URLs of the replicas, in order."""
        return [replica.url for replica in self.replicas]

    def engine(self, **kwargs: Any) -> Engine:
        """A new SQLAlchemy engine on the primary (``kwargs`` go to ``create_engine``)."""
        assert self.primary is not None
        return self.primary.engine(**kwargs)

    def replica_engines(self, **kwargs: Any) -> list[Engine]:
        """A new SQLAlchemy engine on each replica, in order."""
        return [replica.engine(**kwargs) for replica in self.replicas]

    def _install_binaries(self) -> None:
        # A wheel's binaries may sit under a home folder the service user cannot enter
        # (/root is 0700): copy that install tree into our folder once.
        postgres = self.binaries.bindir / "postgres"
        if self.user.can_run(postgres):
            return
        install = self.binaries.bindir.parent
        target = self.root / "pginstall"
        if not target.exists():
            shutil.copytree(install, target, symlinks=True)
        self.binaries = PgBinaries(target / "bin", self.binaries.source + " (copied)")

    def _own_dir(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        self.user.own(path)
        return path

    def _write_settings(self, node: PgNode) -> None:
        with open(node.datadir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(_SERVER_SETTINGS.format(port=node.port, socket_dir=self.root / "sockets"))

    def _init_primary(self) -> None:
        self._own_dir(self.root / "logs")
        self._own_dir(self.root / "sockets")
        node = PgNode(self, "primary", free_port(), "primary")
        self._own_dir(node.datadir)
        argv = [
            self.binaries.tool("initdb"),
            "-D",
            str(node.datadir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]
        result = subprocess.run(
            self.user.command(argv),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            cwd=self.root,
        )
        if result.returncode != 0:
            raise HarnessError(f"initdb failed: {result.stderr.strip()}")
        self._write_settings(node)
        node.start()
        self.primary = node

    def add_replica(self) -> PgNode:
        """Clone the primary with ``pg_basebackup -R`` and start it streaming."""
        assert self.primary is not None
        index = len(self.replicas) + 1
        while (self.root / f"replica{index}").exists():
            index += 1
        node = PgNode(self, f"replica{index}", free_port(), "replica")
        self._own_dir(node.datadir)
        node.datadir.chmod(0o700)
        argv = [
            self.binaries.tool("pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.primary.port),
            "-U",
            "postgres",
            "-D",
            str(node.datadir),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
            "-C",
            "-S",
            f"slot_{node.name}_{os.getpid()}",
        ]
        result = subprocess.run(
            self.user.command(argv),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            cwd=self.root,
        )
        if result.returncode != 0:
            raise HarnessError(f"pg_basebackup failed: {result.stderr.strip()}")
        self._write_settings(node)
        node.start()
        self.replicas.append(node)
        return node

    def wait_for_replicas(
        self, timeout: float = 30, nodes: list[PgNode] | None = None, *, flush: bool = False
    ) -> None:
        """Wait until each replica (running, in recovery) has replayed the primary's current LSN.

        ``flush=True`` first commits a transaction with an xid on the primary, so
        every WAL record inserted so far (another backend's standby snapshot, say)
        is flushed and streamed: a read-your-writes token, which may point past
        such a record, is then reached by the wait.
        """
        assert self.primary is not None
        if flush:
            self.primary.execute(
                "SELECT set_config('synchronous_commit', 'on', true), pg_current_xact_id()"
            )
        target = self.primary.current_lsn()
        for replica in nodes if nodes is not None else self.replicas:
            wait_until(
                lambda r=replica: r.lag_bytes(target) <= 0,  # type: ignore[misc]
                timeout=timeout,
                what=f"{replica.name} to replay {target}",
            )

    def close(self) -> None:
        """Stop every server (immediately) and delete the folder."""
        for node in [self.primary, *self.replicas]:
            if node is None:
                continue
            with contextlib.suppress(Exception):
                node.resume()
            with contextlib.suppress(Exception):
                node.stop("immediate")
            with contextlib.suppress(Exception):
                node.kill()
        # Give the folder back to us, then remove it.
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
