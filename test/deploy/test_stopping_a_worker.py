"""Stopping a worker lets its running requests finish: hypercorn's graceful timeout (set by
the entrypoint) outlasts a checkout, the deployments' grace periods outlast that, and a
hypercorn sent SIGTERM still answers the checkout it is running. Run by test/deploy/validate.sh.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from common.settings import load_settings
from test.client import free_port
from test.deploy.environments import REPO, k8s_objects, read_env_file
from test.deploy.loopback import listening, post
from test.deploy.manifests import SERVICES, hypercorn_args, run_entrypoint

# compose and k8s (test/deploy runs with --noconftest: see test/deploy/fixtures.py)
pytest_plugins = ("test.deploy.fixtures",)


# --- stopping a worker: running requests finish --------------------------------------------------

# After hypercorn has let its requests finish, a worker closes its consumers (commit, leave the
# group), producer and Redis clients before it exits: room left for that in every grace period
# (a margin, not a measurement).
SHUTDOWN_MARGIN_S = 10


def graceful_timeout(tmp_path: Path, settings: dict[str, str]) -> int:
    """hypercorn's --graceful-timeout for a worker with ``settings``' checkout budgets."""
    budgets = {
        k: v for k, v in settings.items() if k in ("CHECKOUT_TIMEOUT_MS", "CHECKOUT_ANSWER_MS")
    }
    args = hypercorn_args(tmp_path, **budgets)
    return int(args[args.index("--graceful-timeout") + 1])


@pytest.mark.parametrize(
    ("checkout_ms", "answer_ms", "graceful_s"),
    [
        ("20000", "55000", 60),
        ("20000", None, 60),
        ("4000", "1000", 9),
        ("70000", "55000", 75),
        ("1", "1", 6),
    ],
)
def test_graceful_timeout_outlasts_a_checkout(
    tmp_path: Path, checkout_ms: str, answer_ms: str | None, graceful_s: int
) -> None:
    """A checkout is held at most its answer budget (common/saga/verdict.py: CHECKOUT_ANSWER_MS,
    55 s by default, or CHECKOUT_TIMEOUT_MS if that is longer), which covers its turn, its saga
    and the compensation of a saga it turned back: hypercorn lets it finish."""
    settings = {"CHECKOUT_TIMEOUT_MS": checkout_ms}
    if answer_ms is not None:
        settings["CHECKOUT_ANSWER_MS"] = answer_ms
    assert graceful_timeout(tmp_path, settings) == graceful_s
    budget_ms = max(int(checkout_ms), int(answer_ms or load_settings({}).checkout_answer_ms))
    assert graceful_s >= budget_ms / 1000
    for name in ("CHECKOUT_TIMEOUT_MS", "CHECKOUT_ANSWER_MS"):
        done = run_entrypoint(tmp_path, SERVICE_NAME="order", **{name: "20s"})
        assert done.returncode == 64 and name in done.stderr


def seconds(duration: str) -> int:
    """A compose duration such as 50s, 1m or 1m30s, in seconds."""
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert match and duration, duration
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def test_grace_periods_let_running_checkouts_finish(
    tmp_path: Path, compose: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    common = read_env_file(REPO / "env" / "common.env")
    graceful = graceful_timeout(tmp_path, common)
    for service in SERVICES:
        stop = seconds(compose["services"][service]["stop_grace_period"])
        assert stop >= graceful + SHUTDOWN_MARGIN_S, service

    config = k8s_objects(k8s, "ConfigMap")["checkout-config"]["data"]
    graceful = graceful_timeout(tmp_path, config)
    for service in SERVICES:
        pod = k8s_objects(k8s, "Deployment")[service]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        # preStop runs first (endpoints are removed meanwhile), then SIGTERM; the grace period
        # counts from the start of the hook.
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep" and 1 <= int(command[1]) <= 10
        needed = int(command[1]) + graceful + SHUTDOWN_MARGIN_S
        assert pod["terminationGracePeriodSeconds"] >= needed, service


SLOW_APP = """
import asyncio

from common.http import create_app as http_app


async def nothing(_):
    return None


def create_app():
    app = http_app("order", startup=nothing, shutdown=nothing)

    @app.post("/checkout/<seconds>")
    async def checkout(seconds):
        await asyncio.sleep(float(seconds))
        return "paid"

    return app
"""


def test_a_stopping_worker_finishes_a_checkout_that_outlasts_hypercorns_default(
    tmp_path: Path,
) -> None:
    """hypercorn started with the entrypoint's arguments (its port moved to loopback) and a
    Quart app whose checkout takes 6 s, twice hypercorn's default graceful timeout: SIGTERM
    while it runs, and the client still gets its answer; new connections are refused at once
    (the gateway takes them elsewhere) and the worker exits when the request is done."""
    hypercorn = REPO / ".venv" / "bin" / "hypercorn"
    if not hypercorn.exists():
        pytest.skip("hypercorn is not installed in .venv")
    app_dir = tmp_path / "app" / "order"
    app_dir.mkdir(parents=True)
    (app_dir / "__init__.py").write_text("", encoding="utf-8")
    (app_dir / "app.py").write_text(SLOW_APP, encoding="utf-8")
    port = free_port()
    args = hypercorn_args(tmp_path, CHECKOUT_TIMEOUT_MS="20000")
    args[args.index("--bind") + 1] = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(hypercorn), *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{tmp_path / 'app'}:{REPO}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert listening(port, proc, within_s=20), "no hypercorn"
        answers: list[object] = []

        def checkout() -> None:
            try:
                answers.append(post(f"http://127.0.0.1:{port}/checkout/6", timeout=30)[0])
            except Exception as exc:  # noqa: BLE001 - recorded for the assertion
                answers.append(exc)

        client = threading.Thread(target=checkout)
        client.start()
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        client.join(timeout=20)
        assert answers == ["paid"]
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()
