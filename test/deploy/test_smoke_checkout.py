"""env/smoke-checkout.sh against a stand-in gateway whose answers are set by each test: it
passes only a checkout that answered 200 with the order paid and the stock and credit taken.
(test/system/test_smoke_checkout.py runs it against the local stack's gateway.)"""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "env" / "smoke-checkout.sh"

# What a working system answers after the script's checkout (test/system checks that it does).
PAID = {"checkout": 200, "paid": True, "stock": 3, "credit": 4}


class _Gateway(http.server.BaseHTTPRequestHandler):
    answers: dict[str, Any] = PAID

    def _answer(self) -> None:
        path = self.path
        status, body = 200, dict[str, Any]()
        if "/item/create/" in path:
            body = {"item_id": "i1"}
        elif path.endswith("/create_user"):
            body = {"user_id": "u1"}
        elif path.startswith("/orders/create/"):
            body = {"order_id": "o1"}
        elif path.startswith("/orders/checkout/"):
            status = self.answers["checkout"]
        elif path.startswith("/orders/find/"):
            body = {"order_id": "o1", "paid": self.answers["paid"]}
        elif path.startswith("/stock/find/"):
            body = {"stock": self.answers["stock"], "price": 3}
        elif path.startswith("/payment/find_user/"):
            body = {"user_id": "u1", "credit": self.answers["credit"]}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[tuple[str, type[_Gateway]]]:
    handler = type("Gateway", (_Gateway,), {"answers": dict(PAID)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def smoke(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), url], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_paid_checkout_passes(gateway: tuple[str, type[_Gateway]]) -> None:
    url, _ = gateway
    done = smoke(url + "/")
    assert done.returncode == 0, done.stderr
    assert "order o1 paid" in done.stdout


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ({"checkout": 400}, "/orders/checkout/o1 answered 400"),
        ({"checkout": 502}, "/orders/checkout/o1 answered 502"),
        ({"paid": False}, "paid flag is False, not True"),
        ({"stock": 5}, "stock is 5, not 3"),
        ({"credit": 10}, "credit is 10, not 4"),
    ],
)
def test_anything_short_of_paid_with_its_effects_fails(
    gateway: tuple[str, type[_Gateway]], broken: dict[str, Any], message: str
) -> None:
    url, handler = gateway
    handler.answers.update(broken)
    done = smoke(url)
    assert done.returncode == 1
    assert message in done.stderr


def test_no_gateway_fails() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once it is closed
    done = smoke(f"http://127.0.0.1:{port}")
    assert done.returncode == 1
    assert "no answer" in done.stderr
