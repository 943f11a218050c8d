"""/v1/uploads: reference images. The workspace service decodes and checks the
image and stores a fresh encoding of its pixels (no trailing data, no metadata);
the gateway only bounds its size."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, UploadFile

from ourvidz.errors import InvalidArgument
from ourvidz.v1 import workspace_service_pb2 as ws_pb2
from services.gateway import mapping
from services.gateway.deps import CallerDep, gateway
from services.gateway.models import UploadOut
from services.gateway.problems import PayloadTooLarge

router = APIRouter(tags=["uploads"])


@router.post("/v1/uploads", status_code=201, response_model=UploadOut)
async def create_upload(
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="A PNG, JPEG or WebP reference image")],
    gw=Depends(gateway),
) -> dict:
    """Upload a reference image. It is stored re-encoded from its decoded pixels
    (EXIF orientation applied, metadata and any trailing data dropped); the
    answer describes what was stored. Animated images and images over the pixel
    limit are refused, naming `file`."""
    limit = gw.settings.gateway_max_upload_bytes
    data = await file.read(limit + 1)
    await file.close()
    if len(data) > limit:
        raise PayloadTooLarge(limit, "file")
    if not data:
        raise InvalidArgument.field("file", "is empty")
    reply = await gw.backends.call(
        gw.backends.workspace.CreateUpload,
        ws_pb2.CreateUploadRequest(
            data=data,
            filename=(file.filename or "")[:255],
            content_type=file.content_type or "",
        ),
        caller.token,
        deadline=gw.settings.gateway_upload_deadline_seconds,
    )
    return mapping.upload(reply.upload)
