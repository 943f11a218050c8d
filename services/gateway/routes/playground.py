"""/v1/playground/chat: a conversation with the enhancer's instruct model,
streamed as Server-Sent Events from the Chat server stream.

Events: `token` ({"delta"}) per piece of text, then `done` ({"tokens_out",
"model", "settings"}). An error before the first token is an ordinary
problem+json answer; once the stream has started it is an `error` event with a
problem body. A client that goes away cancels the gRPC call."""

from __future__ import annotations

import logging

import grpc
from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from ourvidz.v1 import enhancer_service_pb2 as enh_pb2
from services.gateway import mapping, sse
from services.gateway.deps import CallerDep, gateway
from services.gateway.models import ChatBody, problem_responses

log = logging.getLogger(__name__)

router = APIRouter(tags=["playground"])


@router.post(
    "/v1/playground/chat",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {sse.MEDIA_TYPE: {}},
            "description": "Server-Sent Events: `token` ({delta}) ... then `done` "
            "({tokens_out, model, settings}), or `error` (a problem body)",
        },
        **problem_responses(429),
    },
)
async def chat(body: ChatBody, caller: CallerDep, gw=Depends(gateway)) -> StreamingResponse:
    request = enh_pb2.ChatRequest(
        messages=[enh_pb2.ChatMessage(role=m.role, content=m.content) for m in body.messages],
        settings=mapping.generation_settings(body),
    )
    enhancer = gw.backends.enhancer_stub()
    lease = await gw.throttle.open_stream(caller.user_id)
    call = gw.backends.stream(
        enhancer.Chat, request, caller.token, deadline=gw.settings.gateway_chat_deadline_seconds
    )
    # Read up to the first token (or the end) before answering, so an error
    # that comes first (bad input, enhancer down) gets its own HTTP status.
    first: list[enh_pb2.ChatResponse] = []
    try:
        while True:
            reply = await call.read()
            if reply is grpc.aio.EOF:
                break
            first.append(reply)
            if reply.delta or reply.done:
                break
    except BaseException:
        call.cancel()
        await lease.release()
        raise  # grpc.aio.AioRpcError -> problem+json by the app's handlers

    async def events():
        pending = list(first)
        while True:
            if not pending:
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    return
                pending.append(reply)
            reply = pending.pop(0)
            if reply.delta:
                yield sse.event("token", {"delta": reply.delta})
            if reply.done:
                yield sse.event("done", mapping.chat_done(reply))
                return

    return sse.relay(
        gw, lease, call, events(), "the chat was interrupted; try again", stream="chat"
    )
