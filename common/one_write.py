"""Each HTTP/1.1 answer leaves a worker in one write: its head together with its body's first bytes.

hypercorn (0.18) writes an answer's head as soon as the app starts the answer and its body with
the next event: two write() calls (strace of an order worker, 2026-11-30). A worker killed
between the two has told the gateway "200, 28 bytes follow" and then closed. nginx then cannot
send the request to another worker (proxy_next_upstream applies only until an answer's head has
arrived), so it closes the client's connection and the client gets no answer at all: one
checkout among 2,012 in the fault suite's "order worker SIGKILL" case in CI on 2026-11-30.

Held back until the body's first bytes, the head goes out with them. A worker killed before that
write has sent nothing, and nginx sends the request to another worker (its X-Request-Id makes
that safe); after it, the whole answer (the services always give a content-length) is in the
kernel's send buffer, which delivers it after the process is gone. (A streamed answer would
have its head held until its first chunk; no route here streams.)
"""

from __future__ import annotations

from typing import Any

import h11
from hypercorn.events import RawData
from hypercorn.protocol.h11 import H11Protocol

_HELD = "_one_write_head"
"""The instance attribute holding an answer's head until its body's first bytes."""


async def _send_h11_event(self: Any, event: Any) -> None:
    """hypercorn's ``H11Protocol._send_h11_event``, except that a final answer's head is held
    and sent in the same write as the next event's bytes (its body, or the end of an empty one)."""
    try:
        data = self.connection.send(event)
    except h11.LocalProtocolError:
        if self.connection.their_state != h11.ERROR:  # as hypercorn: only a failed client
            raise
        data = None
    held: bytes = self.__dict__.pop(_HELD, b"")
    if isinstance(event, h11.Response) and data is not None:
        self.__dict__[_HELD] = held + data
    elif data is not None or held:
        await self.send(RawData(data=held + (data or b"")))


def install() -> None:
    """Make hypercorn's HTTP/1.1 protocol send each answer's head with its body (idempotent)."""
    current = getattr(H11Protocol, "_send_h11_event", None)
    if current is _send_h11_event:
        return
    if not callable(current):
        raise RuntimeError("hypercorn's H11Protocol has no _send_h11_event to replace")
    setattr(H11Protocol, "_send_h11_event", _send_h11_event)  # noqa: B010 (mypy: a method)
