"""Server-Sent Events: formatting, and a stream that sends keep-alive comments
while its source is idle so proxies keep the connection open."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

import grpc
from fastapi.responses import StreamingResponse

from ourvidz.errors import Unavailable
from services.gateway.metrics import watched
from services.gateway.problems import rpc_problem_body
from services.gateway.throttle import StreamLease

log = logging.getLogger(__name__)

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
MEDIA_TYPE = "text/event-stream"
KEEPALIVE = b": keep-alive\n\n"


def event(name: str, data: dict, event_id: int | str | None = None) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {name}")
    # Compact JSON has no newline, so one data line holds it.
    lines.append("data: " + json.dumps(data, separators=(",", ":"), default=str))
    return ("\n".join(lines) + "\n\n").encode()


def parse_last_event_id(value: str | None) -> int:
    """The sequence to resume after; anything unreadable starts from the beginning."""
    try:
        sequence = int((value or "").strip())
    except ValueError:
        return 0
    # Sequences are int64; one past them all means "nothing more to replay".
    return min(max(sequence, 0), 2**63 - 1)


async def with_keepalive(
    source: AsyncIterator[bytes], interval: float, stop: asyncio.Event | None = None
) -> AsyncIterator[bytes]:
    """Yield `source`'s chunks, and a comment after every `interval` seconds of
    silence; end early when `stop` is set (the server is shutting down, and an
    open stream would hold the shutdown up). The source runs in its own task (so
    waiting for it never cancels a read); closing this generator cancels it."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump() -> None:
        try:
            async for chunk in source:
                queue.put_nowait(chunk)
        finally:
            queue.put_nowait(done)

    async def stopped() -> None:
        await stop.wait()
        queue.put_nowait(done)

    task = asyncio.create_task(pump())
    watcher = asyncio.create_task(stopped()) if stop is not None else None
    try:
        yield b"retry: 3000\n\n"
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), interval)
            except TimeoutError:
                yield KEEPALIVE
                continue
            if item is done:
                break
            yield item
        if not task.done() and stop is not None and stop.is_set():
            return
        await task  # surfaces an error of the source to the log below
    except Exception:
        log.exception("event stream failed")
    finally:
        if watcher is not None:
            watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def opened(call, within: float) -> None:
    """Wait until the service has taken the stream on (it sends its initial
    metadata once it watches), so that a refusal is the HTTP answer: a 404, or
    a 503 while its database or NATS is down, rather than a 200 whose stream
    breaks at once. A stream that does not open `within` seconds is a 503."""
    try:
        await asyncio.wait_for(call.initial_metadata(), within)
    except TimeoutError:
        call.cancel()
        raise Unavailable("the event stream did not open in time") from None
    if call.done() and await call.code() != grpc.StatusCode.OK:
        await call.read()  # raises the call's error, which the problem handlers map


async def start(
    gw, lease: StreamLease, call, events: AsyncIterator[bytes], interrupted: str, *, stream: str
) -> StreamingResponse:
    """Wait for the service to take the stream on, then relay it; `lease`, the
    caller's open-stream lease, is released if the stream never starts."""
    try:
        await opened(call, gw.backends.deadline)
    except BaseException:
        call.cancel()
        await lease.release()
        raise
    return relay(gw, lease, call, events, interrupted, stream=stream)


def relay(
    gw, lease: StreamLease, call, events: AsyncIterator[bytes], interrupted: str, *, stream: str
) -> StreamingResponse:
    """The SSE response of `events`, which read the gRPC server stream `call`:
    keep-alive comments, an early end at shutdown, an `error` event (a problem
    body saying `interrupted`) when the stream breaks after it started, and the
    call cancelled and `lease` released however the response ends (the client
    may simply leave); the lease is refreshed while the stream is open. It is
    counted as open in the `stream` kind of the SSE watchers gauge."""

    async def guarded() -> AsyncIterator[bytes]:
        async with lease.held():
            try:
                async for chunk in events:
                    yield chunk
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.CANCELLED:
                    yield event("error", rpc_problem_body(err, interrupted))
            finally:
                call.cancel()

    return StreamingResponse(
        watched(
            stream,
            with_keepalive(guarded(), gw.settings.gateway_sse_keepalive_seconds, gw.stopping),
        ),
        media_type=MEDIA_TYPE,
        headers=HEADERS,
    )
