"""Structured logs: one JSON object per line, carrying the job, user and trace
ids of the work in hand (set through `bind()`), never a `print`."""

from __future__ import annotations

import contextvars
import json
import logging
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
