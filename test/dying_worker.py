"""A hypercorn worker that starts its first answer and is SIGKILLed before the body, for the tests
of what a worker killed mid-answer leaves its client (common/one_write.py).

    python -m test.dying_worker FD MODE

serves on the listening socket FD; MODE ``one-write`` installs ``common.one_write`` first, any
other leaves hypercorn as it is. ``start`` runs one on a free port."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

from common import one_write

REPO = Path(__file__).resolve().parents[1]


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": message["type"] + ".complete"})
        return
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    await send(start)
    os.kill(os.getpid(), signal.SIGKILL)


def start(mode: str) -> tuple[subprocess.Popen[bytes], int]:
    """A dying worker in ``mode``, listening on a free port of 127.0.0.1: (its process, the port).
    Only the worker holds the listening socket, so a connection it never accepts is refused or
    reset rather than left waiting."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        worker = subprocess.Popen(
            [sys.executable, "-m", "test.dying_worker", str(listener.fileno()), mode],
            cwd=REPO,
            pass_fds=[listener.fileno()],
        )
        return worker, listener.getsockname()[1]


def main() -> None:
    fd, mode = sys.argv[1:3]
    if mode == "one-write":
        one_write.install()
    config = Config()
    config.bind = [f"fd://{fd}"]
    asyncio.run(serve(app, config))


if __name__ == "__main__":
    main()
