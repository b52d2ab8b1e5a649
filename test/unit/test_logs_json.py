"""JSON log lines carry the saga and trace ids bound in their context (or given as extra)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from common.observability import logs
from common.settings import load_settings


@pytest.fixture(autouse=True)
def no_bound_ids() -> Iterator[None]:
    token = logs._ids.set(None)
    yield
    logs._ids.reset(token)


def record(message: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("common.bus", logging.WARNING, __file__, 1, message, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_line_has_the_fixed_fields_and_no_ids_outside_a_saga() -> None:
    line = json.loads(logs.JsonFormatter("stock", "stock-1").format(record("hello %s", "you")))
    assert line["msg"] == "hello you"
    assert (line["level"], line["logger"], line["service"], line["worker"]) == (
        "WARNING",
        "common.bus",
        "stock",
        "stock-1",
    )
    assert line["ts"].endswith("Z") and "T" in line["ts"]
    assert "saga_id" not in line and "trace_id" not in line


def test_bound_ids_appear_and_extra_ids_win() -> None:
    formatter = logs.JsonFormatter("order", "order-0")
    token = logs.bind("o:1:aa", "a" * 32)
    try:
        bound = json.loads(formatter.format(record()))
        given = json.loads(formatter.format(record(saga_id="o:2:bb", trace_id="b" * 32)))
    finally:
        logs.unbind(token)
    assert (bound["saga_id"], bound["trace_id"]) == ("o:1:aa", "a" * 32)
    assert (given["saga_id"], given["trace_id"]) == ("o:2:bb", "b" * 32)
    assert logs.current() is None


def test_extra_fields_and_exceptions_are_kept() -> None:
    try:
        raise RuntimeError("broken")
    except RuntimeError:
        rec = record(order_id="o", count=3, thing=object())
        rec.exc_info = sys.exc_info()
    line = json.loads(logs.JsonFormatter("order", "order-0").format(rec))
    assert (line["order_id"], line["count"]) == ("o", 3)
    assert line["thing"].startswith("<object")
    assert "RuntimeError: broken" in line["exc"]


def test_ids_are_per_task() -> None:
    """Two handlers running concurrently each log their own saga."""
    formatter = logs.JsonFormatter("stock", "stock-0")
    seen: dict[str, str] = {}

    async def handler(saga: str) -> None:
        logs.bind(saga, saga * 16)
        await asyncio.sleep(0.01)
        seen[saga] = json.loads(formatter.format(record()))["saga_id"]

    async def both() -> None:
        await asyncio.gather(handler("x1"), handler("y2"))

    asyncio.run(both())
    assert seen == {"x1": "x1", "y2": "y2"}


def test_text_format_appends_the_ids() -> None:
    formatter = logs.formatter(load_settings({"LOG_FORMAT": "text", "WORKER_ID": "w"}))
    token = logs.bind("o:1:aa", "a" * 32)
    try:
        line = formatter.format(record())
    finally:
        logs.unbind(token)
    assert " w WARNING common.bus: hello %s" in line
    assert line.endswith(f"[saga=o:1:aa trace={'a' * 32}]")


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logs.formatter(load_settings({"LOG_FORMAT": "xml"}))


def test_configure_installs_one_handler_however_often_called() -> None:
    root = logging.getLogger()
    level = root.level
    settings = load_settings({"SERVICE_NAME": "order", "LOG_LEVEL": "INFO"})
    try:
        logs.configure(settings)
        logs.configure(settings)
        ours = [h for h in root.handlers if getattr(h, "_checkout_logs", False)]
        assert len(ours) == 1
        assert isinstance(ours[0].formatter, logs.JsonFormatter)
    finally:
        for handler in [h for h in root.handlers if getattr(h, "_checkout_logs", False)]:
            root.removeHandler(handler)
        root.setLevel(level)


def test_repeated_library_errors_are_let_through_once_per_interval() -> None:
    """aiokafka's one error per request while the broker is down becomes one line per 5 s."""
    once = logs.OncePerInterval(5.0, prefix="aiokafka")

    def record(msg: str, at: float, name: str = "aiokafka.conn") -> logging.LogRecord:
        made = logging.LogRecord(name, logging.ERROR, __file__, 1, msg, ("node 1",), None)
        made.created = at
        return made

    passed = [once.filter(record("Unable connect to %s", t)) for t in (0.0, 0.1, 4.9, 5.1)]
    assert passed == [True, False, False, True]
    assert once.filter(record("Unable to update metadata from %s", 0.2))
    assert all(once.filter(record("our own line", t, "common.bus")) for t in (0.0, 0.1))
