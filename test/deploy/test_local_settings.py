"""The local stack's port settings (run_local.sh, local/lib.sh), checked before anything starts.

A port past 65535 (GATEWAY_PORT=99999, a Redis port base whose cluster bus, 10000 above each
node, does not fit) was only found once its process kept failing to start: `up` had started
supervisord and everything else, the gateway stayed in BACKOFF, and `up` failed only at
UP_TIMEOUT_S, the half-started stack left running. A leading zero made bash read a port as
octal (ORDER_REDIS_PORT_BASE=07600 gave nodes on 3968-3973; BROKER_PORT=09092 an arithmetic
error). Each case runs `run_local.sh status` on an empty state dir: no stack is started."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from test.deploy.environments import REPO


def run_local(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STATE_DIR": str(tmp_path / "state"), **settings}
    return subprocess.run(
        [str(REPO / "run_local.sh"), "status"], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("name", "value", "highest"),
    [
        ("GATEWAY_PORT", "99999", 65535),
        ("GATEWAY_PORT", "0", 65535),
        ("BROKER_PORT", "65535", 65534),  # its controller listens one above
        ("ORDER_PORT_BASE", "65500", 65436),  # the standby listens 99 above
        ("STOCK_REDIS_PORT_BASE", "60000", 55530),  # six nodes, each's bus 10000 above
    ],
)
def test_a_port_that_does_not_exist_is_refused(
    tmp_path: Path, name: str, value: str, highest: int
) -> None:
    done = run_local(tmp_path, **{name: value})
    assert done.returncode == 1, done
    assert f"{name} must be from 1 to {highest}" in done.stderr, done.stderr
    assert not (tmp_path / "state").exists()


def test_the_highest_ports_are_taken(tmp_path: Path) -> None:
    done = run_local(
        tmp_path, BROKER_PORT="65534", ORDER_PORT_BASE="65436", STOCK_REDIS_PORT_BASE="55530"
    )
    assert done.returncode == 3, done  # "the stack is down"


def test_ports_are_read_in_decimal(tmp_path: Path) -> None:
    script = 'source local/lib.sh; load_settings; redis_nodes order; echo "$((BROKER_PORT + 1))"'
    env = {
        **os.environ,
        "STATE_DIR": str(tmp_path / "state"),
        "ORDER_REDIS_PORT_BASE": "07600",
        "BROKER_PORT": "09092",
    }
    done = subprocess.run(
        ["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done
    nodes, controller = done.stdout.split()
    assert nodes.split(",")[0] == "127.0.0.1:7600"
    assert controller == "9093"
