"""The Redis Clusters of the container deployments, run for real with Debian's redis-server on
loopback (skipped without it): what reading the manifests cannot show.

- Kubernetes: the services' Store, given one address that stands for the chart's Service,
  finds the cluster again after all six nodes were replaced by new ones elsewhere.

Every process a test starts is stopped at its end; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None or REDIS_CLI is None, reason="redis-server and redis-cli are not installed"
)
BUS = 10_000  # a Redis Cluster node's bus port is its port + 10000


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(hosts: list[str]) -> int:
    """A port in 17000-17999 that, with its bus port, is free on every one of ``hosts``."""
    for _ in range(200):
        port = random.randrange(17000, 18000)
        if all(port_free(h, port) and port_free(h, port + BUS) for h in hosts):
            return port
    raise RuntimeError("no free port pair in 17000-17999")


def cli(host: str, port: int, *args: str, timeout: float = 5) -> str:
    assert REDIS_CLI is not None
    done = subprocess.run(
        [REDIS_CLI, "-h", host, "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.stdout


def cluster_state(host: str, port: int) -> str:
    info = cli(host, port, "cluster", "info")
    match = re.search(r"^cluster_state:(\w+)", info, flags=re.M)
    return match.group(1) if match else ""


def wait_until(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what} not reached within {within} s"
        time.sleep(0.2)


class Nodes:
    """redis-server processes started by one test; ``stop_all`` ends every one of them."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, host: str, port: int, data: Path, args: list[str]) -> subprocess.Popen[bytes]:
        assert REDIS_SERVER is not None
        data.mkdir(parents=True, exist_ok=True)
        overrides = ["--bind", host, "--port", str(port), "--dir", str(data)]
        # Several loopback addresses on one host: a node must also connect from its own
        # address, as a container does, or its peers would see it at 127.0.0.1.
        overrides += ["--bind-source-addr", host, "--daemonize", "no", "--logfile", ""]
        with (data / "redis.log").open("ab") as log:
            proc = subprocess.Popen(
                [REDIS_SERVER, *args, *overrides], stdout=log, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        wait_until(
            lambda: proc.poll() is None and cli(host, port, "ping").strip() == "PONG",
            15,
            f"redis-server on {host}:{port}",
        )
        return proc

    def stop(self, procs: list[subprocess.Popen[bytes]]) -> None:
        """SIGTERM (what `docker compose down` and a pod deletion send), then wait."""
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)

    def stop_all(self) -> None:
        self.stop(self.procs)


@pytest.fixture
def nodes() -> Iterator[Nodes]:
    started = Nodes()
    try:
        yield started
    finally:
        started.stop_all()


# --- Kubernetes: the Store finds a cluster whose nodes were all replaced ------------------------


class Forwarder:
    """A TCP address in front of whichever node ``target`` names: a Kubernetes Service, whose
    pods (and their IPs) come and go while its own address stays."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            sink.close()


CLUSTER_ARGS = [
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "3000",
    "--appendonly",
    "no",
    "--save",
    "",
]


def start_cluster(nodes: Nodes, data: Path) -> list[int]:
    """Six fresh nodes on loopback formed into a cluster (3 masters, 3 replicas): their ports."""
    ports: list[int] = []
    for _ in range(6):
        port = free_port(["127.0.0.1"])
        while port in ports:
            port = free_port(["127.0.0.1"])
        ports.append(port)
        nodes.start("127.0.0.1", port, data / str(port), CLUSTER_ARGS)
    assert REDIS_CLI is not None
    create = [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports)]
    done = subprocess.run(
        [*create, "--cluster-replicas", "1", "--cluster-yes"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    wait_until(
        lambda: all(cluster_state("127.0.0.1", p) == "ok" for p in ports), 30, "cluster_state:ok"
    )
    return ports


async def test_the_store_finds_a_cluster_whose_nodes_were_all_replaced(
    tmp_path: Path, nodes: Nodes
) -> None:
    from common.settings import load_settings
    from common.store import Store

    old = start_cluster(nodes, tmp_path / "old")
    service = Forwarder(old[0])
    await service.start()
    settings = load_settings(
        {"REDIS_NODES": f"127.0.0.1:{service.port}", "REDIS_OP_TIMEOUT_MS": "60000"}
    )
    store = Store(settings)
    await store.start()
    try:
        await store.retrying(lambda: store.cluster.set("{k}:before", "1"))
        assert {n.port for n in store.cluster.get_nodes()} <= set(old)

        # Every node replaced, as when all six pods of the chart's StatefulSet are recreated:
        # the old addresses are gone; the new nodes (a cluster of their own here: the test is
        # about finding it) answer behind the same Service address once they are up.
        nodes.stop(nodes.procs[:])
        pending = asyncio.ensure_future(store.retrying(lambda: store.cluster.set("{k}:after", "2")))
        new = await asyncio.to_thread(start_cluster, nodes, tmp_path / "new")
        service.target = new[0]
        await asyncio.wait_for(pending, 60)
        assert await store.retrying(lambda: store.cluster.get("{k}:after")) == b"2"
        assert {n.port for n in store.cluster.get_nodes()} <= set(new)
    finally:
        await store.stop()
        await service.stop()
