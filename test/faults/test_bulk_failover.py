"""batch_init through a Redis failover that erases some of its writes: it never answers 200 for
writes no replica holds (a barrier on the masters of the moment, not on those that took the
writes, once vouched for exactly the lost ones), and run again it resets every entity."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

from redis.asyncio.cluster import RedisCluster

from test.client import Api, until
from test.conftest import Stack

USERS = 100_000
KEY = "{user:0}"


def redis_cli(address: str, *args: str) -> str:
    host, port = address.rsplit(":", 1)
    done = subprocess.run(
        ["redis-cli", "-h", host, "-p", port, *args], capture_output=True, text=True, timeout=10
    )
    return done.stdout.strip()


def role(address: str) -> str:
    return redis_cli(address, "ROLE").split("\n", 1)[0]


def master_and_replica(nodes: list[str]) -> tuple[str, str]:
    """The master serving KEY and its replica, from CLUSTER NODES."""
    slot = int(redis_cli(nodes[0], "CLUSTER", "KEYSLOT", KEY))
    rows = [line.split() for line in redis_cli(nodes[0], "CLUSTER", "NODES").splitlines()]
    address = {row[0]: row[1].split("@")[0] for row in rows}
    for row in rows:
        ranges = [r.split("-") for r in row[8:] if not r.startswith("[")]
        if "master" in row[2] and any(int(r[0]) <= slot <= int(r[-1]) for r in ranges):
            (replica,) = [address[r[0]] for r in rows if r[3] == row[0]]
            return address[row[0]], replica
    raise AssertionError(f"no master serves {KEY}")


async def unreset_users(nodes: list[str], credit: int) -> int:
    """How many of users 0 .. USERS-1 do not hold ``credit``."""
    host, port = nodes[0].rsplit(":", 1)
    wrong = 0
    async with RedisCluster(host=host, port=int(port)) as redis:
        for start in range(0, USERS, 5000):
            async with redis.pipeline(transaction=False) as pipe:
                for i in range(start, min(USERS, start + 5000)):
                    pipe.hget(f"{{user:{i}}}", "credit")
                values = await pipe.execute()
            wrong += sum(value != str(credit).encode() for value in values)
    return wrong


async def test_batch_init_never_vouches_for_writes_a_failover_erased(
    api: Api, stack: Stack
) -> None:
    nodes = stack.env()["PAYMENT_REDIS_NODES"].split(",")
    assert (await api.post(f"/payment/batch_init/{USERS}/1")).status == 200
    master, replica = await asyncio.to_thread(master_and_replica, nodes)
    name = {address: f"redis-payment-{k}" for k, address in enumerate(nodes)}
    master_pid = await asyncio.to_thread(stack.pid, name[master])
    replica_pid = await asyncio.to_thread(stack.pid, name[replica])

    # The replica stops taking what its master writes (stopped, its link cut), the reset
    # begins, and once the master holds some of it the master stops too: the replica, promoted,
    # lacks every write of the reset that the master took.
    os.kill(replica_pid, signal.SIGSTOP)
    try:
        await asyncio.to_thread(redis_cli, master, "CLIENT", "KILL", "TYPE", "replica")
        reset = asyncio.ensure_future(api.post(f"/payment/batch_init/{USERS}/7"))

        async def master_took_some() -> bool:
            return await asyncio.to_thread(redis_cli, master, "HGET", KEY, "credit") == "7"

        await until(master_took_some, within=30)
        os.kill(master_pid, signal.SIGSTOP)
    finally:
        os.kill(replica_pid, signal.SIGCONT)

    async def promoted() -> bool:
        return await asyncio.to_thread(role, replica) == "master"

    await until(promoted, within=30)
    os.kill(master_pid, signal.SIGKILL)  # supervision restarts it, as the new master's replica

    # No 200: some of what the reset wrote is gone, and the barrier must not vouch for it.
    answer = await reset
    assert answer.status == 503, answer

    async def rejoined() -> bool:
        return await asyncio.to_thread(role, master) == "slave"

    await until(rejoined, within=60)
    # Run again, the reset holds everywhere.
    again = await api.post(f"/payment/batch_init/{USERS}/7")
    assert again.status == 200, again
    assert await unreset_users(nodes, 7) == 0
