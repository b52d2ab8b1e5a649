"""``common.http.parse_number``: plain decimal integers in range, everything else a 400."""

from __future__ import annotations

import pytest

from common.errors import BadRequest
from common.http import MAX_NUMBER, parse_number


@pytest.mark.parametrize(
    ("raw", "value"),
    [("0", 0), ("7", 7), ("007", 7), ("1000000", 10**6), (str(MAX_NUMBER), 10**15)],
)
def test_accepts_plain_decimals_up_to_the_limit(raw: str, value: int) -> None:
    assert parse_number(raw, "amount") == value


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "-1",
        "+1",
        "1.0",
        "1.",
        ".5",
        "1e3",
        "1E3",
        "0x10",
        "0b1",
        "0o7",
        "1_000",
        " 1",
        "1 ",
        "\t1",
        "1\n",
        "١",  # ARABIC-INDIC DIGIT ONE: str.isdigit() says yes, int() would accept it
        "１２",  # FULLWIDTH digits
        "²",  # SUPERSCRIPT TWO: isdigit() but not a decimal
        "nan",
        "inf",
        "abc",
        "12a",
        str(MAX_NUMBER + 1),
        "9" * 16,
        "0" * 17,  # more than 16 characters, even though its value is 0
        "1" * 20,
    ],
)
def test_rejects_everything_else(raw: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_number(raw, "amount")
    assert caught.value.http_status == 400
    assert "amount" in caught.value.message


def test_sixteen_zeros_are_still_a_number() -> None:
    assert parse_number("0" * 16, "n") == 0


def test_minimum_is_enforced() -> None:
    assert parse_number("1", "quantity", minimum=1) == 1
    with pytest.raises(BadRequest):
        parse_number("0", "quantity", minimum=1)


async def test_ready_only_once_every_consumer_joined_its_group() -> None:
    """/health says the process serves; /ready also that no consumer still waits for its
    group (a consumer refused by the broker never becomes ready, and a probe sees it)."""
    from quart import Quart

    from common.http import create_app

    waiting = ["orchestrator", "outcomes"]

    async def nothing(_: Quart) -> None:
        return None

    app = create_app("unit", startup=nothing, shutdown=nothing, waiting=lambda: list(waiting))
    async with app.test_app():
        client = app.test_client()
        assert (await client.get("/health")).status_code == 200
        reply = await client.get("/ready")
        assert reply.status_code == 503
        assert (await reply.get_json())["waiting"] == ["orchestrator", "outcomes"]
        waiting.clear()
        assert (await client.get("/ready")).status_code == 200
