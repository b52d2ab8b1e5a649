"""An answer leaves a worker in one write, so a worker killed mid-answer has sent nothing and the
gateway can still send the request to another worker (common/one_write.py)."""

from __future__ import annotations

import socket

import h11
import pytest
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.events import Event, RawData
from hypercorn.protocol.events import Body, EndBody, Response
from hypercorn.protocol.h11 import H11Protocol

from common import one_write
from test import dying_worker

ANSWER = b'{"order_id":"1","paid":true}'


async def _writes(*events: object) -> list[bytes]:
    """The bytes of each write hypercorn's HTTP/1.1 protocol makes for ``events``, the answer to
    one request."""
    sent: list[Event] = []

    async def record(event: Event) -> None:
        sent.append(event)

    protocol = H11Protocol(
        app=None,  # type: ignore[arg-type]
        config=Config(),
        context=WorkerContext(max_requests=None),
        task_group=None,  # type: ignore[arg-type]
        connection_state=None,  # type: ignore[arg-type]
        ssl=False,
        client=None,
        server=None,
        send=record,
    )
    protocol.connection.receive_data(b"POST /checkout/1 HTTP/1.1\r\nhost: gw\r\n\r\n")
    assert isinstance(protocol.connection.next_event(), h11.Request)
    for event in events:
        await protocol.stream_send(event)  # type: ignore[arg-type]
    return [event.data for event in sent if isinstance(event, RawData) and event.data]


async def test_head_and_body_leave_in_one_write() -> None:
    one_write.install()
    length = (b"content-length", str(len(ANSWER)).encode())
    writes = await _writes(
        Response(stream_id=1, headers=[length], status_code=200),
        Body(stream_id=1, data=ANSWER),
        EndBody(stream_id=1),
    )
    assert len(writes) == 1, writes
    assert writes[0].startswith(b"HTTP/1.1 200 ") and writes[0].endswith(b"\r\n\r\n" + ANSWER)


@pytest.mark.parametrize("mode", ["one-write", "hypercorn as it is"])
def test_a_worker_killed_mid_answer(mode: str) -> None:
    """With one write, the client (nginx) sees the connection close with nothing sent, which it
    retries elsewhere; hypercorn as it is has sent the head, after which nginx cannot."""
    worker, port = dying_worker.start(mode)
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(b"GET / HTTP/1.1\r\nhost: worker\r\n\r\n")
        try:
            while chunk := client.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
    assert worker.wait(timeout=30) == -9, "the worker was not killed mid-answer"
    if mode == "one-write":
        assert received == b""
    else:
        assert received.startswith(b"HTTP/1.1 200 ")
