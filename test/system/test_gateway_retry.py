"""A worker killed in the middle of an answer, behind a real nginx with the gateway's own routing
and retry rules (env/gateway/routes.conf): with each answer in one write (common/one_write.py)
it had sent nothing, and the client gets the standby's answer; with hypercorn as it is it had
sent the head, and the client gets no answer at all. Independent of the running stack: the test
starts its own nginx, a dying worker and a standby."""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from test import dying_worker
from test.client import free_port, until

REPO = Path(__file__).resolve().parents[2]
STANDBY_ANSWER = b'{"order_id":"1","paid":true}'


async def _standby(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers one request and closes."""
    await reader.readuntil(b"\r\n\r\n")
    head = (
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        f"content-length: {len(STANDBY_ANSWER)}\r\nconnection: close\r\n\r\n"
    )
    writer.write(head.encode() + STANDBY_ANSWER)
    await writer.drain()
    writer.close()


def _nginx_conf(tmp: Path, gateway: int, worker: int, standby: int) -> str:
    user = f"{pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name}"
    temp = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
daemon off;
user {user};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    access_log off;
{temp}
    include {REPO}/env/gateway/request-id.conf;
    upstream order_upstream {{
        server 127.0.0.1:{worker} max_fails=0;
        server 127.0.0.1:{standby} backup;
        keepalive 8;
    }}
    upstream payment_upstream {{ server 127.0.0.1:{standby}; }}
    upstream stock_upstream {{ server 127.0.0.1:{standby}; }}
    server {{
        listen 127.0.0.1:{gateway};
        include {REPO}/env/gateway/routes.conf;
    }}
}}
"""


@pytest.fixture
async def standby_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_standby, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("mode", ["one-write", "hypercorn as it is"])
async def test_a_worker_killed_mid_answer_behind_the_gateway(
    mode: str, standby_port: int, tmp_path: Path
) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    worker, worker_port = dying_worker.start(mode)
    gateway = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(_nginx_conf(tmp_path, gateway, worker_port, standby_port))
    proxy = await asyncio.create_subprocess_exec(
        nginx, "-p", f"{tmp_path}/", "-c", str(conf), "-e", "stderr"
    )
    try:

        async def listening() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", gateway)
            except OSError:
                return False
            writer.close()
            return True

        await until(listening, within=10)
        url = f"http://127.0.0.1:{gateway}/orders/checkout/1"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            if mode == "one-write":
                async with session.post(url) as reply:
                    assert (reply.status, await reply.read()) == (200, STANDBY_ANSWER)
            else:
                with pytest.raises(aiohttp.ClientError):
                    async with session.post(url) as reply:
                        await reply.read()
        assert await asyncio.to_thread(worker.wait, 30) == -9, "the worker did not die mid-answer"
    finally:
        proxy.terminate()
        await asyncio.wait_for(proxy.wait(), 30)
        if worker.poll() is None:
            worker.kill()
