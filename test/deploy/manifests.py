"""What several deploy test modules share: the services' names and port, and readers of the
deployment files (the Dockerfile, env/kafka/broker.env, env/gateway/routes.conf, and
env/service/entrypoint.sh run with a stand-in hypercorn)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from test.deploy.environments import REPO

SERVICES = ("order", "payment", "stock")
PORT = 8000

BROKER_ENV = REPO / "env" / "kafka" / "broker.env"


def routes_conf() -> str:
    path = REPO / "env" / "gateway" / "routes.conf"
    if not path.exists():
        pytest.skip("env/gateway/routes.conf does not exist yet")
    return path.read_text(encoding="utf-8")


def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text(encoding="utf-8")


def run_entrypoint(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    fake = fake_bin / "hypercorn"
    fake.write_text('#!/bin/sh\necho "WORKER_ID=$WORKER_ID"\necho "$@"\n', encoding="utf-8")
    fake.chmod(0o755)
    return subprocess.run(
        ["sh", str(REPO / "env" / "service" / "entrypoint.sh")],
        env={"PATH": f"{fake_bin}:/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def hypercorn_args(tmp_path: Path, **env: str) -> list[str]:
    done = run_entrypoint(tmp_path, SERVICE_NAME="order", **env)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[1].split()
