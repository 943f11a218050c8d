"""Structured logs: one JSON object per line, carrying the job and user ids of
the work in hand (set through `bind()`) and the trace and span ids of the
current OpenTelemetry span, never a `print`. The plain format (LOG_JSON=false)
ends each line with the same fields as `key=value`."""

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


def trace_fields() -> dict[str, str]:
    """trace_id and span_id of the current span (hex, as trace tools show
    them); empty outside a span."""
    try:
        from opentelemetry import trace

        ctx = trace.get_current_span().get_span_context()
    except Exception:  # telemetry must never break logging
        return {}
    if not ctx.is_valid:
        return {}
    return {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}


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
            **trace_fields(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class PlainFormatter(logging.Formatter):
    """One readable line: time, service, level, logger and message, then the
    bound fields and the trace and span ids as `key=value`."""

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {**(_fields.get() or {}), **trace_fields()}
        if not fields:
            return line
        suffix = " ".join(f"{key}={value}" for key, value in fields.items())
        head, sep, tail = line.partition("\n")  # a traceback stays below the line
        return f"{head} {suffix}{sep}{tail}"


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
        handler.setFormatter(PlainFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "urllib3", "nats", "moto", "werkzeug", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_library_errors()
