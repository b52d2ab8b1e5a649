"""Structured logs: one JSON object per line, carrying the saga id and trace id of whatever the
line is about, so that ``grep <trace id>`` over the three services' logs follows one checkout.

The ids come from ``extra={"saga_id": ..., "trace_id": ...}`` on the call, or else from the
context bound by ``bind`` (a ContextVar: the consumer binds each message it hands to a handler,
the checkout route binds its saga). ``LOG_FORMAT=text`` keeps the classic one-line text form.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar, Token

import msgspec

from common.settings import Settings

Ids = tuple[str, str]
"""(saga id, trace id)"""

_ids: ContextVar[Ids | None] = ContextVar("log_ids", default=None)
_json = msgspec.json.Encoder()
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
}


def bind(saga_id: str, trace_id: str) -> Token[Ids | None]:
    """Make the following log lines of this task carry these ids (until ``unbind``)."""
    return _ids.set((saga_id, trace_id))


def unbind(token: Token[Ids | None]) -> None:
    _ids.reset(token)


def current() -> Ids | None:
    """The ids bound in this context, if any."""
    return _ids.get()


def _ids_of(record: logging.LogRecord) -> Ids | None:
    saga_id = getattr(record, "saga_id", None)
    if saga_id is not None:
        return saga_id, getattr(record, "trace_id", "")
    return _ids.get()


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "service", "worker", "saga_id", "trace_id", ...}``;
    other ``extra`` fields are kept; an exception goes into ``exc``."""

    def __init__(self, service: str, worker: str) -> None:
        super().__init__()
        self._service = service
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        doc: dict[str, object] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "service": self._service,
            "worker": self._worker,
        }
        ids = _ids_of(record)
        if ids is not None:
            doc["saga_id"], doc["trace_id"] = ids
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in doc and name not in ("saga_id", "trace_id"):
                doc[name] = value if isinstance(value, str | int | float | bool) else repr(value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return _json.encode(doc).decode()


class TextFormatter(logging.Formatter):
    """The classic line, with ``saga=… trace=…`` appended when the line is about a saga."""

    def __init__(self, worker: str) -> None:
        super().__init__(f"%(asctime)s {worker} %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = _ids_of(record)
        if ids is None:
            return line
        head, sep, tail = line.partition("\n")
        return f"{head} [saga={ids[0]} trace={ids[1]}]{sep}{tail}"


def formatter(settings: Settings) -> logging.Formatter:
    if settings.log_format == "text":
        return TextFormatter(settings.worker_id)
    if settings.log_format != "json":
        raise ValueError(f"LOG_FORMAT must be json or text, got {settings.log_format!r}")
    return JsonFormatter(settings.service_name, settings.worker_id)


def configure(settings: Settings) -> None:
    """The root logger writes ``settings.log_format`` lines to stderr at ``LOG_LEVEL``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(settings))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_checkout_logs", False)]:
        root.removeHandler(old)
    handler._checkout_logs = True  # type: ignore[attr-defined]
    handler.addFilter(OncePerInterval(5.0, prefix="aiokafka"))
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)


class OncePerInterval(logging.Filter):
    """Lets one record of each message template of the loggers under ``prefix`` through per
    ``seconds``: while the broker is down, aiokafka logs the same connection error for every
    request, hundreds a second."""

    def __init__(self, seconds: float, *, prefix: str) -> None:
        super().__init__()
        self._seconds = seconds
        self._prefix = prefix
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefix):
            return True
        key = (record.name, record.msg)
        last = self._last.get(key)
        if last is not None and record.created - last < self._seconds:
            return False
        if len(self._last) > 1000:  # templates are few; this only bounds a surprise
            self._last.clear()
        self._last[key] = record.created
        return True
