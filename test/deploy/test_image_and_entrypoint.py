"""Offline checks of the image: its Dockerfile (a pinned base, a user that is not root, what
it copies) and its entrypoint (env/service/entrypoint.sh, run with a stand-in hypercorn). Run by
test/deploy/validate.sh.
"""

from __future__ import annotations

import fnmatch
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from test.deploy.environments import REPO, compose_service_env, k8s_service_env
from test.deploy.manifests import PORT, SERVICES, dockerfile, hypercorn_args, run_entrypoint

# compose and k8s (test/deploy runs with --noconftest: see test/deploy/fixtures.py)
pytest_plugins = ("test.deploy.fixtures",)


# --- the image --------------------------------------------------------------------------------


def test_image_base_is_pinned_and_user_is_not_root() -> None:
    text = dockerfile()
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base)
    assert set(re.findall(r"^FROM (\S+)", text, flags=re.M)) == {"${PYTHON_IMAGE}"}
    (user,) = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert not user.startswith(("0", "root"))
    assert f"EXPOSE {PORT}" in text.splitlines()
    assert 'ENTRYPOINT ["/usr/local/bin/service-entrypoint"]' in text


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context drops `path` (last matching .dockerignore pattern wins)."""
    ignored = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        regex = fnmatch.translate(pattern.replace("**/", "")) if "**/" in pattern else None
        for candidate in candidates:
            name = candidate.rsplit("/", 1)[-1]
            if fnmatch.fnmatchcase(candidate, pattern) or (regex and re.match(regex, name)):
                ignored = not negate
    return ignored


def test_image_copies_what_it_needs_and_nothing_local() -> None:
    text = dockerfile()
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [
        src
        for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M)
        for src in line.split()[:-1]
    ]
    assert sources == [
        "requirements.txt",
        "common/",
        "order/",
        "stock/",
        "payment/",
        "env/service/entrypoint.sh",
    ]
    for source in sources:
        assert not dockerignored(source.rstrip("/"), patterns), f"{source} is dockerignored"
    for local_state in (".venv", ".git", ".run", "test", "local"):
        assert dockerignored(local_state, patterns)


def test_services_do_not_import_the_local_only_packages() -> None:
    """The image leaves supervisor out (it serves ./run_local.sh only)."""
    assert "grep -viE '^supervisor=='" in dockerfile()
    for package in ("common", "order", "stock", "payment"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            local_only = re.search(r"^\s*(import|from)\s+supervisor\b", text, re.M)
            assert local_only is None, path


@pytest.mark.parametrize("service", SERVICES)
def test_entrypoint_starts_hypercorn_with_uvloop(tmp_path: Path, service: str) -> None:
    done = run_entrypoint(tmp_path, SERVICE_NAME=service, WORKER_ID=f"{service}-7")
    assert done.returncode == 0, done.stderr
    worker, args = done.stdout.splitlines()
    assert worker == f"WORKER_ID={service}-7"
    assert args == (
        f"--worker-class uvloop --workers 0 --bind 0.0.0.0:{PORT} --keep-alive 75"
        f" --graceful-timeout 60 {service}.app:create_app()"
    )


def test_entrypoint_defaults_worker_id_to_the_hostname(tmp_path: Path) -> None:
    done = run_entrypoint(tmp_path, SERVICE_NAME="stock")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"WORKER_ID={socket.gethostname()}"


def test_entrypoint_refuses_an_unknown_service(tmp_path: Path) -> None:
    done = run_entrypoint(tmp_path, SERVICE_NAME="shipping")
    assert done.returncode == 64
    assert "SERVICE_NAME" in done.stderr


def test_entrypoint_port_moves_only_where_asked(
    tmp_path: Path, compose: dict[str, Any], k8s: list[dict[str, Any]]
) -> None:
    """PORT (for the check that runs the entrypoint beside a local stack) moves the bind; the
    deployments leave it unset, so their workers listen on the port their probes use."""
    args = hypercorn_args(tmp_path, PORT="8123")
    assert args[args.index("--bind") + 1] == "0.0.0.0:8123"
    done = run_entrypoint(tmp_path, SERVICE_NAME="order", PORT="80 --reload")
    assert done.returncode == 64 and "PORT" in done.stderr
    for service in SERVICES:
        assert "PORT" not in compose_service_env(compose, service), service
        assert "PORT" not in k8s_service_env(k8s, service), service
