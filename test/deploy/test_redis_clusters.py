"""The Redis Clusters of the container deployments, run for real with Debian's redis-server on
loopback (skipped without it): what reading the manifests cannot show.

- docker compose: the six nodes of a cluster, started with the compose settings, formed by
  env/redis/cluster-create.sh, stopped (`docker compose down`) and started again on new
  addresses (`up` gives new containers new IPs) form the same cluster again, data included.
  Loopback addresses 127.0.<generation>.<k> stand for the containers' IPs, and a stand-in for
  Docker's DNS (getent and redis-cli wrappers on PATH) resolves the service names.
- Kubernetes: the services' Store, given one address that stands for the chart's Service,
  finds the cluster again after all six nodes were replaced by new ones elsewhere.

Every process a test starts is stopped at its end; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

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


def cluster_formed(host: str, port: int, size: int = 6) -> bool:
    """cluster_state:ok, and linked to ``size`` nodes none of which is flagged failing: a node
    restarted with its peers at addresses they no longer have says ok until it notices."""
    if cluster_state(host, port) != "ok":
        return False
    lines = [line.split() for line in cli(host, port, "cluster", "nodes").splitlines()]
    linked = [f for f in lines if len(f) > 7 and f[7] == "connected" and "fail" not in f[2]]
    return len(linked) == size


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


# --- docker compose: a cluster formed again after down + up -------------------------------------


def compose_file() -> dict[str, Any]:
    with (REPO / "docker-compose.yml").open(encoding="utf-8") as f:
        doc: dict[str, Any] = yaml.safe_load(f)
    return doc


def node_args(compose: dict[str, Any], service: str, data: Path) -> list[str]:
    """The node's redis-server arguments in compose, its config file copied from the repo with
    the volume's mount point (`dir /data`) moved to ``data``."""
    spec = compose["services"][service]
    command = list(spec["command"])
    assert command[0] == "redis-server"
    data.mkdir(parents=True, exist_ok=True)
    for config in spec.get("configs", []):
        source = REPO / compose["configs"][config["source"]]["file"]
        text = source.read_text(encoding="utf-8")
        assert f"{spec['volumes'][0].split(':')[1]}" == "/data"
        assert re.search(r"^dir /data$", text, flags=re.M)
        copy = data.parent / f"{service}.conf"
        copy.write_text(re.sub(r"^dir /data$", f"dir {data}", text, flags=re.M), "utf-8")
        command = [str(copy) if arg == config["target"] else arg for arg in command]
    return command[1:]


def dns_stand_in(bin_dir: Path, hosts_file: Path) -> dict[str, str]:
    """getent and redis-cli on PATH that resolve the names in ``hosts_file`` (JSON name -> IP),
    as Docker's DNS resolves service names to the containers' current addresses."""
    bin_dir.mkdir(exist_ok=True)
    getent = f"""#!{sys.executable}
import json, sys
hosts = json.load(open({str(hosts_file)!r}))
if sys.argv[1:2] == ["hosts"] and sys.argv[2] in hosts:
    print(hosts[sys.argv[2]], sys.argv[2])
    sys.exit(0)
sys.exit(2)
"""
    redis_cli = f"""#!{sys.executable}
import json, os, sys
hosts = json.load(open({str(hosts_file)!r}))
args = sys.argv[1:]
for i, arg in enumerate(args[:-1]):
    if arg == "-h":
        args[i + 1] = hosts.get(args[i + 1], args[i + 1])
os.execv({REDIS_CLI!r}, [{REDIS_CLI!r}, *args])
"""
    for name, text in (("getent", getent), ("redis-cli", redis_cli)):
        (bin_dir / name).write_text(text, encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


def run_cluster_create(
    compose: dict[str, Any], init: str, port: int, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """env/redis/cluster-create.sh as the one-shot `<service>-redis-init` runs it (its
    environment from docker-compose.yml, the nodes' port moved to ``port``)."""
    spec = compose["services"][init]
    assert spec["entrypoint"] == ["sh", "/scripts/cluster-create.sh"]
    assert "./env/redis/cluster-create.sh:/scripts/cluster-create.sh:ro" in spec["volumes"]
    environment = {k: str(v).replace(":6379", f":{port}") for k, v in spec["environment"].items()}
    return subprocess.run(
        ["sh", str(REPO / "env" / "redis" / "cluster-create.sh")],
        env={**env, **environment},
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )


def test_compose_redis_cluster_forms_again_after_down_and_up(tmp_path: Path, nodes: Nodes) -> None:
    compose = compose_file()
    names = [f"order-redis-{k}" for k in range(6)]
    generations = {g: [f"127.0.{g}.{k + 1}" for k in range(6)] for g in (1, 2)}
    port = free_port(generations[1] + generations[2])
    hosts_file = tmp_path / "hosts.json"
    env = dns_stand_in(tmp_path / "bin", hosts_file)

    def up(generation: int) -> list[subprocess.Popen[bytes]]:
        """Start the six containers: new addresses, the same named volumes."""
        addresses = generations[generation]
        hosts_file.write_text(json.dumps(dict(zip(names, addresses, strict=True))), "utf-8")
        started = []
        for name, ip in zip(names, addresses, strict=True):
            volume = tmp_path / "volumes" / name
            started.append(nodes.start(ip, port, volume, node_args(compose, name, volume)))
        return started

    def slots_endpoints(ip: str) -> set[str]:
        out = cli(ip, port, "cluster", "slots").split()
        return {out[i] for i in range(len(out) - 1) if out[i + 1] == str(port)}

    first = up(1)
    created = run_cluster_create(compose, "order-redis-init", port, env)
    assert created.returncode == 0, created.stdout + created.stderr
    for ip in generations[1]:
        assert cluster_formed(ip, port), ip
    # Clients are sent the service names, which the network resolves to the current addresses.
    wait_until(lambda: slots_endpoints(generations[1][0]) == set(names), 20, "every node named")
    written = write_one_key_per_master(generations[1], port)

    def formed_again(generation: int) -> None:
        reformed = run_cluster_create(compose, "order-redis-init", port, env)
        assert reformed.returncode == 0, reformed.stdout + reformed.stderr
        for ip in generations[generation]:
            assert cluster_formed(ip, port), ip
            info = cli(ip, port, "cluster", "info")
            assert re.search(r"^cluster_known_nodes:6\r?$", info, flags=re.M), ip  # none added

        def every_node_named() -> bool:
            return slots_endpoints(generations[generation][0]) == set(names)

        wait_until(every_node_named, 20, "every node named")
        assert read_keys(generations[generation], port, written) == written
        assert read_by_name(names, generations[generation], port, list(written)) == written

    nodes.stop(first)  # docker compose down (named volumes kept)
    second = up(2)  # docker compose up: every container at a new address
    formed_again(2)
    nodes.stop(second)  # and a plain restart: the same addresses
    up(2)
    formed_again(2)


def served_slots(ip: str, port: int) -> list[tuple[int, int]]:
    """The slot ranges the node at ``ip`` serves as a master (none for a replica)."""
    myself = next(
        line for line in cli(ip, port, "cluster", "nodes").splitlines() if "myself" in line
    )
    if "master" not in myself.split()[2]:
        return []
    ranges = []
    for part in myself.split()[8:]:
        low, _, high = part.partition("-")
        if low.isdigit():
            ranges.append((int(low), int(high or low)))
    return ranges


def owner(addresses: list[str], port: int, key: str) -> str:
    slot = key_slot(key.encode())
    (ip,) = [
        ip for ip in addresses if any(low <= slot <= high for low, high in served_slots(ip, port))
    ]
    return ip


def write_one_key_per_master(addresses: list[str], port: int) -> dict[str, str]:
    """A key on each of the three masters, written where it lives and replicated (WAIT)."""
    written: dict[str, str] = {}
    for i in range(1000):
        key = f"key-{i}"
        ip = owner(addresses, port, key)
        if ip not in written.values():
            assert cli(ip, port, "set", key, ip).strip() == "OK"
            assert cli(ip, port, "wait", "1", "2000").strip() == "1"
            written[key] = ip
        if len(written) == 3:
            return written
    raise AssertionError("no key found for every master")


def read_keys(addresses: list[str], port: int, keys: dict[str, str]) -> dict[str, str]:
    """Each key read from whichever node now serves it (a replica may have been promoted)."""
    return {key: cli(owner(addresses, port, key), port, "get", key).strip() for key in keys}


def _text(value: Any) -> str:
    assert isinstance(value, bytes), value
    return value.decode()


def read_by_name(
    names: list[str], addresses: list[str], port: int, keys: list[str]
) -> dict[str, Any]:
    """The keys read through redis-py's cluster client, as the services read them: it is sent
    node names (CLUSTER SLOTS, MOVED) and resolves them (here through ``address_remap``, in
    compose through Docker's DNS)."""
    from redis.cluster import ClusterNode, RedisCluster

    resolve = dict(zip(names, addresses, strict=True))
    seen: set[str] = set()

    def remap(address: tuple[str, int]) -> tuple[str, int]:
        seen.add(address[0])
        return resolve.get(address[0], address[0]), address[1]

    client = RedisCluster(
        startup_nodes=[ClusterNode(addresses[0], port)],  # type: ignore[no-untyped-call]
        address_remap=remap,
        dynamic_startup_nodes=False,
        socket_timeout=5,
    )
    try:
        values = {key: _text(client.get(key)) for key in keys}
    finally:
        client.close()
    assert seen <= set(names) and len(seen) >= 3  # the endpoints it was given are node names
    return values


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
