"""Servers on loopback for the deploy tests: stand-in workers that answer with what they
received, the local stack's gateway configuration with given upstreams, nginx run with a
configuration (skipped when none is installed), the gateway's holder, and a POST."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import http.server
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.holder import Holder, Route, listen
from test.client import free_port
from test.deploy.environments import REPO


class _Echo(http.server.BaseHTTPRequestHandler):
    """Answers every request with the service's name and the path it received, and the
    X-Request-Id it received in ``X-Seen-Request-Id`` (recorded in ``server.seen`` too)."""

    status = 200

    def _answer(self) -> None:
        seen = self.headers.get("X-Request-Id", "")
        self.server.seen.append(seen)  # type: ignore[attr-defined]
        self.server.starts.append(self.headers.get("X-Request-Start"))  # type: ignore[attr-defined]
        body = f"{self.server.service_name} {self.path}".encode()  # type: ignore[attr-defined]
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Seen-Request-Id", seen)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _BadGateway(_Echo):
    """A worker that fails every request with a 502: nginx retries it on the next server."""

    status = 502


def start_echo(service: str, handler: type[_Echo] = _Echo) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.service_name = service  # type: ignore[attr-defined]
    server.seen = []  # type: ignore[attr-defined]
    server.starts = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def nginx_binary() -> str:
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None
    )
    if nginx is None:
        pytest.skip("nginx is not installed")
    return nginx


def listening(port: int, proc: subprocess.Popen[bytes], *, within_s: float) -> bool:
    """Whether ``port`` on loopback takes a connection before ``proc`` exits or ``within_s``
    seconds pass."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.1)


@contextlib.contextmanager
def running_nginx(prefix: Path, conf: Path, port: int) -> Iterator[str]:
    """Runs nginx with ``conf`` in the foreground until the block ends; yields its base URL."""
    (prefix / "logs").mkdir(exist_ok=True)
    args = [nginx_binary(), "-p", str(prefix), "-c", str(conf)]
    if not re.search(r"^daemon off;", conf.read_text(encoding="utf-8"), flags=re.M):
        args += ["-g", "daemon off;"]
    check = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(args, stderr=subprocess.PIPE)
    try:
        if not listening(port, proc, within_s=10):
            proc.kill()
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"nginx did not start: {err.decode(errors='replace')}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


@contextlib.contextmanager
def running_holder(routes: dict[str, list[int]], hold_s: float = 5) -> Iterator[int]:
    """The gateway's holder (common/holder.py) on a loopback port, in a thread, routing each
    prefix (``/orders/``) to workers on loopback ports; yields its port."""
    port = free_port()
    holder = Holder(
        [Route(prefix, tuple(("127.0.0.1", p) for p in ports)) for prefix, ports in routes.items()],
        hold_s=hold_s,
        answer_s=10,
    )
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(listen(f"127.0.0.1:{port}", holder))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()


def no_holder() -> str:
    """A holder upstream where nothing listens: the gateway's own refusal rules answer."""
    return f"upstream holder_upstream {{ server 127.0.0.1:{free_port()} max_fails=0; }}\n"


def local_gateway_conf(tmp_path: Path, upstreams: str, port: int) -> Path:
    """local/nginx.conf.in filled in as run_local.sh fills it, with the given upstreams (and
    ``no_holder`` unless they name a holder_upstream)."""
    if "upstream holder_upstream " not in upstreams:
        upstreams += no_holder()
    conf = (REPO / "local" / "nginx.conf.in").read_text(encoding="utf-8")
    user = f"{pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name}"
    fill = {"NGINX_DIR": tmp_path, "GATEWAY_PORT": port, "REPO_DIR": REPO, "NGINX_USER": user}
    for name, value in fill.items():
        conf = conf.replace("${" + name + "}", str(value))
    assert "${" not in conf
    (tmp_path / "tmp").mkdir()
    (tmp_path / "nginx.conf").write_text(conf, encoding="utf-8")
    (tmp_path / "upstreams.conf").write_text(upstreams, encoding="utf-8")
    return tmp_path / "nginx.conf"


def post(url: str, headers: dict[str, str] | None = None, timeout: float = 5) -> tuple[str, str]:
    """POST through the gateway: (body, the X-Request-Id the service received)."""
    request = urllib.request.Request(url, method="POST", data=b"", headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return reply.read().decode(), reply.headers.get("X-Seen-Request-Id", "")
