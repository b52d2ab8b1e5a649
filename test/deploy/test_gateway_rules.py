"""Offline checks of the gateway rules: the nginx of docker-compose (env/gateway) and the
ingress-nginx of minikube (k8s/) route, retry and time out alike, and the gateway tells order
when it first sent a request. Run by test/deploy/validate.sh.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from common.http import GATEWAY_READ_TIMEOUT_S
from test.deploy.environments import REPO, k8s_objects
from test.deploy.manifests import PORT, SERVICES, routes_conf

# compose and k8s (test/deploy runs with --noconftest: see test/deploy/fixtures.py)
pytest_plugins = ("test.deploy.fixtures",)

# ingress-nginx accepts these proxy-next-upstream words only (its annotation validator).
NEXT_UPSTREAM_WORDS = re.compile(
    r"^((error|timeout|invalid_header|http_500|http_502|http_503|http_504|http_403|http_404"
    r"|http_429|non_idempotent|off)\s?)+$"
)
ANNOTATION = "nginx.ingress.kubernetes.io/"


# --- gateway: nginx (compose) and ingress-nginx (minikube) -------------------------------------


def nginx_directives(block: str) -> dict[str, str]:
    """Directives at the top level of an nginx block (nested `{ ... }` blocks skipped)."""
    directives, depth = {}, 0
    for statement in re.findall(r"[^;{}]*[;{}]", re.sub(r"#[^\n]*", "", block)):
        if statement.endswith("{"):
            depth += 1
        elif statement.endswith("}"):
            depth -= 1
        elif depth == 0:
            name, _, value = statement.strip().rstrip(";").partition(" ")
            directives[name] = value.strip()
    return directives


def test_compose_upstreams_are_the_ones_routes_conf_uses() -> None:
    used = set(re.findall(r"proxy_pass http://(\w+)", routes_conf()))
    upstreams = (REPO / "env" / "gateway" / "upstreams.compose.conf").read_text(encoding="utf-8")
    blocks = dict(re.findall(r"upstream (\w+) \{(.*?)\}", upstreams, flags=re.S))
    assert set(blocks) == used == {f"{s}_upstream" for s in (*SERVICES, "holder")}
    for name, body in blocks.items():
        service = name.removesuffix("_upstream")
        assert f"server {service}:{PORT} resolve max_fails=0;" in body
        assert f"zone {name} " in body
        # The holder answers one request per connection (common/holder.py).
        assert ("keepalive " in body) == (service != "holder")
    nginx_conf = (REPO / "env" / "gateway" / "nginx.conf").read_text(encoding="utf-8")
    assert "include /etc/nginx/gateway/upstreams.compose.conf;" in nginx_conf
    assert "include /etc/nginx/gateway/routes.conf;" in nginx_conf
    assert re.search(r"resolver 127\.0\.0\.11 valid=\d+s", nginx_conf)
    assert f"listen {PORT} " in nginx_conf


def test_ingress_repeats_the_gateway_rules(k8s: list[dict[str, Any]]) -> None:
    routes = routes_conf()
    expected = nginx_directives(routes)
    # One retry rule for every route (no location of routes.conf sets its own), so one Ingress.
    # (The named location that sends a request to the holder sets its own; ingress-nginx has no
    # holder: see the README, "What it does not promise".)
    assert not re.search(r"^location (?!@held )[^{]*\{[^}]*proxy_next_upstream", routes, re.M)

    ingresses = k8s_objects(k8s, "Ingress")
    assert set(ingresses) == {"gateway"}
    for ingress in ingresses.values():
        assert ingress["spec"]["ingressClassName"] == "nginx"
        annotations = ingress["metadata"]["annotations"]
        notes = {k.removeprefix(ANNOTATION): v for k, v in annotations.items()}
        assert notes["use-regex"] == "true"
        assert NEXT_UPSTREAM_WORDS.match(notes["proxy-next-upstream"])
        assert notes["proxy-next-upstream"].split() == expected["proxy_next_upstream"].split()
        assert notes["proxy-next-upstream-tries"] == expected["proxy_next_upstream_tries"]
        for timeout in ("connect", "send", "read"):
            seconds = expected[f"proxy_{timeout}_timeout"].removesuffix("s")
            assert notes[f"proxy-{timeout}-timeout"] == seconds


def test_the_gateway_tells_order_when_it_first_sent_a_request() -> None:
    """Order starts no checkout saga for a request the gateway has given up on: it reckons that
    time from the gateway's X-Request-Start ($msec, evaluated once per request, the same on its
    retries) and the gateway's read timeout, which it must know."""
    routes = routes_conf()
    assert nginx_directives(routes)["proxy_read_timeout"] == f"{GATEWAY_READ_TIMEOUT_S}s"
    assert re.search(r"^proxy_set_header X-Request-Start \$msec;$", routes, flags=re.M)
    # No route drops it. The holder gets a request once every try failed, with the moment it
    # was sent there, and sends it on as it is: order reckons from that.
    assert not re.search(r"^location (?!@held )[^{]*\{[^}]*proxy_set_header", routes, re.M)
    (held,) = re.findall(r"^location @held \{(.*?)^\}", routes, flags=re.M | re.S)
    for header in ("X-Request-Start $msec", "X-Request-Id $req_id", 'Connection ""'):
        assert f"proxy_set_header {header};" in held


def ingress_routes(k8s: list[dict[str, Any]]) -> list[tuple[re.Pattern[str], str, str]]:
    """(path regex, rewrite target, service) of every ingress path, as ingress-nginx orders
    regex locations: longest path first."""
    routes = []
    for ingress in k8s_objects(k8s, "Ingress").values():
        target = ingress["metadata"]["annotations"][ANNOTATION + "rewrite-target"]
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["pathType"] == "ImplementationSpecific"
                assert path["backend"]["service"]["port"]["number"] == PORT
                routes.append((path["path"], target, path["backend"]["service"]["name"]))
    routes.sort(key=lambda route: len(route[0]), reverse=True)
    return [(re.compile("^" + path, re.I), target, service) for path, target, service in routes]


@pytest.mark.parametrize(
    ("request_path", "service", "upstream_path"),
    [
        ("/orders/create/u1", "order", "/create/u1"),
        ("/orders/checkout/42", "order", "/checkout/42"),
        ("/orders/find/42", "order", "/find/42"),
        ("/payment/add_funds/u1/10", "payment", "/add_funds/u1/10"),
        ("/stock/item/create/5", "stock", "/item/create/5"),
    ],
)
def test_ingress_strips_the_prefix(
    k8s: list[dict[str, Any]], request_path: str, service: str, upstream_path: str
) -> None:
    for pattern, target, backend in ingress_routes(k8s):
        match = pattern.match(request_path)
        if match:
            rewritten = target
            for number, group in enumerate(match.groups(), start=1):
                rewritten = rewritten.replace(f"${number}", group)
            assert (backend, rewritten) == (service, upstream_path)
            return
    pytest.fail(f"no ingress path matches {request_path}")
