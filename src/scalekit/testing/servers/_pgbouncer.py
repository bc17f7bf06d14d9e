"""PgBouncer in transaction pooling mode, in front of harness PostgreSQL servers, for tests.

One ``pgbouncer`` process on a free loopback port, its configuration, user
list and log in a temporary folder, in the foreground as a child of the test
run (in its own process group, so :meth:`PgBouncer.close` stops exactly it).
PgBouncer refuses to run as root: as root the harness runs it as the same
unprivileged user as PostgreSQL (:func:`~scalekit.testing.servers._process.service_user`).

Each database alias maps to one server (``primary``, ``replica``...):
``postgresql+psycopg://postgres@127.0.0.1:<port>/<alias>``. Authentication is
``trust`` on both sides, like the harness's servers.

Settings chosen to expose what transaction pooling breaks, rather than hide it:
``pool_mode = transaction``, a small server pool per alias and
``server_round_robin = 1``, so consecutive transactions of one client connection
land on different server connections (session state, such as a prepared
statement, a ``SET`` or a temporary table, does not follow a client).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scalekit.testing.servers._process import (
    HarnessError,
    ServiceUser,
    free_port,
    service_user,
    wait_until,
)

if TYPE_CHECKING:
    import psycopg

__all__ = ["PgBouncer", "PgBouncerTarget", "find_pgbouncer"]

_CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer")


def find_pgbouncer() -> str | None:
    """The ``pgbouncer`` binary: ``$SCALEKIT_PGBOUNCER``, on PATH, or Debian's /usr/sbin."""
    explicit = os.environ.get("SCALEKIT_PGBOUNCER")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    on_path = shutil.which("pgbouncer")
    if on_path:
        return on_path
    for candidate in _CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass(frozen=True)
class PgBouncerTarget:
    """The server behind one database alias."""

    host: str
    port: int
    dbname: str
    user: str = "postgres"

    def connstr(self) -> str:
        return f"host={self.host} port={self.port} dbname={self.dbname} user={self.user}"


_SETTINGS = """\
;; scalekit test harness
[databases]
{databases}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {root}/userlist.txt
admin_users = postgres
pool_mode = {pool_mode}
default_pool_size = {pool_size}
min_pool_size = {pool_size}
reserve_pool_size = 0
max_client_conn = 500
server_round_robin = 1
ignore_startup_parameters = extra_float_digits
logfile = {root}/pgbouncer.log
log_connections = 0
log_disconnections = 0
query_wait_timeout = 60
"""


class PgBouncer:
    """A ``pgbouncer`` process under ``root``; :meth:`close` stops it and removes the folder."""

    def __init__(
        self,
        binary: str,
        root: Path,
        databases: Mapping[str, PgBouncerTarget],
        *,
        pool_mode: str = "transaction",
        pool_size: int = 3,
        user: ServiceUser | None = None,
    ) -> None:
        if not databases:
            raise HarnessError("PgBouncer needs at least one database alias")
        self.binary = binary
        self.root = root
        self.databases = dict(databases)
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.user = user or service_user()
        self.host = "127.0.0.1"
        self.port = free_port()
        self.logfile = root / "pgbouncer.log"
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(
        cls,
        binary: str,
        root: Path,
        databases: Mapping[str, PgBouncerTarget],
        **kwargs: Any,
    ) -> PgBouncer:
        bouncer = cls(binary, root, databases, **kwargs)
        try:
            bouncer._start()
        except BaseException:
            bouncer.close()
            raise
        return bouncer

    # -- addresses ---------------------------------------------------------------------------

    def url_for(self, alias: str, driver: str = "psycopg") -> str:
        """SQLAlchemy URL of ``alias`` through PgBouncer."""
        if alias not in self.databases:
            raise HarnessError(f"no database alias {alias!r} (have {sorted(self.databases)})")
        return f"postgresql+{driver}://postgres@{self.host}:{self.port}/{alias}"

    def connect(self, alias: str, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new autocommit psycopg connection to ``alias`` (``"pgbouncer"``: the admin console)."""
        import psycopg

        kwargs.setdefault("connect_timeout", 5)
        return psycopg.connect(
            f"host={self.host} port={self.port} user=postgres dbname={alias}",
            autocommit=True,
            **kwargs,
        )

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW <what>`` on the admin console (``POOLS``, ``CONFIG``...), as dicts."""
        # The admin console speaks only the simple query protocol.
        with self.connect("pgbouncer", prepare_threshold=None) as conn:
            cursor = conn.cursor()
            cursor.execute(f"SHOW {what}".encode(), prepare=False)
            names = [column.name for column in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # -- process control ---------------------------------------------------------------------

    def _write_files(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        databases = "\n".join(
            f"{alias} = {target.connstr()}" for alias, target in self.databases.items()
        )
        ini = self.root / "pgbouncer.ini"
        ini.write_text(
            _SETTINGS.format(
                databases=databases,
                port=self.port,
                root=self.root,
                pool_mode=self.pool_mode,
                pool_size=self.pool_size,
            ),
            encoding="utf-8",
        )
        users = {target.user for target in self.databases.values()} | {"postgres"}
        (self.root / "userlist.txt").write_text(
            "".join(f'"{name}" ""\n' for name in sorted(users)), encoding="utf-8"
        )
        for path in (self.root, ini, self.root / "userlist.txt"):
            self.user.own(path)
        return ini

    def _start(self) -> None:
        ini = self._write_files()
        argv = self.user.command([self.binary, str(ini)])
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: close() signals only it
        )
        try:
            wait_until(self._accepts, timeout=30, what="pgbouncer to accept connections")
        except HarnessError as exc:
            raise HarnessError(f"{exc}\n{self.log_tail()}") from None

    def _accepts(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise HarnessError(f"pgbouncer exited with {self._process.returncode}")
        return bool(self.show("VERSION"))

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """SIGTERM (PgBouncer's immediate shutdown), then SIGKILL its group if it lingers."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def close(self) -> None:
        """Stop PgBouncer and delete its folder."""
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PgBouncer {self.pool_mode} port={self.port} aliases={sorted(self.databases)}>"
