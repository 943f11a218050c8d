"""Prometheus metrics of the HTTP API: request counts and latency by route
template (never the raw path, whose ids would explode the label space), and
the open event streams. The metrics live on the process's default registry
(ourvidz.metrics) and are served on the internal metrics port, not by the API."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ourvidz import metrics

# The kinds of event stream (`sse.relay`'s `stream`): their gauges read 0
# before the first stream opens, rather than being absent.
STREAM_KINDS = ("job", "session", "chat")
for _kind in STREAM_KINDS:
    metrics.SSE_WATCHERS.labels(_kind)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets when the app fails before answering
        started = time.perf_counter()

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
            metrics.HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - started)


async def watched(stream: str, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`chunks`, counted in `ourvidz_gateway_sse_watchers{stream}` from its
    first chunk until it ends, however it ends (the client left: the response
    closes or cancels it)."""
    gauge = metrics.SSE_WATCHERS.labels(stream)
    gauge.inc()
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        gauge.dec()
