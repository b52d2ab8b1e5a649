"""`run_local.sh up` on a running stack whose ports it is asked to move: it refuses before it
changes anything. Moving them live left the gateway, the workers, the Redis nodes and the broker
disagreeing: with ORDER_PORT_BASE moved the gateway was reloaded onto ports nothing listened on
yet while the old order workers stopped (1,124 checkouts of 1,500 answered 502 to a load, none
of them paid); with a Redis port base or BROKER_PORT moved the workers were restarted towards
processes that kept their old ports, and `up` timed out leaving that service stopped."""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlsplit

import pytest

from test.client import Api
from test.conftest import Stack
from test.system.ops import warm_up


def first_port(addresses: str) -> int:
    return int(addresses.split(",")[0].rsplit(":", 1)[1])


def running_ports(stack: Stack) -> dict[str, int]:
    """The port settings of the running stack, from its addresses (`run_local.sh env`)."""
    env = stack.env()
    return {
        "GATEWAY_PORT": urlsplit(env["GATEWAY_URL"]).port or 80,
        "BROKER_PORT": first_port(env["KAFKA_BOOTSTRAP_SERVERS"]),
        "ORDER_PORT_BASE": first_port(env["ORDER_WORKERS"]),
        "ORDER_REDIS_PORT_BASE": first_port(env["ORDER_REDIS_NODES"]),
    }


async def up(stack: Stack, ports: dict[str, int], **settings: str) -> tuple[int, str]:
    """`run_local.sh up` with ``ports`` and ``settings`` on top."""
    given = {name: str(port) for name, port in ports.items()}
    command = await asyncio.create_subprocess_exec(
        stack.ctl,
        "up",
        env={**os.environ, **given, "UP_TIMEOUT_S": "20", **settings},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(command.communicate(), 180)
    assert command.returncode is not None
    return command.returncode, err.decode()


@pytest.mark.parametrize("name", ["ORDER_PORT_BASE", "ORDER_REDIS_PORT_BASE", "BROKER_PORT"])
async def test_up_refuses_to_move_the_ports_of_a_running_stack(
    stack: Stack, api: Api, name: str
) -> None:
    await warm_up(api)
    before = stack.status()
    ports = running_ports(stack)
    moved = ports[name] + 10
    try:
        status, err = await up(stack, ports, **{name: str(moved)})
        assert status != 0, err
        assert f"{name}={moved}" in err, err
        assert stack.status() == before
        item = await api.item(price=1, stock=1)
        user = await api.user(credit=1)
        order = await api.order(user, [(item, 1)])
        reply = await api.post(f"/orders/checkout/{order}")
        assert reply.status == 200, reply
    finally:
        # Puts back what an `up` that did move the ports changed (`env` then gives the moved
        # ones: the ports from before).
        if stack.status() != before:
            await up(stack, ports)
