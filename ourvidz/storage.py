"""Blob storage behind one interface: S3 (the `minio` client; MinIO in
production) and a local folder (the embedded default on one machine).

Clients never get credentials, only time-limited signed URLs: S3 presigned GETs,
or for the local store HMAC-signed gateway URLs (`/v1/files/<bucket>/<key>`).

Either way an object is served with the headers `download_headers` gives it: the
content type of what we wrote there, and a Content-Disposition that shows our
images and videos inline and makes anything else a download, never a page.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import os
import re
import time
from abc import ABC, abstractmethod
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlencode

from ourvidz.errors import NotFound

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,511}$")

# What the platform writes (worker outputs, thumbnails, re-encoded uploads), by
# the key's suffix, which the writer chose from what it encoded. These are shown
# inline; any other object is an opaque download.
INLINE_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "mp4": "video/mp4",
}
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]")


def check_location(bucket: str, key: str) -> None:
    if not _BUCKET.match(bucket):
        raise ValueError(f"invalid bucket name {bucket!r}")
    if not _KEY.match(key) or ".." in key.split("/") or "//" in key:
        raise ValueError(f"invalid object key {key!r}")


def content_disposition(disposition: str, filename: str) -> str:
    """A Content-Disposition value with a plain ASCII `filename` every client
    reads and the exact name as RFC 5987 `filename*` (RFC 6266)."""
    plain = _UNSAFE_FILENAME.sub("_", filename).strip("._") or "download"
    return f"{disposition}; filename=\"{plain}\"; filename*=UTF-8''{quote(filename, safe='')}"


def download_headers(key: str) -> dict[str, str]:
    """Content-Type and Content-Disposition to serve the object at `key` with.

    Our images and videos are `inline` with no file name: a page that offers
    one for download names it itself (`<a download="Lighthouse.png">`), and a
    file name in the header would override that choice. Anything else is an
    `attachment` under its own (made safe) name."""
    name = key.rsplit("/", 1)[-1]
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    content_type = INLINE_TYPES.get(suffix)
    if content_type is None:
        return {
            "Content-Type": "application/octet-stream",
            "Content-Disposition": content_disposition("attachment", name),
        }
    return {
        "Content-Type": content_type,
        "Content-Disposition": "inline",
    }


class BlobStore(ABC):
    ttl_seconds: int

    @abstractmethod
    async def ensure_buckets(self, buckets: list[str] | tuple[str, ...]) -> None: ...

    @abstractmethod
    async def put(self, bucket: str, key: str, data: bytes, content_type: str) -> int: ...

    @abstractmethod
    async def get(self, bucket: str, key: str) -> bytes: ...

    @abstractmethod
    async def delete(self, bucket: str, key: str) -> None: ...

    @abstractmethod
    async def exists(self, bucket: str, key: str) -> bool: ...

    @abstractmethod
    async def list_older(
        self, bucket: str, before: datetime, limit: int
    ) -> list[tuple[str, datetime]]:
        """Up to `limit` objects of `bucket` last written before `before`:
        (key, modified). An absent bucket holds nothing."""

    @abstractmethod
    def signed_url(
        self, bucket: str, key: str, ttl_seconds: int | None = None
    ) -> tuple[str, datetime]:
        """A time-limited download URL and the moment it expires."""


def _signature(signing_key: bytes, bucket: str, key: str, expires: int) -> str:
    message = f"{bucket}\n{key}\n{expires}".encode()
    return hmac.new(signing_key, message, hashlib.sha256).hexdigest()


class LocalStore(BlobStore):
    """Objects as files under `root/<bucket>/<key>`; URLs served by the gateway."""

    def __init__(self, root: str | Path, base_url: str, signing_key: str, ttl_seconds: int = 3600):
        self.root = Path(root).resolve()
        self.base_url = base_url.rstrip("/")
        self._signing_key = signing_key.encode()
        self.ttl_seconds = ttl_seconds

    def _path(self, bucket: str, key: str) -> Path:
        check_location(bucket, key)
        path = (self.root / bucket / key).resolve()
        if self.root not in path.parents:
            raise ValueError("object key escapes the store")
        return path

    async def ensure_buckets(self, buckets) -> None:
        for bucket in buckets:
            (self.root / bucket).mkdir(parents=True, exist_ok=True)

    async def put(self, bucket: str, key: str, data: bytes, content_type: str) -> int:
        path = self._path(bucket, key)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # readers never see half a file

        await asyncio.to_thread(write)
        return len(data)

    async def get(self, bucket: str, key: str) -> bytes:
        path = self._path(bucket, key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError as exc:
            raise NotFound(f"object {bucket}/{key} not found") from exc

    def open_path(self, bucket: str, key: str) -> Path:
        return self._path(bucket, key)

    async def delete(self, bucket: str, key: str) -> None:
        self._path(bucket, key).unlink(missing_ok=True)

    async def exists(self, bucket: str, key: str) -> bool:
        return self._path(bucket, key).is_file()

    async def list_older(
        self, bucket: str, before: datetime, limit: int
    ) -> list[tuple[str, datetime]]:
        top = self.root / bucket
        cutoff = before.timestamp()

        def scan() -> list[tuple[str, datetime]]:
            found: list[tuple[str, datetime]] = []
            if not top.is_dir():
                return found
            for path in top.rglob("*"):
                if path.name.startswith(".") or not path.is_file():
                    continue  # a write in progress (see `put`)
                mtime = path.stat().st_mtime
                if mtime < cutoff:
                    key = path.relative_to(top).as_posix()
                    found.append((key, datetime.fromtimestamp(mtime, UTC)))
                    if len(found) >= limit:
                        break
            return found

        return await asyncio.to_thread(scan)

    def signed_url(
        self, bucket: str, key: str, ttl_seconds: int | None = None
    ) -> tuple[str, datetime]:
        check_location(bucket, key)
        expires = int(time.time()) + (ttl_seconds or self.ttl_seconds)
        query = urlencode(
            {"expires": expires, "sig": _signature(self._signing_key, bucket, key, expires)}
        )
        url = f"{self.base_url}/v1/files/{bucket}/{quote(key)}?{query}"
        return url, datetime.fromtimestamp(expires, UTC)

    def verify(self, bucket: str, key: str, expires: int, sig: str) -> bool:
        """True when the signature is ours and has not expired."""
        if expires < time.time():
            return False
        expected = _signature(self._signing_key, bucket, key, expires)
        return hmac.compare_digest(expected, sig)


class S3Store(BlobStore):
    """Any S3 protocol server through the `minio` client (sync, run in threads)."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        secure: bool = False,
        region: str = "us-east-1",
        ttl_seconds: int = 3600,
        public_endpoint: str = "",
    ):
        from minio import Minio

        endpoint = endpoint.removeprefix("http://").removeprefix("https://")
        self.client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region
        )
        # Where clients download from, when that is not where the services
        # reach the server (a cluster's internal Service behind a public
        # name): URLs are presigned for it, with no request to it (the region
        # is given, so the client never looks it up).
        self.signer = self.client
        if public_endpoint:
            self.signer = Minio(
                public_endpoint.removeprefix("http://").removeprefix("https://"),
                access_key=access_key,
                secret_key=secret_key,
                secure=not public_endpoint.startswith("http://"),
                region=region,
            )
        self.ttl_seconds = ttl_seconds

    async def ensure_buckets(self, buckets) -> None:
        def create() -> None:
            for bucket in buckets:
                if not self.client.bucket_exists(bucket):
                    self.client.make_bucket(bucket)

        await asyncio.to_thread(create)

    async def put(self, bucket: str, key: str, data: bytes, content_type: str) -> int:
        check_location(bucket, key)
        await asyncio.to_thread(
            self.client.put_object,
            bucket,
            key,
            io.BytesIO(data),
            len(data),
            content_type=content_type,
        )
        return len(data)

    async def get(self, bucket: str, key: str) -> bytes:
        from minio.error import S3Error

        check_location(bucket, key)

        def read() -> bytes:
            response = self.client.get_object(bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        try:
            return await asyncio.to_thread(read)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                raise NotFound(f"object {bucket}/{key} not found") from exc
            raise

    async def delete(self, bucket: str, key: str) -> None:
        check_location(bucket, key)
        await asyncio.to_thread(self.client.remove_object, bucket, key)

    async def exists(self, bucket: str, key: str) -> bool:
        from minio.error import S3Error

        check_location(bucket, key)
        try:
            await asyncio.to_thread(self.client.stat_object, bucket, key)
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                return False
            raise

    async def list_older(
        self, bucket: str, before: datetime, limit: int
    ) -> list[tuple[str, datetime]]:
        from minio.error import S3Error

        def scan() -> list[tuple[str, datetime]]:
            found: list[tuple[str, datetime]] = []
            try:
                for obj in self.client.list_objects(bucket, recursive=True):
                    if obj.is_dir or obj.last_modified is None:
                        continue
                    if obj.last_modified < before:
                        found.append((obj.object_name, obj.last_modified))
                        if len(found) >= limit:
                            break
            except S3Error as exc:
                if exc.code != "NoSuchBucket":
                    raise
            return found

        return await asyncio.to_thread(scan)

    def signed_url(
        self, bucket: str, key: str, ttl_seconds: int | None = None
    ) -> tuple[str, datetime]:
        check_location(bucket, key)
        ttl = ttl_seconds or self.ttl_seconds
        # S3's response overrides, signed into the URL: the object is served
        # with our type and disposition whatever it was stored with.
        headers = download_headers(key)
        url = self.signer.presigned_get_object(
            bucket,
            key,
            expires=timedelta(seconds=ttl),
            response_headers={
                "response-content-type": headers["Content-Type"],
                "response-content-disposition": headers["Content-Disposition"],
            },
        )
        return url, datetime.now(UTC) + timedelta(seconds=ttl)


def store_from_settings(settings) -> BlobStore:
    """The store a `CommonSettings` describes."""
    if settings.storage_backend == "s3":
        return S3Store(
            settings.s3_endpoint,
            settings.s3_access_key.get_secret_value(),
            settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
            region=settings.s3_region,
            ttl_seconds=settings.signed_url_ttl_seconds,
            public_endpoint=settings.s3_public_endpoint,
        )
    return LocalStore(
        settings.storage_root,
        settings.public_base_url,
        settings.storage_signing_key.get_secret_value(),
        ttl_seconds=settings.signed_url_ttl_seconds,
    )
