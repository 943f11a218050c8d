"""Structured logs: one JSON object per line, carrying the job, user and trace
ids of the work in hand (set through `bind()`), never a `print`."""

from __future__ import annotations

import contextvars
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

_fields: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "ourvidz_log_fields", default=None
)


@contextmanager
def bind(**fields: object) -> Iterator[None]:
    """Attach fields (job_id=..., user_id=...) to every record logged inside."""
    token = _fields.set(
        {**(_fields.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    )
    try:
        yield
    finally:
        _fields.reset(token)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
            **(_fields.get() or {}),
        }
        try:
            from opentelemetry import trace

            ctx = trace.get_current_span().get_span_context()
            if ctx.is_valid:
                entry["trace_id"] = f"{ctx.trace_id:032x}"
                entry["span_id"] = f"{ctx.span_id:016x}"
        except Exception:  # telemetry must never break logging
            pass
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class OneLineErrors(logging.Filter):
    """nats-py reports every connection problem as an ERROR with a traceback:
    the lost connection, then each failed reconnect attempt, twice a second
    while the server is away. Here each such record becomes one WARNING line
    ("nats: ConnectionRefusedError: ..."), and the same line is dropped when
    it was logged less than `quiet_seconds` ago."""

    def __init__(self, prefix: str, quiet_seconds: float = 30.0) -> None:
        super().__init__()
        self.prefix = prefix
        self.quiet_seconds = quiet_seconds
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        detail = str(exc).strip().splitlines()
        line = f"{self.prefix}: {type(exc).__name__}: {detail[0] if detail else ''}".rstrip(": ")
        now = time.monotonic()
        if now - self._last.get(line, -math.inf) < self.quiet_seconds:
            return False
        if len(self._last) > 256:
            self._last.clear()
        self._last[line] = now
        record.msg, record.args = "%s", (line,)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


# Library loggers whose errors are expected events (a dependency away), not bugs.
_ONE_LINE_LOGGERS = {"nats.aio.client": "nats"}


def quiet_library_errors() -> None:
    """One line per expected library error instead of a traceback (idempotent).
    `setup()` calls it; so does the in-process stack of the tests."""
    for name, prefix in _ONE_LINE_LOGGERS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, OneLineErrors) for f in logger.filters):
            logger.addFilter(OneLineErrors(prefix))


def setup(service: str, level: str = "INFO", as_json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "urllib3", "nats", "moto", "werkzeug", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_library_errors()
