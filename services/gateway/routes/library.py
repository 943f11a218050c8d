"""/v1/library/assets: the user's permanent images and videos."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import AwareDatetime

from ourvidz.v1 import workspace_service_pb2 as ws_pb2
from services.gateway import mapping
from services.gateway.deps import CallerDep, gateway, resource_id
from services.gateway.models import PROBLEM_RESPONSES, LibraryAssetOut, Page, UpdateAssetBody

router = APIRouter(tags=["library"], responses=PROBLEM_RESPONSES)


@router.get("/v1/library/assets", response_model=Page[LibraryAssetOut])
async def list_assets(
    caller: CallerDep,
    media_type: Literal["image", "video"] | None = None,
    job_type: Annotated[str, Query(max_length=64)] = "",
    created_after: Annotated[
        AwareDatetime | None, Query(description="Only assets created at or after this time")
    ] = None,
    created_before: Annotated[
        AwareDatetime | None, Query(description="Only assets created before this time")
    ] = None,
    page_size: Annotated[int, Query(ge=0, le=1000)] = 0,
    page_token: Annotated[str, Query(max_length=1024)] = "",
    gw=Depends(gateway),
) -> dict:
    request = ws_pb2.ListAssetsRequest(
        page_size=page_size,
        page_token=page_token,
        media_type=media_type or "",
        job_type=job_type,
    )
    # Unset Timestamps mean "no bound"; only set the ones that were given.
    if created_after is not None:
        request.created_after.FromDatetime(created_after)
    if created_before is not None:
        request.created_before.FromDatetime(created_before)
    reply = await gw.backends.call(gw.backends.workspace.ListAssets, request, caller.token)
    return mapping.page([mapping.library_asset(a) for a in reply.assets], reply.next_page_token)


@router.get("/v1/library/assets/{asset_id}", response_model=LibraryAssetOut)
async def get_asset(asset_id: str, caller: CallerDep, gw=Depends(gateway)) -> dict:
    reply = await gw.backends.call(
        gw.backends.workspace.GetAsset,
        ws_pb2.GetAssetRequest(asset_id=resource_id(asset_id, "asset")),
        caller.token,
    )
    return mapping.library_asset(reply.asset)


@router.patch("/v1/library/assets/{asset_id}", response_model=LibraryAssetOut)
async def update_asset(
    asset_id: str, body: UpdateAssetBody, caller: CallerDep, gw=Depends(gateway)
) -> dict:
    reply = await gw.backends.call(
        gw.backends.workspace.UpdateAsset,
        ws_pb2.UpdateAssetRequest(asset_id=resource_id(asset_id, "asset"), title=body.title),
        caller.token,
    )
    return mapping.library_asset(reply.asset)


@router.delete("/v1/library/assets/{asset_id}", status_code=204, response_class=Response)
async def delete_asset(asset_id: str, caller: CallerDep, gw=Depends(gateway)) -> Response:
    await gw.backends.call(
        gw.backends.workspace.DeleteAsset,
        ws_pb2.DeleteAssetRequest(asset_id=resource_id(asset_id, "asset")),
        caller.token,
    )
    return Response(status_code=204)
