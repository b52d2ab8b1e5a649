"""The per-node clients' connections pack commands with hiredis, byte for byte as redis-py's
own encoder does, for every kind of argument this code sends."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection

from common.pipelines import NodeClients, PackedConnection
from common.settings import load_settings
from common.types import Arg

COMMANDS: list[tuple[Arg, ...]] = [
    ("EVALSHA", "9f" * 20, 2, "{order:7}:saga", "{order:7}:x", 1_700_000_000_123, b"\x00\x81\xff"),
    ("WAIT", 1, 500),
    ("SET", "{order:7}:barrier", "ümlaut ✓", "PX", 5000),
    ("HMGET", "{stock:-1}", b"f", -12, 0),
    ("CLIENT SETINFO", "LIB-NAME", "redis-py"),  # a command name with its subcommand
    (b"CLUSTER SLOTS",),
    ("SET", "big", b"x" * 100_000),  # past redis-py's buffer cutoff, where it sends in pieces
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_hiredis_packs_a_command_as_redis_py_does(command: tuple[Arg, ...]) -> None:
    packed = PackedConnection().pack_command(*command)
    assert b"".join(packed) == b"".join(Connection().pack_command(*command))


def test_a_bool_is_refused_not_sent_as_a_number() -> None:
    # (redis-py refuses it too, with its DataError)
    with pytest.raises(TypeError):
        PackedConnection().pack_command("SET", "k", True)


def test_every_node_client_makes_packed_connections() -> None:
    client = NodeClients(load_settings({})).client("127.0.0.1", 7000)
    assert client.connection_pool.connection_class is PackedConnection  # what it makes them with
