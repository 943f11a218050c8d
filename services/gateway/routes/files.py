"""/v1/files/{bucket}/{key}: downloads of the local blob store through the
HMAC-signed, time-limited URLs it hands out. Mounted only when storage is local
(with S3, clients download from presigned URLs instead)."""

from __future__ import annotations

import mimetypes
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse

from ourvidz.errors import NotFound, PermissionDenied
from services.gateway.deps import gateway
from services.gateway.models import problem_responses

router = APIRouter(tags=["files"])

_TYPES = {".png": "image/png", ".mp4": "video/mp4", ".jpg": "image/jpeg", ".webp": "image/webp"}


def content_type(key: str) -> str:
    suffix = "." + key.rsplit(".", 1)[-1].lower() if "." in key else ""
    return _TYPES.get(suffix) or mimetypes.guess_type(key)[0] or "application/octet-stream"


_BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.get(
    "/v1/files/{bucket}/{key:path}",
    response_class=FileResponse,
    responses={
        200: {
            "description": "The file",
            "content": {t: _BINARY for t in (*_TYPES.values(), "application/octet-stream")},
        },
        **problem_responses(403),  # the signature is missing, wrong or expired
    },
)
async def get_file(
    bucket: str,
    key: str,
    expires: Annotated[int | None, Query()] = None,
    sig: Annotated[str | None, Query(max_length=128)] = None,
    gw=Depends(gateway),
) -> FileResponse:
    store = gw.local_store
    if expires is None or not sig or not store.verify(bucket, key, expires, sig):
        raise PermissionDenied("the link is invalid or has expired", reason="BAD_SIGNATURE")
    try:
        path = store.open_path(bucket, key)
    except ValueError as exc:
        raise NotFound("file not found") from exc
    if not path.is_file():
        raise NotFound("file not found")
    return FileResponse(
        path,
        media_type=content_type(key),
        headers={"Cache-Control": f"private, max-age={max(expires - int(time.time()), 0)}"},
    )
