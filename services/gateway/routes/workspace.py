"""/v1/workspace/*: sessions, their items (filed from completed jobs), a live
feed of a session, and saving items to the library."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Response
from fastapi.responses import StreamingResponse

from ourvidz.v1 import workspace_service_pb2 as ws_pb2
from services.gateway import mapping, sse
from services.gateway.deps import CallerDep, gateway, resource_id
from services.gateway.models import (
    ClearSessionOut,
    CreateSessionBody,
    LibraryAssetOut,
    Page,
    PageToken,
    SaveItemBody,
    SessionOut,
    WorkspaceItemOut,
    problem_responses,
)

router = APIRouter(tags=["workspace"])

PageSize = Annotated[int, Query(ge=0, le=1000)]


@router.post("/v1/workspace/sessions", status_code=201, response_model=SessionOut)
async def create_session(
    caller: CallerDep,
    body: Annotated[CreateSessionBody | None, Body()] = None,
    gw=Depends(gateway),
) -> dict:
    name = body.name if body else ""
    reply = await gw.backends.call(
        gw.backends.workspace.CreateSession, ws_pb2.CreateSessionRequest(name=name), caller.token
    )
    return mapping.session(reply.session)


@router.get("/v1/workspace/sessions", response_model=Page[SessionOut])
async def list_sessions(
    caller: CallerDep, page_size: PageSize = 0, page_token: PageToken = "", gw=Depends(gateway)
) -> dict:
    reply = await gw.backends.call(
        gw.backends.workspace.ListSessions,
        ws_pb2.ListSessionsRequest(page_size=page_size, page_token=page_token),
        caller.token,
    )
    return mapping.page([mapping.session(s) for s in reply.sessions], reply.next_page_token)


@router.get("/v1/workspace/sessions/{session_id}", response_model=SessionOut)
async def get_session(session_id: str, caller: CallerDep, gw=Depends(gateway)) -> dict:
    reply = await gw.backends.call(
        gw.backends.workspace.GetSession,
        ws_pb2.GetSessionRequest(session_id=resource_id(session_id, "workspace session")),
        caller.token,
    )
    return mapping.session(reply.session)


@router.get("/v1/workspace/sessions/{session_id}/items", response_model=Page[WorkspaceItemOut])
async def list_items(
    session_id: str,
    caller: CallerDep,
    page_size: PageSize = 0,
    page_token: PageToken = "",
    gw=Depends(gateway),
) -> dict:
    reply = await gw.backends.call(
        gw.backends.workspace.ListSessionItems,
        ws_pb2.ListSessionItemsRequest(
            session_id=resource_id(session_id, "workspace session"),
            page_size=page_size,
            page_token=page_token,
        ),
        caller.token,
    )
    return mapping.page([mapping.workspace_item(i) for i in reply.items], reply.next_page_token)


@router.get(
    "/v1/workspace/sessions/{session_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {sse.MEDIA_TYPE: {}}, "description": "Server-Sent Events"},
        **problem_responses(429),
    },
)
async def session_events(session_id: str, caller: CallerDep, gw=Depends(gateway)):
    """Live events of the session's jobs (`state`, `progress`, ...) and `item`
    events as outputs are filed into it."""
    session_id = resource_id(session_id, "workspace session")
    await gw.backends.call(
        gw.backends.workspace.GetSession,
        ws_pb2.GetSessionRequest(session_id=session_id),
        caller.token,
    )
    request = ws_pb2.WatchSessionRequest(session_id=session_id)

    lease = await gw.throttle.open_stream(caller.user_id)
    call = gw.backends.stream(gw.backends.workspace.WatchSession, request, caller.token)

    async def events():
        async for reply in call:
            update = mapping.session_update(reply)
            if update is not None:
                name, event_id, data = update
                yield sse.event(name, data, event_id)

    return await sse.start(
        gw, lease, call, events(), "the event stream was interrupted; reconnect", stream="session"
    )


@router.post("/v1/workspace/sessions/{session_id}/clear", response_model=ClearSessionOut)
async def clear_session(session_id: str, caller: CallerDep, gw=Depends(gateway)) -> dict:
    reply = await gw.backends.call(
        gw.backends.workspace.ClearSession,
        ws_pb2.ClearSessionRequest(session_id=resource_id(session_id, "workspace session")),
        caller.token,
    )
    return {"deleted_items": reply.deleted_items}


@router.post("/v1/workspace/items/{item_id}/save", status_code=201, response_model=LibraryAssetOut)
async def save_item(
    item_id: str,
    caller: CallerDep,
    body: Annotated[SaveItemBody | None, Body()] = None,
    gw=Depends(gateway),
) -> dict:
    reply = await gw.backends.call(
        gw.backends.workspace.SaveItem,
        ws_pb2.SaveItemRequest(
            item_id=resource_id(item_id, "workspace item"), title=body.title if body else ""
        ),
        caller.token,
    )
    return mapping.library_asset(reply.asset)


@router.delete("/v1/workspace/items/{item_id}", status_code=204, response_class=Response)
async def delete_item(item_id: str, caller: CallerDep, gw=Depends(gateway)) -> Response:
    await gw.backends.call(
        gw.backends.workspace.DeleteItem,
        ws_pb2.DeleteItemRequest(item_id=resource_id(item_id, "workspace item")),
        caller.token,
    )
    return Response(status_code=204)
