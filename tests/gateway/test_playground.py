"""/v1/playground/chat: the Chat server stream as SSE (token events, then
done), errors before the first token as problem+json and after it as an
`error` event, validation, and a client that goes away cancelling the call
(over a real uvicorn)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from services.gateway.main import start
from tests.gateway.gateway_helpers import (
    assert_problem,
    auth,
    gateway_settings,
    parse_sse,
    serve_app,
)

CHAT = "/v1/playground/chat"


def conversation(last: str = "Describe a harbour at dawn.") -> dict:
    return {
        "messages": [
            {"role": "system", "content": "You are a concise art director."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi! What shall we make?"},
            {"role": "user", "content": last},
        ]
    }


async def test_chat_streams_tokens_then_done(client, enhancer, user_token):
    _, fake = enhancer
    user_id, token = user_token
    body = {**conversation(), "temperature": 0.4, "seed": 11}
    r = await client.post(CHAT, json=body, headers=auth(token))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    names = [e["event"] for e in events]
    assert names == ["token"] * 5 + ["done"]
    assert "".join(e["data"]["delta"] for e in events[:-1]) == "A misty harbour at dawn"
    done = events[-1]["data"]
    assert done["tokens_out"] == 5 and done["model"] == "qwen2.5-tiny"
    assert done["settings"] == {"temperature": 0.4, "top_p": 0.9, "max_new_tokens": 200, "seed": 11}

    _, request, subject = fake.last("Chat")
    assert subject == user_id
    assert [(m.role, m.content) for m in request.messages] == [
        (m["role"], m["content"]) for m in body["messages"]
    ]
    assert request.settings.seed == 11


async def test_an_error_before_the_first_token_is_a_problem(client, user_token):
    r = await client.post(CHAT, json=conversation("fail-first"), headers=auth(user_token[1]))
    problem = assert_problem(r, 422)
    assert problem["errors"] == [{"field": "messages", "message": "too long for the model"}]


async def test_an_error_after_the_first_token_is_an_error_event(client, user_token):
    r = await client.post(CHAT, json=conversation("fail-mid"), headers=auth(user_token[1]))
    assert r.status_code == 200
    events = parse_sse(r.text)
    assert [e["event"] for e in events] == ["token", "token", "error"]
    problem = events[-1]["data"]
    assert {"type", "title", "status", "detail"} <= problem.keys()
    assert problem["status"] == 503
    assert "crashed" not in problem["detail"]  # a 5xx says nothing internal


BAD_CHATS = [
    ({"messages": []}, "messages"),
    ({}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "  "}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "x" * 8001}]}, "messages.0.content"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}] * 51}, "messages"),
    ({**conversation(), "top_p": 2}, "top_p"),
    ({**conversation(), "max_new_tokens": -1}, "max_new_tokens"),
]


@pytest.mark.parametrize(
    ("body", "field"), BAD_CHATS, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_CHATS)]
)
async def test_chat_validates_before_calling_the_enhancer(
    client, enhancer, user_token, body, field
):
    _, fake = enhancer
    before = fake.methods().count("Chat")
    r = await client.post(CHAT, json=body, headers=auth(user_token[1]))
    problem = assert_problem(r, 422)
    assert field in [e["field"] for e in problem["errors"]], problem
    assert fake.methods().count("Chat") == before


async def test_chat_needs_a_signed_in_caller(client):
    assert_problem(await client.post(CHAT, json=conversation()), 401)


async def test_chat_with_the_enhancer_down_is_503(base_env, fakes, user_token):
    served, _, _ = fakes
    async with serve_app(gateway_settings(base_env, served.port, enhancer_port=1)) as http:
        r = await http.post(CHAT, json=conversation(), headers=auth(user_token[1]))
    assert_problem(r, 503)


async def test_client_disconnect_cancels_the_chat(base_env, fakes, enhancer, user_token):
    served, _, _ = fakes
    enhancer_served, fake = enhancer
    fake.chat_closed.clear()
    running = await start(gateway_settings(base_env, served.port, enhancer_served.port), port=0)
    try:
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.port}") as http,
            http.stream("POST", CHAT, json=conversation("hold"), headers=auth(user_token[1])) as r,
        ):
            assert r.status_code == 200
            buffer = ""
            async for text in r.aiter_text():
                buffer += text
                if "event: token" in buffer and buffer.endswith("\n\n"):
                    break
            assert parse_sse(buffer)[0]["data"] == {"delta": "A "}
            assert not fake.chat_closed.is_set()  # the stream is held open
        # The client has gone: the gateway cancels the gRPC call.
        await asyncio.wait_for(fake.chat_closed.wait(), 10)
    finally:
        await running.stop()
