"""/v1/files/{bucket}/{key}: downloads of the local blob store through the
HMAC-signed, time-limited URLs it hands out. Mounted only when storage is local
(with S3, clients download from presigned URLs instead).

Each file is served with the headers `ourvidz.storage.download_headers` gives
it, the same an S3 presigned URL asks for: our images and videos inline under
their own type, anything else as an `application/octet-stream` attachment, so
no stored object is ever rendered as a page (`nosniff` comes from the app)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse

from ourvidz.errors import NotFound, PermissionDenied
from ourvidz.storage import INLINE_TYPES, download_headers
from services.gateway.deps import gateway
from services.gateway.models import problem_responses

router = APIRouter(tags=["files"])

_BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.get(
    "/v1/files/{bucket}/{key:path}",
    response_class=FileResponse,
    responses={
        200: {
            "description": "The file",
            "content": {t: _BINARY for t in (*INLINE_TYPES.values(), "application/octet-stream")},
            "headers": {
                "Content-Disposition": {
                    "description": "inline for images and videos, else attachment",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
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
    headers = download_headers(key)
    return FileResponse(
        path,
        media_type=headers.pop("Content-Type"),
        headers={
            **headers,
            "Cache-Control": f"private, max-age={max(expires - int(time.time()), 0)}",
        },
    )
