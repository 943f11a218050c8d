"""/v1/library/assets: the user's permanent images and videos."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import AwareDatetime, BeforeValidator

from ourvidz.v1 import workspace_service_pb2 as ws_pb2
from services.gateway import mapping
from services.gateway.deps import CallerDep, gateway, resource_id
from services.gateway.models import JobTypeName, LibraryAssetOut, Page, PageToken, UpdateAssetBody

router = APIRouter(tags=["library"])

# RFC 3339, as the document's `date-time` format says (not a number of seconds).
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _rfc3339(value: object) -> object:
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 date-time, e.g. 2026-01-31T12:00:00Z")
    return value


DateTime = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]


@router.get("/v1/library/assets", response_model=Page[LibraryAssetOut])
async def list_assets(
    caller: CallerDep,
    media_type: Literal["image", "video"] | None = None,
    job_type: Annotated[JobTypeName | Literal[""], Query(description="empty: every type")] = "",
    created_after: Annotated[
        DateTime | None, Query(description="Only assets created at or after this time")
    ] = None,
    created_before: Annotated[
        DateTime | None, Query(description="Only assets created before this time")
    ] = None,
    page_size: Annotated[int, Query(ge=0, le=1000)] = 0,
    page_token: Annotated[PageToken, Query()] = "",
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
