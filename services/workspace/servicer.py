"""WorkspaceService over gRPC: requests to domain calls, records to messages.
Every method is the calling user's (a worker token has no workspace)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import grpc

from ourvidz.auth import current_principal
from ourvidz.errors import InvalidArgument, Unauthenticated
from ourvidz.v1 import workspace_service_pb2 as pb
from ourvidz.v1 import workspace_service_pb2_grpc as pb_grpc
from services.workspace import convert
from services.workspace.convert import Signer
from services.workspace.service import Workspace
from services.workspace.watch import Watchers

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["WorkspaceService"].full_name


def _caller() -> uuid.UUID:
    principal = current_principal().require("user", "admin")
    try:
        return uuid.UUID(principal.user_id)
    except ValueError as exc:
        raise Unauthenticated("the token does not name a user") from exc


def _time_or_none(request, name: str) -> datetime | None:
    """An optional Timestamp field as an aware datetime (None when unset)."""
    if not request.HasField(name):
        return None
    try:
        return getattr(request, name).ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:  # outside the years 1..9999
        raise InvalidArgument.field(name, "is not a valid time") from exc


class WorkspaceServicer(pb_grpc.WorkspaceServiceServicer):
    def __init__(self, service: Workspace, signer: Signer, watchers: Watchers) -> None:
        self.service = service
        self.signer = signer
        self.watchers = watchers

    # --- sessions ------------------------------------------------------------------

    async def CreateSession(self, request, context):
        session = await self.service.create_session(_caller(), request.name)
        return pb.CreateSessionResponse(session=convert.session(session))

    async def GetSession(self, request, context):
        session = await self.service.get_session(_caller(), request.session_id)
        return pb.GetSessionResponse(session=convert.session(session))

    async def GetActiveSession(self, request, context):
        session = await self.service.active_session(_caller())
        return pb.GetActiveSessionResponse(session=convert.session(session))

    async def ListSessions(self, request, context):
        page = await self.service.list_sessions(_caller(), request.page_size, request.page_token)
        return pb.ListSessionsResponse(
            sessions=[convert.session(s) for s in page.items], next_page_token=page.next_page_token
        )

    async def ClearSession(self, request, context):
        deleted = await self.service.clear_session(_caller(), request.session_id)
        return pb.ClearSessionResponse(deleted_items=deleted)

    async def ListSessionItems(self, request, context):
        page = await self.service.list_items(
            _caller(), request.session_id, request.page_size, request.page_token
        )
        return pb.ListSessionItemsResponse(
            items=[self.signer.item(i) for i in page.items], next_page_token=page.next_page_token
        )

    async def WatchSession(self, request, context: grpc.aio.ServicerContext):
        user_id = _caller()
        session = await self.service.get_session(user_id, request.session_id)
        watch = await self.watchers.open(str(user_id), str(session.id), session.active)
        # Initial metadata tells the caller that updates from now on will reach it.
        await context.send_initial_metadata(())
        async for update in watch.updates():
            yield update

    async def SaveItem(self, request, context):
        asset = await self.service.save_item(_caller(), request.item_id, request.title)
        return pb.SaveItemResponse(asset=self.signer.asset(asset))

    async def DeleteItem(self, request, context):
        await self.service.delete_item(_caller(), request.item_id)
        return pb.DeleteItemResponse()

    # --- library -------------------------------------------------------------------

    async def ListAssets(self, request, context):
        page = await self.service.list_assets(
            _caller(),
            request.page_size,
            request.page_token,
            media_type=request.media_type,
            job_type=request.job_type,
            created_after=_time_or_none(request, "created_after"),
            created_before=_time_or_none(request, "created_before"),
        )
        return pb.ListAssetsResponse(
            assets=[self.signer.asset(a) for a in page.items], next_page_token=page.next_page_token
        )

    async def GetAsset(self, request, context):
        asset = await self.service.get_asset(_caller(), request.asset_id)
        return pb.GetAssetResponse(asset=self.signer.asset(asset))

    async def UpdateAsset(self, request, context):
        asset = await self.service.rename_asset(_caller(), request.asset_id, request.title)
        return pb.UpdateAssetResponse(asset=self.signer.asset(asset))

    async def DeleteAsset(self, request, context):
        await self.service.delete_asset(_caller(), request.asset_id)
        return pb.DeleteAssetResponse()

    # --- uploads -------------------------------------------------------------------

    async def CreateUpload(self, request, context):
        upload = await self.service.create_upload(_caller(), request.data)
        return pb.CreateUploadResponse(upload=convert.upload(upload))

    async def GetUpload(self, request, context):
        upload = await self.service.get_upload(_caller(), request.upload_id)
        return pb.GetUploadResponse(upload=convert.upload(upload))
