"""The gateway's configurations run in the local nginx (skipped when none is installed),
in front of stand-in workers on loopback: compose's routes and request ids, the local gateway's
and the ingress's X-Request-Start across a retry, and a checkout sent on once the replicas that
dropped one answer again. Run by test/deploy/validate.sh.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.holder import parse_route
from common.http import GATEWAY_CLOCK_MARGIN_S, GATEWAY_READ_TIMEOUT_S, gateway_start_by
from test.client import free_port
from test.deploy.environments import REPO
from test.deploy.loopback import (
    _BadGateway,
    _Echo,
    local_gateway_conf,
    post,
    running_holder,
    running_nginx,
    start_echo,
)
from test.deploy.manifests import PORT, SERVICES, routes_conf

# compose and k8s (test/deploy runs with --noconftest: see test/deploy/fixtures.py)
pytest_plugins = ("test.deploy.fixtures",)


# --- gateway: nginx (compose) and ingress-nginx (minikube) -------------------------------------


def gateway_headers(k8s: list[dict[str, Any]]) -> dict[str, str]:
    """The headers ingress-nginx sets on every proxied request: the ConfigMap of k8s/ that
    run_minikube.sh names as the controller's ``proxy-set-headers``, after k8s/ is applied."""
    script = (REPO / "run_minikube.sh").read_text(encoding="utf-8")
    ((namespace, name),) = re.findall(r'^GATEWAY_HEADERS="([\w-]+)/([\w-]+)"$', script, flags=re.M)
    assert re.search(r"^    apply_manifests\n    set_gateway_headers\n", script, flags=re.M)
    assert '\\"proxy-set-headers\\":\\"$GATEWAY_HEADERS\\"' in script
    (config_map,) = (
        doc
        for doc in k8s
        if doc["kind"] == "ConfigMap"
        and doc["metadata"]["name"] == name
        and doc["metadata"]["namespace"] == namespace
    )
    data = config_map["data"]
    assert isinstance(data, dict)
    return data


def assert_sent_once(first: list[str | None], retried: list[str | None]) -> None:
    """Each request's X-Request-Start was the same on the worker that failed it and on the one
    that answered its retry, and is the moment nginx first sent it: order's bound
    (gateway_start_by) reads it as that, within seconds of now."""
    assert first == retried and first
    for start in first:
        assert start is not None and re.fullmatch(r"\d+\.\d{3}", start)
        bound = gateway_start_by(start)
        assert bound is not None
        now = time.time()
        assert now - 10 < bound / 1000 - (GATEWAY_READ_TIMEOUT_S - GATEWAY_CLOCK_MARGIN_S) <= now


def test_ingress_sets_x_request_start_as_the_gateway_does(
    k8s: list[dict[str, Any]], tmp_path: Path
) -> None:
    """ingress-nginx writes each of its proxy-set-headers as `proxy_set_header NAME "VALUE";`
    (Go's %q); those lines, in nginx with a worker that fails every request (502), give the
    worker and the one that answers the retry the same X-Request-Start, the moment nginx first
    sent the request, as routes.conf's own line does."""
    headers = gateway_headers(k8s)
    (routes_value,) = re.findall(r"^proxy_set_header X-Request-Start (\S+);$", routes_conf(), re.M)
    assert headers == {"X-Request-Start": routes_value}
    rendered = "".join(f"proxy_set_header {k} {json.dumps(v)};\n" for k, v in headers.items())
    failing, working = start_echo("order", _BadGateway), start_echo("order")
    try:
        port = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(
            f"""
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp_path};
    proxy_temp_path {tmp_path};
    upstream order_upstream {{
        server 127.0.0.1:{failing.server_address[1]} max_fails=0;
        server 127.0.0.1:{working.server_address[1]} backup;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://order_upstream;
            proxy_next_upstream error timeout http_502 non_idempotent;
            {rendered}
        }}
    }}
}}
""",
            encoding="utf-8",
        )
        with running_nginx(tmp_path, conf, port) as base:
            for _ in range(2):
                assert post(base + "/checkout/o1")[0] == "order /checkout/o1"
        assert_sent_once(failing.starts, working.starts)  # type: ignore[attr-defined]
    finally:
        for server in (failing, working):
            server.shutdown()
            server.server_close()


@pytest.fixture
def echo_servers() -> Iterator[dict[str, int]]:
    servers = [start_echo(service) for service in SERVICES]
    yield {s: srv.server_address[1] for s, srv in zip(SERVICES, servers, strict=True)}
    for server in servers:
        server.shutdown()
        server.server_close()


def compose_gateway_conf(tmp_path: Path, upstreams: str, port: int) -> Path:
    """env/gateway as the nginx image sees it, in ``tmp_path``, listening on loopback ``port``."""
    gateway = REPO / "env" / "gateway"
    conf = (gateway / "nginx.conf").read_text(encoding="utf-8")
    conf = conf.replace("/etc/nginx/gateway/", f"{tmp_path}/")
    conf = conf.replace("pid /tmp/nginx.pid", f"pid {tmp_path}/nginx.pid")
    conf = conf.replace(f"listen {PORT} ", f"listen 127.0.0.1:{port} ")
    (tmp_path / "nginx.conf").write_text(conf, encoding="utf-8")
    (tmp_path / "upstreams.compose.conf").write_text(upstreams, encoding="utf-8")
    for name in ("routes.conf", "request-id.conf"):
        shutil.copy(gateway / name, tmp_path / name)
    return tmp_path / "nginx.conf"


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def test_compose_gateway_config_routes_through_nginx(
    tmp_path: Path, echo_servers: dict[str, int]
) -> None:
    """Runs env/gateway/{nginx,upstreams.compose,routes,request-id}.conf in the local nginx, with
    the service names pointed at echo servers on loopback. `resolve` needs nginx >= 1.27.3 (the
    image's); Debian's nginx is older, so that one word is dropped here."""
    routes_conf()
    upstreams = (REPO / "env" / "gateway" / "upstreams.compose.conf").read_text(encoding="utf-8")
    for service, echo_port in echo_servers.items():
        upstreams = upstreams.replace(
            f"server {service}:{PORT} resolve", f"server 127.0.0.1:{echo_port}"
        )
    upstreams = upstreams.replace(
        f"server holder:{PORT} resolve", f"server 127.0.0.1:{free_port()}"
    )
    port = free_port()
    with running_nginx(tmp_path, compose_gateway_conf(tmp_path, upstreams, port), port) as base:
        with urllib.request.urlopen(base + "/gateway/health", timeout=2) as reply:
            assert reply.status == 200
        cases = {
            "/orders/create/u1": "order /create/u1",
            "/orders/checkout/7": "order /checkout/7",
            # An id with a slash, or an empty segment, is not merged into another id.
            "/orders/checkout//7": "order /checkout//7",
            "/orders/checkout/%2F7": "order /checkout//7",
            "/payment/find_user/u1": "payment /find_user/u1",
            "/stock/find/i1": "stock /find/i1",
        }
        for path, expected in cases.items():
            assert post(base + path)[0] == expected
        # As ingress-nginx: the client's request id goes through unchanged, else nginx makes one.
        client_id = str(uuid.uuid4())
        assert post(base + "/stock/subtract/i1/1", {"X-Request-Id": client_id})[1] == client_id
        made = {post(base + "/stock/subtract/i1/1")[1] for _ in range(2)}
        assert len(made) == 2 and all(re.fullmatch(r"[0-9a-f]{32}", m) for m in made)


def test_local_gateway_keeps_the_request_id_across_its_retries(tmp_path: Path) -> None:
    """local/nginx.conf.in as run_local.sh renders it, with stock's first worker failing every
    request (502): nginx retries on the second, and both see one request id, the client's when
    it sent one (a dashed UUID here, as most clients send), else one nginx made."""
    failing, working = start_echo("stock", _BadGateway), start_echo("stock")
    others = {s: start_echo(s) for s in ("order", "payment")}
    try:
        upstreams = f"""
upstream stock_upstream {{
    server 127.0.0.1:{failing.server_address[1]} max_fails=0;
    server 127.0.0.1:{working.server_address[1]} backup;
    keepalive 8;
}}
""" + "".join(
            f"upstream {s}_upstream {{ server 127.0.0.1:{srv.server_address[1]}; }}\n"
            for s, srv in others.items()
        )
        port = free_port()
        with running_nginx(tmp_path, local_gateway_conf(tmp_path, upstreams, port), port) as base:
            client_id = str(uuid.uuid4())
            body, seen = post(base + "/stock/subtract/i1/1", {"X-Request-ID": client_id})
            assert (body, seen) == ("stock /subtract/i1/1", client_id)
            body, made = post(base + "/stock/subtract/i1/1")
            assert body == "stock /subtract/i1/1" and re.fullmatch(r"[0-9a-f]{32}", made)
            assert post(base + "/orders/create/u1")[0] == "order /create/u1"
        assert failing.seen == [client_id, made]  # type: ignore[attr-defined]
        assert working.seen == [client_id, made]  # type: ignore[attr-defined]
        assert UUID.fullmatch(client_id)
        assert_sent_once(failing.starts, working.starts)  # type: ignore[attr-defined]
    finally:
        for server in (failing, working, *others.values()):
            server.shutdown()
            server.server_close()


class _DropsFirst(_Echo):
    """A replica that closes the connection of its first request without answering (it died
    with the request in hand, or reset a keep-alive connection as nginx reused it), then
    answers every request."""

    def _answer(self) -> None:
        if not self.server.dropped:  # type: ignore[attr-defined]
            self.server.dropped = True  # type: ignore[attr-defined]
            self.close_connection = True
            return
        super()._answer()

    do_GET = do_POST = _answer


def post_status(url: str) -> tuple[int, str]:
    """POST through the gateway: (status, body), whatever the status."""
    try:
        return 200, post(url)[0]
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode(errors="replace")


def compose_holder_routes(compose: dict[str, Any]) -> dict[str, list[tuple[str, int]]]:
    """The routes of compose's holder, from its command: prefix -> (service name, port)."""
    holder = compose["services"]["holder"]
    assert holder["entrypoint"] == ["python", "-m", "common.holder"]
    args = holder["command"]
    routes = [parse_route(args[i + 1]) for i, arg in enumerate(args) if arg == "--route"]
    return {route.prefix: list(route.targets) for route in routes}


def test_compose_holder_routes_every_service_as_the_gateway(compose: dict[str, Any]) -> None:
    """Each prefix of routes.conf goes to its service's name on the service port, as nginx
    sends it; the holder listens where upstreams.compose.conf finds it."""
    prefixes = dict(
        re.findall(
            r"^location (/\w+/) \{\n    proxy_pass http://(\w+)_upstream/;", routes_conf(), re.M
        )
    )
    assert compose_holder_routes(compose) == {
        prefix: [(service, PORT)] for prefix, service in prefixes.items()
    }
    args = compose["services"]["holder"]["command"]
    assert args[args.index("--listen") + 1] == f"0.0.0.0:{PORT}"
    compose_upstreams = (REPO / "env" / "gateway" / "upstreams.compose.conf").read_text(
        encoding="utf-8"
    )
    assert f"server holder:{PORT} resolve max_fails=0;" in compose_upstreams


def test_compose_gateway_holds_a_checkout_its_replicas_dropped(
    tmp_path: Path, compose: dict[str, Any]
) -> None:
    """docker-compose runs two order replicas behind one `server order:8000 resolve` line. A
    checkout both replicas dropped (both died with it) goes to the holder, which sends it on
    until a replica answers: 200, where nginx alone answered 502, a success to the course's
    clients whether the checkout happened or not. The next checkout must reach a replica at
    once: with `max_fails=1 fail_timeout=2s` nginx counted both replicas down for 2 s and
    answered every checkout of those 2 s 502 ("no live upstreams") without sending it to
    either (2026-11-30)."""
    routes_conf()
    conf = (REPO / "env" / "gateway" / "upstreams.compose.conf").read_text(encoding="utf-8")
    (line,) = re.findall(rf"^ *server order:{PORT} resolve[^;]*;\n", conf, flags=re.M)
    replicas = [start_echo("order", _DropsFirst) for _ in range(2)]
    others = {s: start_echo(s) for s in ("payment", "stock")}
    for replica in replicas:
        replica.dropped = False  # type: ignore[attr-defined]
    ports = {"order": [r.server_address[1] for r in replicas]}
    ports |= {s: [server.server_address[1]] for s, server in others.items()}
    held = {
        prefix: [port for name, _ in targets for port in ports[name]]
        for prefix, targets in compose_holder_routes(compose).items()
    }
    try:
        # The replicas as `resolve` finds them: one server each, with the line's parameters.
        upstreams = conf.replace(
            line,
            "".join(
                line.replace(f"order:{PORT} resolve", f"127.0.0.1:{p}") for p in ports["order"]
            ),
        )
        for service, server in others.items():
            upstreams = upstreams.replace(
                f"server {service}:{PORT} resolve", f"server 127.0.0.1:{server.server_address[1]}"
            )
        with running_holder(held) as holder_port:
            upstreams = upstreams.replace(
                f"server holder:{PORT} resolve", f"server 127.0.0.1:{holder_port}"
            )
            port = free_port()
            nginx_conf = compose_gateway_conf(tmp_path, upstreams, port)
            with running_nginx(tmp_path, nginx_conf, port) as base:
                assert post_status(base + "/orders/checkout/o1") == (200, "order /checkout/o1")
                assert all(r.dropped for r in replicas)  # type: ignore[attr-defined]
                assert post_status(base + "/orders/checkout/o2") == (200, "order /checkout/o2")
        # Each replica dropped o1 before one answered it, then o2 was answered at once.
        seen = [r.seen for r in replicas]  # type: ignore[attr-defined]
        assert sum(len(s) for s in seen) == 2 and len({*seen[0], *seen[1]}) == 2
    finally:
        for server in (*replicas, *others.values()):
            server.shutdown()
            server.server_close()
