"""``FastRoute`` answers its route as the Quart route would (statuses, JSON bodies, metrics),
and hands every other request to Quart."""

from __future__ import annotations

import logging

import pytest
from quart import Quart, Response

from common.errors import NotFound, Refused, Unavailable
from common.fast_route import FastRoute, Headers
from common.http import create_app, json_response
from common.observability import metrics
from common.observability.monitoring import install
from common.settings import load_settings

RULE = "/checkout/<order_id>"
SERVICE = "fast-route-test"


async def answer(order_id: str, headers: Headers = ()) -> dict[str, object]:
    if order_id == "unknown":
        raise NotFound(f"order {order_id!r} not found")
    if order_id == "poor":
        raise Refused("not paid: insufficient credit")
    if order_id == "down":
        raise Unavailable("the store is down")
    if order_id == "bug":
        raise KeyError("a bug")
    return {"order_id": order_id, "paid": True}


async def nothing(_: Quart) -> None:
    return None


def app(fast: bool) -> Quart:
    quart = create_app(SERVICE, startup=nothing, shutdown=nothing)
    install(quart, load_settings({"SERVICE_NAME": SERVICE}), [])  # the request metrics

    @quart.post(RULE)
    async def checkout(order_id: str) -> Response:
        return json_response(await answer(order_id))

    if fast:
        quart.asgi_app = FastRoute(  # type: ignore[method-assign]
            quart.asgi_app, service=SERVICE, method="POST", rule=RULE, handler=answer
        )
    return quart


def requests_counted(status: str) -> float:
    value = metrics.HTTP_REQUESTS.labels(SERVICE, RULE, "POST", status)._value.get()
    return float(value)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/checkout/7", 200),
        ("/checkout/a%20b", 200),
        ("/checkout/unknown", 400),  # an unknown id is a 400 in this API
        ("/checkout/poor", 400),
        ("/checkout/down", 503),
    ],
)
async def test_the_fast_route_answers_as_quart_does(path: str, status: int) -> None:
    replies = []
    for fast in (False, True):
        before = requests_counted(str(status))
        reply = await app(fast).test_client().post(path)
        assert requests_counted(str(status)) == before + 1  # counted either way
        replies.append((reply.status_code, reply.content_type, await reply.get_json()))
    assert replies[0] == replies[1]
    assert replies[1][0] == status


async def test_a_failure_of_the_handler_is_a_logged_500(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        reply = await app(True).test_client().post("/checkout/bug")
    assert reply.status_code == 500
    assert "Exception on request POST /checkout/bug" in caplog.text


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/checkout/7", 405),  # another method: Quart's answer
        ("POST", "/checkout/7/8", 404),  # another path
        ("POST", "/checkout/", 404),
        ("GET", "/health", 200),
    ],
)
async def test_other_requests_go_to_quart(method: str, path: str, status: int) -> None:
    quart = app(True)
    quart.config["ready"] = True
    client = quart.test_client()
    reply = await (client.get(path) if method == "GET" else client.post(path))
    assert reply.status_code == status


def test_a_rule_needs_one_trailing_parameter() -> None:
    for rule in ("/checkout", "/checkout/<a>/<b>", "/<a>/x"):
        with pytest.raises(ValueError, match="one parameter"):
            FastRoute(
                app(False).asgi_app, service=SERVICE, method="POST", rule=rule, handler=answer
            )
