"""The shapes the services' code relies on, named once (as starlette's ``types.py`` does): the
aliases of the message path and the Protocols of the store and the bus. ``common.store.Store``
and ``common.bus.Bus`` satisfy them, and so do the unit tests' fakes (``test/unit/fake_store.py``,
``fake_bus.py``): mypy checks both against these, so a fake cannot drift from what the code
calls."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

from common.messages import Message
from common.settings import Settings

T = TypeVar("T")

Arg = str | int | bytes
"""An argument of a Redis command or script."""


class ScriptCall(NamedTuple):
    """A registered script's call, in a list of commands for ``on_master_of``."""

    name: str
    keys: Sequence[str]
    args: Sequence[Arg]


Command = ScriptCall | Sequence[Arg]
"""One command of ``on_master_of``: a script call, or a plain command and its arguments."""

Written = dict[str, str]
"""Keys written inside a ``tracking`` block -> the master that took each write."""

Outgoing = tuple[str, Message]
"""A message to publish and its topic; the key is always the message's entity (order) id."""

Handler = Callable[[Any], Awaitable[Sequence[Outgoing]]]
"""``async def handle(message) -> replies``; dependencies are bound with functools.partial."""


class Replicating(Protocol):
    """What ``Effects`` needs of a store: the write tracking and replication barrier of rule 6."""

    def tracking(self) -> AbstractContextManager[Written]: ...
    async def replicate(self, written: Mapping[str, str]) -> None: ...


class Storage(Replicating, Protocol):
    """What the saga code, the ledger and the consumer loop need of a service's Redis Cluster
    (``common.store.Store``): idempotent scripts, a few plain reads and writes, and (from
    ``Replicating``) the write tracking and replication barrier."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def load_scripts(self, lua_dir: Path) -> None: ...

    async def script(
        self, name: str, keys: Sequence[str], args: Sequence[Arg], *, writes: bool = True
    ) -> Any: ...

    async def bulk_script(
        self, name: str, calls: Iterable[tuple[Sequence[str], Sequence[Arg]]], chunk: int = ...
    ) -> list[Any]: ...

    async def on_master_of(self, key: str, commands: Sequence[Command]) -> list[Any] | None: ...
    async def hmget(self, key: str, fields: Sequence[str]) -> list[bytes | None]: ...
    async def zadd(self, key: str, mapping: Mapping[str, float], *, xx: bool = False) -> int: ...
    async def zrange_scored(self, key: str) -> list[tuple[bytes, float]]: ...
    def master_name(self, key: str) -> str: ...
    def wrote(self, key: str) -> None: ...
    async def durable(self, action: Callable[[], Awaitable[T]]) -> T: ...


class Publisher(Protocol):
    """What ``Effects`` and the senders need of the bus."""

    async def publish(self, messages: Sequence[Outgoing], *, acknowledged: bool = True) -> None: ...


class MessageBus(Publisher, Protocol):
    """What the consumer loops, the sweeper and a service's runtime need of the bus
    (``common.bus.Bus``)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    @property
    def settings(self) -> Settings: ...

    def unacknowledged_for(self) -> float: ...
