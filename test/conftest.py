"""Shared test fixtures: the gateway client and a handle on the local stack's processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from test.client import Api

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def gateway_url() -> str:
    return os.environ.get("GATEWAY_URL", "http://127.0.0.1:8000")


@pytest.fixture(scope="session")
async def api(gateway_url: str) -> AsyncIterator[Api]:
    async with Api(gateway_url) as client:
        yield client


class Stack:
    """The processes of the stack started by ``run_local.sh`` (names as in its ``status``)."""

    def __init__(self) -> None:
        self.ctl = os.environ.get("STACK_CTL", str(REPO / "run_local.sh"))

    def run(self, *args: str) -> str:
        done = subprocess.run([self.ctl, *args], capture_output=True, text=True, check=True)
        return done.stdout.strip()

    def pid(self, name: str) -> int:
        return int(self.run("pid", name))

    def kill(self, name: str) -> int:
        """SIGKILL one process; supervision restarts it. Returns the killed pid."""
        pid = self.pid(name)
        os.kill(pid, signal.SIGKILL)
        return pid

    def restart_broker_empty(self) -> None:
        """Stop the broker, delete its log, start it: it comes back with no topics, messages
        or committed offsets (as after losing its volume)."""
        log_dir = Path(self.env()["STATE_DIR"]) / "broker" / "log"
        self.run("ctl", "stop", "broker")
        shutil.rmtree(log_dir, ignore_errors=True)
        self.run("ctl", "start", "broker")

    def env(self) -> dict[str, str]:
        """The stack's addresses (``run_local.sh env``): broker, Redis nodes, gateway."""
        lines = self.run("env").splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def status(self) -> dict[str, tuple[str, str]]:
        rows = [line.split() for line in self.run("status").splitlines() if line.strip()]
        return {row[0]: (row[1], row[2]) for row in rows}


@pytest.fixture(scope="session")
def stack() -> Stack:
    return Stack()
