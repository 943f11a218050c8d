"""What Jobs asks the workspace service (which owns uploads and sessions) on
a caller's behalf: where a reference image is stored, and whether a workspace
session is the caller's. A small class so a jobs service can run without a
workspace service when no job uses a reference image or a session."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from ourvidz.errors import InvalidArgument, NotFound, Unavailable
from ourvidz.grpcserver import channel
from ourvidz.v1 import workspace_service_pb2, workspace_service_pb2_grpc


@dataclass(frozen=True)
class UploadLocation:
    bucket: str
    key: str


class UploadResolver:
    """Interface: where the caller's upload `upload_id` is stored."""

    async def resolve(self, upload_id: str, metadata) -> UploadLocation:
        raise InvalidArgument.field("reference_image_id", "reference images are not available")

    async def check_session(self, session_id: str, metadata) -> None:
        """Raise unless the caller's workspace holds the session `session_id`."""
        raise InvalidArgument.field("workspace_session_id", "workspace sessions are not available")

    async def close(self) -> None:
        return None


class WorkspaceUploads(UploadResolver):
    """Asks WorkspaceService.GetUpload with the caller's own credentials, so the
    workspace's isolation rules decide whether the upload is theirs."""

    def __init__(self, addr: str, deadline_seconds: float) -> None:
        self._channel = channel(addr, service="jobs")
        self._stub = workspace_service_pb2_grpc.WorkspaceServiceStub(self._channel)
        self._deadline = deadline_seconds

    async def resolve(self, upload_id: str, metadata) -> UploadLocation:
        try:
            response = await self._stub.GetUpload(
                workspace_service_pb2.GetUploadRequest(upload_id=upload_id),
                metadata=metadata,
                timeout=self._deadline,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise InvalidArgument.field("reference_image_id", "no such upload") from exc
            raise Unavailable("the workspace service is not available") from exc
        return UploadLocation(bucket=response.upload.bucket, key=response.upload.key)

    async def check_session(self, session_id: str, metadata) -> None:
        """GetSession with the caller's credentials: a session of another user
        is not found there, exactly like one that does not exist."""
        try:
            await self._stub.GetSession(
                workspace_service_pb2.GetSessionRequest(session_id=session_id),
                metadata=metadata,
                timeout=self._deadline,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.PERMISSION_DENIED,
            ):
                raise NotFound(
                    "workspace_session_id: no such workspace session",
                    reason="WORKSPACE_SESSION_NOT_FOUND",
                ) from exc
            raise Unavailable("the workspace service is not available") from exc

    async def close(self) -> None:
        await self._channel.close()
