"""Redis servers for tests: standalone nodes and a 3-master Redis Cluster.

Each node is a ``redis-server`` child process of the test run, on a free
loopback port, keeping nothing on disk. ``stop()``, ``kill()`` and ``pause()``
signal only that child.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scalekit.testing.servers._process import HarnessError, RedisBinaries, free_port, wait_until

if TYPE_CHECKING:
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.cluster

__all__ = ["RedisClusterHarness", "RedisNode"]


class RedisNode:
    """One ``redis-server`` process on 127.0.0.1."""

    def __init__(
        self, binaries: RedisBinaries, root: Path, *, cluster: bool = False, name: str = "redis"
    ) -> None:
        self.binaries = binaries
        self.host = "127.0.0.1"
        # A cluster node also listens on port + 10000 (the cluster bus).
        self.port = free_port(also_free=(lambda p: p + 10000) if cluster else None)
        self.name = f"{name}-{self.port}"
        self.cluster_enabled = cluster
        self.dir = root / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logfile = self.dir / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def _argv(self) -> list[str]:
        argv = [
            self.binaries.server,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.logfile),
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ]
        if self.cluster_enabled:
            argv += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(self.dir / "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
            ]
        return argv

    def start(self) -> None:
        """Start (or restart, on the same port) and wait until it answers PING."""
        if self.running:
            return
        self._process = subprocess.Popen(
            self._argv(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_until(self.ping, timeout=20, what=f"{self.name} to answer PING")
        except HarnessError as exc:
            tail = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
            self.kill()
            raise HarnessError(f"{exc}\n{tail}") from None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process else None

    def ping(self) -> bool:
        import redis

        client = redis.Redis(self.host, self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM and wait: a clean shutdown (the data is lost; nothing is persisted)."""
        if self._process is None:
            return
        self.resume()
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=20)
        self._process = None

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=20)
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the server stays up but answers nothing (connections time out)."""
        if not self.running or self._process is None:
            raise HarnessError(f"{self.name} is not running")
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)

    def client(self, **kwargs: Any) -> redis.Redis:
        import redis

        return redis.Redis(self.host, self.port, **kwargs)

    def async_client(self, **kwargs: Any) -> redis.asyncio.Redis:
        import redis.asyncio

        return redis.asyncio.Redis(host=self.host, port=self.port, **kwargs)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<RedisNode {self.name} running={self.running}>"


class RedisClusterHarness:
    """Three masters with 16384 slots split between them, no replicas."""

    def __init__(self, binaries: RedisBinaries, root: Path, masters: int = 3) -> None:
        self.binaries = binaries
        self.root = root
        self.nodes = [
            RedisNode(binaries, root, cluster=True, name=f"cluster{i}") for i in range(masters)
        ]

    @classmethod
    def start(cls, binaries: RedisBinaries, root: Path, masters: int = 3) -> RedisClusterHarness:
        cluster = cls(binaries, root, masters)
        try:
            for node in cluster.nodes:
                node.start()
            cluster._create()
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _create(self) -> None:
        argv = [
            self.binaries.cli,
            "--cluster",
            "create",
            *[f"{n.host}:{n.port}" for n in self.nodes],
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise HarnessError(
                f"redis-cli --cluster create failed: {result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 30) -> None:
        """Wait until every running node reports ``cluster_state:ok`` and sees every master."""

        def healthy() -> bool:
            for node in self.nodes:
                if not node.running:
                    continue
                client: Any = node.client(socket_timeout=1, decode_responses=True)
                try:
                    info = client.execute_command("CLUSTER", "INFO")
                    text = info if isinstance(info, str) else str(info)
                    if "cluster_state:ok" not in text:
                        return False
                    known = client.execute_command("CLUSTER", "NODES")
                    lines = known if isinstance(known, str) else str(known)
                    if lines.count("master") < len(self.nodes):
                        return False
                finally:
                    client.close()
            return True

        wait_until(healthy, timeout=timeout, interval=0.1, what="the Redis Cluster to be ok")

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [n.address for n in self.nodes]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        from redis.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode(h, p) for h, p in self.startup_nodes]  # type: ignore[no-untyped-call, unused-ignore]
        return RedisCluster(startup_nodes=nodes, **kwargs)

    def async_client(self, **kwargs: Any) -> redis.asyncio.cluster.RedisCluster:
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode(h, p) for h, p in self.startup_nodes]
        return RedisCluster(startup_nodes=nodes, **kwargs)

    def node_for_key(self, key: str | bytes) -> RedisNode:
        """The node that owns ``key``'s slot, asked of the servers (not computed here)."""
        probe: Any = self.nodes[0].client(decode_responses=True)
        try:
            slot = int(probe.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in probe.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        finally:
            probe.close()
        raise HarnessError(f"no node owns the slot of {key!r}")

    def flushall(self) -> None:
        for node in self.nodes:
            if node.running:
                with contextlib.closing(node.client()) as client:
                    client.flushall()

    def close(self) -> None:
        for node in self.nodes:
            node.close()
