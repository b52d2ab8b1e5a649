"""Workers started as the containers start them, with the settings the deployments give them.

For docker-compose.yml and then for k8s/, one worker of each service is started by the image's
entrypoint (env/service/entrypoint.sh, running the real hypercorn) with exactly the environment
that deployment gives its containers, except the addresses: the names of the broker, the Redis
nodes and the stock service are pointed at this stack's broker and Redis Clusters and at the
stock worker started here. Every other value (timeouts, partitions, WAIT, log settings...)
stays as deployed, so a setting that keeps a worker from starting, joining its groups or
completing a checkout fails this check. (Settings that act only when something fails, such as
SAGA_DEADLINE_MS, are held to the code's defaults by test/deploy instead.) The workers join the
stack's own consumer groups beside its workers; each of them must serve a request, and
checkouts sent to the order worker must be paid with the right effects until every one of them
has handled saga messages. They are stopped with SIGTERM, as compose and Kubernetes stop them,
and must leave their groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from test.client import Api, free_port
from test.conftest import Stack
from test.deploy.environments import (
    REPO,
    FromCluster,
    compose_service_env,
    k8s_objects,
    k8s_service_env,
    load_compose,
    load_k8s,
)
from test.system.ops import warm_up

ENTRYPOINT = REPO / "env" / "service" / "entrypoint.sh"
SERVICES = ("stock", "payment", "order")  # stock first: order's STOCK_URL names it
DEPLOYED_PORT = 8000  # every service's port in both deployments (test/deploy checks it)
READY_S = 90
# compose's stop_grace_period (80 s) and the pods' terminationGracePeriodSeconds (90 s) bound a
# worker's graceful stop; one holding no request stops in a second or two.
STOP_S = 60
# Each checkout's messages go to one partition of 16 (its order id's), held by one member of
# each group: this many checkouts leave a worker that holds a third of them without a message
# with a probability of about (2/3)^24, 6e-5.
MAX_CHECKOUTS = 24
# Each service's consumer that is a member of its group, and the group.
GROUP_CONSUMER = {
    "stock": ("stock", "stock"),
    "payment": ("payment", "payment"),
    "order": ("orchestrator", "order"),
}

# The settings that hold addresses: comma-separated host:port lists, and URLs.
NODE_LISTS = {
    "KAFKA_BOOTSTRAP_SERVERS",
    "REDIS_NODES",
    "ORDER_REDIS_NODES",
    "STOCK_REDIS_NODES",
    "PAYMENT_REDIS_NODES",
}
URLS = {"STOCK_URL"}


@dataclass(frozen=True)
class Here:
    """The stack's addresses and the ports of the workers started here."""

    broker: str
    redis: Mapping[str, list[str]]  # service -> its cluster's six nodes, host:port
    ports: Mapping[str, int]  # service -> the port its worker started here listens on


def compose_addresses(here: Here) -> dict[str, str]:
    """docker-compose.yml's addresses (its services' names) and what stands for each here."""
    names = {"kafka:9092": here.broker}
    for service in SERVICES:
        names[f"{service}:{DEPLOYED_PORT}"] = f"127.0.0.1:{here.ports[service]}"
        for k, node in enumerate(here.redis[service]):
            names[f"{service}-redis-{k}:6379"] = node
    deployed = set(load_compose()["services"])
    assert {name.partition(":")[0] for name in names} <= deployed
    return names


def k8s_addresses(here: Here) -> dict[str, str]:
    """k8s/'s addresses (its Services' names, and the client Service of each Redis chart
    release of run_minikube.sh) and what stands for each here. That Service forwards to any of
    the six nodes: one node stands for it, from which the client finds the others."""
    names = {"kafka:9092": here.broker}
    for service in SERVICES:
        names[f"{service}:{DEPLOYED_PORT}"] = f"127.0.0.1:{here.ports[service]}"
        names[f"{service}-redis-cluster:6379"] = here.redis[service][0]
    deployed = set(k8s_objects(load_k8s(), "Service")) | {
        f"{service}-redis-cluster" for service in SERVICES
    }
    assert {name.partition(":")[0] for name in names} <= deployed
    return names


def deployed_env(deployment: str, service: str) -> Mapping[str, str | FromCluster]:
    if deployment == "compose":
        return compose_service_env(load_compose(), service)
    return k8s_service_env(load_k8s(), service)


def from_cluster(value: FromCluster, service: str) -> str:
    """What the cluster gives a pod for a ``valueFrom``."""
    if value.source == "fieldRef:metadata.name":
        return f"{service}-{uuid.uuid4().hex[:10]}-{uuid.uuid4().hex[:5]}"  # a pod's name
    if value.source == "secretKeyRef:redis-auth/redis-password":
        return ""  # run_minikube.sh makes the Secret; the local stack's Redis has no password
    raise AssertionError(f"{service}: what does the cluster give for {value.source}?")


def readdress(name: str, value: str, addresses: Mapping[str, str]) -> str:
    """``value`` with the deployment's addresses replaced by this stack's; one the deployment
    gets wrong (a name or port it does not run) fails here."""

    def moved(address: str) -> str:
        assert address in addresses, f"{name}={value}: the deployment runs nothing at {address}"
        return addresses[address]

    if name in NODE_LISTS:
        return ",".join(moved(part.strip()) for part in value.split(",") if part.strip())
    if name in URLS:
        url = urlsplit(value)
        return urlunsplit(url._replace(netloc=moved(url.netloc)))
    return value


def worker_env(deployment: str, service: str, here: Here, bin_dir: Path) -> dict[str, str]:
    """The image's environment (Dockerfile's ENV, paths moved to this checkout), then what the
    deployment gives the service with its addresses moved here, and PORT."""
    addresses = compose_addresses(here) if deployment == "compose" else k8s_addresses(here)
    env = {
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "SERVICE_NAME": "",
    }
    for name, value in deployed_env(deployment, service).items():
        text = from_cluster(value, service) if isinstance(value, FromCluster) else value
        env[name] = readdress(name, text, addresses)
    env["PORT"] = str(here.ports[service])
    return env


class Worker:
    """One worker started by the entrypoint; its output goes to a log file."""

    def __init__(self, service: str, port: int, log: Path) -> None:
        self.service = service
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, env: Mapping[str, str], cwd: Path) -> None:
        with self.log.open("wb") as out:
            # Run as the image's ENTRYPOINT runs it: the file itself (#!/bin/sh).
            self.process = await asyncio.create_subprocess_exec(
                str(ENTRYPOINT), env=dict(env), cwd=cwd, stdout=out, stderr=out
            )

    async def ready(self, session: aiohttp.ClientSession) -> bool:
        assert self.process is not None
        assert self.process.returncode is None, f"{self.service} exited:\n{self.tail()}"
        try:
            async with session.get(f"{self.url}/ready") as reply:
                return reply.status == 200
        except aiohttp.ClientError:
            return False

    async def stop(self) -> int | None:
        """SIGTERM, as compose and Kubernetes stop a container; its exit status, or None if it
        had to be killed."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_S)
            except TimeoutError:
                process.kill()
                await process.wait()
                return None
        return process.returncode

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@contextlib.asynccontextmanager
async def started(deployment: str, here: Here, tmp_path: Path) -> AsyncIterator[dict[str, Worker]]:
    """The three workers, started; stopped (SIGTERM) on the way out whatever happened."""
    workers = {
        service: Worker(service, here.ports[service], tmp_path / f"{service}.log")
        for service in SERVICES
    }
    try:
        for service, worker in workers.items():
            # compose sets no WORKER_ID: the entrypoint takes the container's hostname, its id.
            bin_dir = tmp_path / service / "bin"
            bin_dir.mkdir(parents=True)
            hostname = bin_dir / "hostname"
            hostname.write_text(f"#!/bin/sh\necho {uuid.uuid4().hex[:12]}\n", encoding="utf-8")
            hostname.chmod(0o755)
            await worker.start(worker_env(deployment, service, here, bin_dir), tmp_path)
        yield workers
    finally:
        await asyncio.gather(*(worker.stop() for worker in workers.values()))


async def wait_ready(session: aiohttp.ClientSession, workers: Mapping[str, Worker]) -> None:
    """Until every worker answers /ready (each consumer in its group, holding its partitions)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + READY_S
    while not all([await worker.ready(session) for worker in workers.values()]):
        if loop.time() > end:
            logs = "\n".join(f"--- {s}\n{w.tail()}" for s, w in workers.items())
            raise AssertionError(f"not ready in {READY_S} s:\n{logs}")
        await asyncio.sleep(0.2)


async def handled(session: aiohttp.ClientSession, worker: Worker, consumer: str) -> float:
    """Messages the worker's consumer ``consumer`` has handled (its /metrics)."""
    async with session.get(f"{worker.url}/metrics") as reply:
        assert reply.status == 200
        text = await reply.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "bus_messages_handled"
        for sample in family.samples
        if sample.labels.get("consumer") == consumer
    )


@pytest.mark.parametrize("deployment", ["compose", "k8s"])
async def test_workers_with_the_deployments_settings_serve_a_checkout(
    deployment: str, stack: Stack, api: Api, tmp_path: Path
) -> None:
    stack_env = stack.env()
    here = Here(
        broker=stack_env["KAFKA_BOOTSTRAP_SERVERS"],
        redis={s: stack_env[f"{s.upper()}_REDIS_NODES"].split(",") for s in SERVICES},
        ports={s: free_port() for s in SERVICES},
    )
    timeout = aiohttp.ClientTimeout(total=90)
    async with (
        started(deployment, here, tmp_path) as workers,
        aiohttp.ClientSession(timeout=timeout) as session,
    ):
        await wait_ready(session, workers)
        stock, payment, order = (Api(workers[s].url) for s in SERVICES)
        async with stock, payment, order:
            # Requests to each worker itself (paths without the gateway's prefix).
            item = (await stock.ok("POST", "/item/create/3"))["item_id"]
            await stock.ok("POST", f"/add/{item}/100")
            user = (await payment.ok("POST", "/create_user"))["user_id"]
            await payment.ok("POST", f"/add_funds/{user}/500")
            # Checkouts through the order worker until each worker's group consumer has
            # handled saga messages (the first already must be paid).
            units, counts = 0, [0.0]
            for attempt in range(MAX_CHECKOUTS):
                order_id = (await order.ok("POST", f"/create/{user}"))["order_id"]
                # addItem reads the price from STOCK_URL: the stock worker started here.
                await order.ok("POST", f"/addItem/{order_id}/{item}/2")
                reply = await order.post(f"/checkout/{order_id}")
                assert reply.status == 200, (attempt, reply)
                assert (await order.ok("GET", f"/find/{order_id}"))["paid"] is True
                units += 2
                counts = [
                    await handled(session, workers[s], GROUP_CONSUMER[s][0]) for s in SERVICES
                ]
                if all(counts):
                    break
            assert all(counts), f"handled nothing: {dict(zip(SERVICES, counts, strict=True))}"
            assert (await stock.ok("GET", f"/find/{item}"))["stock"] == 100 - units
            assert (await payment.ok("GET", f"/find_user/{user}"))["credit"] == 500 - 3 * units
        # The stack's own workers read the same state.
        assert (await api.stock(item), await api.credit(user)) == (100 - units, 500 - 3 * units)
        statuses = {s: await w.stop() for s, w in workers.items()}

    assert statuses == dict.fromkeys(SERVICES, 0), {s: w.tail() for s, w in workers.items()}
    # Each left its group on the way out (the deployments log at INFO) instead of leaving its
    # partitions idle for a session timeout; the stack's own workers take them all back.
    for service, (consumer, group) in GROUP_CONSUMER.items():
        log = workers[service].log.read_text(encoding="utf-8", errors="replace")
        assert f"{consumer}: left group {group}" in log, workers[service].tail()
    await warm_up(api)
