"""Request body limits, applied before anything parses a body: the declared
Content-Length is checked first, and the bytes actually received are counted
(a client may lie, or stream without a length)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ourvidz.errors import FieldViolation
from services.gateway.problems import PROBLEM_TYPE, PayloadTooLarge, problem_bytes

UPLOAD_PATHS = ("/v1/uploads",)
DRAIN_LIMIT = 64 * 1024 * 1024


class BodyLimitMiddleware:
    def __init__(
        self, app: ASGIApp, *, json_limit: int, upload_limit: int, upload_overhead: int
    ) -> None:
        self.app = app
        self.json_limit = json_limit
        self.upload_limit = upload_limit
        self.upload_overhead = upload_overhead

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"].rstrip("/") in UPLOAD_PATHS
        # The stated limit of an upload is the file's; the multipart framing around
        # it gets some room on top.
        stated = self.upload_limit if upload else self.json_limit
        allowed = self.upload_limit + self.upload_overhead if upload else self.json_limit
        field = "file" if upload else None

        declared = _content_length(scope)
        if declared == -1:
            await _reply(send, 400, "invalid Content-Length header")
            return
        if declared is not None and declared > allowed:
            # Read (and drop) a moderately oversized body before answering, so
            # the client, still sending, reads the 413 instead of a reset.
            if declared <= DRAIN_LIMIT:
                await _discard(receive)
            await _reply(send, 413, f"the request body exceeds {stated} bytes", field, stated)
            return

        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > allowed:
                    raise PayloadTooLarge(stated, field)
            return message

        await self.app(scope, counted, send)


async def _discard(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return -1
            return length if length >= 0 else -1
    return None


async def _reply(
    send: Send, status: int, detail: str, field: str | None = None, limit: int = 0
) -> None:
    errors = [FieldViolation(field, f"must be at most {limit} bytes")] if field else None
    body = problem_bytes(status, detail, errors)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
