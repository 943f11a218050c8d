"""The workspace's operations: each runs in one transaction that carries its
caller, and touches blobs only after the database has committed.

Blobs: an output is shared by a workspace item and a library asset made from
it (saving copies nothing), so an object is deleted only once no item and no
asset points at it any more.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from psycopg import AsyncConnection

from ourvidz.catalog import REFERENCE_BUCKET
from ourvidz.db import Database
from ourvidz.errors import InvalidArgument, NotFound
from ourvidz.storage import BlobStore
from services.workspace import store
from services.workspace.domain import (
    Asset,
    Completion,
    Item,
    Output,
    Page,
    Session,
    Upload,
    check_job_type,
    check_media_type,
    check_title,
    decode_token,
    default_title,
    encode_token,
    page_size,
    parse_id,
    session_name,
    title_for_save,
)
from services.workspace.images import reencode_image
from services.workspace.settings import WorkspaceSettings

log = logging.getLogger(__name__)

CLEANUP_BATCH = 500
Location = tuple[str, str]


def _locations(records: Iterable[Item | Asset]) -> set[Location]:
    found: set[Location] = set()
    for record in records:
        found.add((record.bucket, record.key))
        if record.thumbnail_bucket and record.thumbnail_key:
            found.add((record.thumbnail_bucket, record.thumbnail_key))
    return found


class Workspace:
    def __init__(self, database: Database, blobs: BlobStore, settings: WorkspaceSettings) -> None:
        self.database = database
        self.blobs = blobs
        self.settings = settings

    # --- helpers -------------------------------------------------------------------

    def _page_size(self, requested: int) -> int:
        return page_size(
            requested,
            self.settings.workspace_default_page_size,
            self.settings.workspace_max_page_size,
        )

    async def _unreferenced(
        self, conn: AsyncConnection, records: Iterable[Item | Asset]
    ) -> list[Location]:
        """The objects of `records` that nothing points at any more (call after
        deleting the rows, inside the same transaction)."""
        return [
            loc for loc in sorted(_locations(records)) if not await store.is_referenced(conn, *loc)
        ]

    async def _delete_blobs(self, locations: Iterable[Location]) -> None:
        """Best effort: a blob left behind costs storage, never correctness."""
        for bucket, key in locations:
            try:
                await self.blobs.delete(bucket, key)
            except Exception:
                log.warning("could not delete blob %s/%s", bucket, key, exc_info=True)

    # --- sessions ------------------------------------------------------------------

    async def create_session(self, user_id: uuid.UUID, name: str) -> Session:
        name = session_name(name, datetime.now(UTC))
        async with self.database.tx(user_id=str(user_id)) as conn:
            await store.lock_user(conn, user_id)
            row = await store.insert_active_session(conn, user_id, name)
        return Session.from_row(row)

    async def get_session(self, user_id: uuid.UUID, session_id: str) -> Session:
        sid = parse_id(session_id, "session")
        async with self.database.tx(user_id=str(user_id)) as conn:
            row = await store.get_session(conn, user_id, sid)
        if row is None:
            raise NotFound("session not found")
        return Session.from_row(row)

    async def _active_session(self, conn: AsyncConnection, user_id: uuid.UUID) -> dict:
        """The user's active session, locked, created when there is none."""
        await store.lock_user(conn, user_id)
        row = await store.get_active_session(conn, user_id)
        if row is not None:
            row = await store.get_session(conn, user_id, row["id"], lock=True)
        if row is None:
            row = await store.insert_active_session(
                conn, user_id, session_name("", datetime.now(UTC))
            )
        return row

    async def active_session(self, user_id: uuid.UUID) -> Session:
        async with self.database.tx(user_id=str(user_id)) as conn:
            row = await self._active_session(conn, user_id)
            await store.touch_session(conn, row["id"])
        return Session.from_row(row)

    async def list_sessions(
        self, user_id: uuid.UUID, requested_size: int, token: str
    ) -> Page[Session]:
        size = self._page_size(requested_size)
        after = decode_token(token, 2)
        async with self.database.tx(user_id=str(user_id)) as conn:
            rows = await store.list_sessions(conn, user_id, size + 1, after)
        sessions = [Session.from_row(r) for r in rows[:size]]
        more = len(rows) > size
        next_token = encode_token([sessions[-1].created_at, sessions[-1].id]) if more else ""
        return Page(sessions, next_token)

    async def clear_session(self, user_id: uuid.UUID, session_id: str) -> int:
        sid = parse_id(session_id, "session")
        async with self.database.tx(user_id=str(user_id)) as conn:
            if await store.get_session(conn, user_id, sid, lock=True) is None:
                raise NotFound("session not found")
            items = [Item.from_row(r) for r in await store.delete_session_items(conn, sid)]
            await store.touch_session(conn, sid)
            doomed = await self._unreferenced(conn, items)
        await self._delete_blobs(doomed)
        return len(items)

    async def cleanup_idle(self, now: datetime | None = None) -> int:
        """Retire sessions idle longer than workspace_session_max_idle_seconds:
        their items and unreferenced blobs go as with ClearSession, the session
        is deactivated and no longer listed. Returns how many were retired."""
        now = now or datetime.now(UTC)
        idle_before = now - timedelta(seconds=self.settings.workspace_session_max_idle_seconds)
        async with self.database.tx(role="system") as conn:
            candidates = await store.idle_sessions(conn, idle_before, CLEANUP_BATCH)
        retired = 0
        for candidate in candidates:
            async with self.database.tx(user_id=str(candidate["user_id"]), role="system") as conn:
                if not await store.lock_idle_session(conn, candidate["id"], idle_before):
                    continue
                rows = await store.delete_session_items(conn, candidate["id"])
                await store.retire_session(conn, candidate["id"])
                doomed = await self._unreferenced(conn, [Item.from_row(r) for r in rows])
            await self._delete_blobs(doomed)
            retired += 1
        if retired:
            log.info("retired %d idle sessions", retired)
        return retired

    # --- items ---------------------------------------------------------------------

    async def list_items(
        self, user_id: uuid.UUID, session_id: str, requested_size: int, token: str
    ) -> Page[Item]:
        sid = parse_id(session_id, "session")
        size = self._page_size(requested_size)
        after = decode_token(token, 3)
        async with self.database.tx(user_id=str(user_id)) as conn:
            if await store.get_session(conn, user_id, sid) is None:
                raise NotFound("session not found")
            rows = await store.list_items(conn, sid, user_id, size + 1, after)
        items = [Item.from_row(r) for r in rows[:size]]
        more = len(rows) > size
        last = items[-1] if more else None
        next_token = encode_token([last.created_at, last.job_id, last.index]) if last else ""
        return Page(items, next_token)

    async def save_item(self, user_id: uuid.UUID, item_id: str, title: str) -> Asset:
        """Put an item's output into the library (no copy: both point at the same
        object). Saving again returns the asset made the first time."""
        iid = parse_id(item_id, "item")
        if (title or "").strip():
            check_title(title)
        async with self.database.tx(user_id=str(user_id)) as conn:
            row = await store.get_item(conn, user_id, iid, lock=True)
            if row is None:
                raise NotFound("item not found")
            item = Item.from_row(row)
            if item.library_asset_id:
                existing = await store.get_asset(conn, user_id, item.library_asset_id)
                if existing is not None:
                    return Asset.from_row(existing)
            asset_row = await store.insert_asset(
                conn,
                user_id=user_id,
                job_id=item.job_id,
                job_type=item.job_type,
                title=title_for_save(title, item.original_prompt or item.prompt),
                prompt=item.prompt,
                original_prompt=item.original_prompt,
                negative_prompt=item.negative_prompt,
                output=_output_of(item),
            ) or await store.find_asset(conn, user_id, item.job_id, item.index)
            await store.set_item_asset(conn, item.id, asset_row["id"])
            await store.touch_session(conn, item.session_id)
        return Asset.from_row(asset_row)

    async def delete_item(self, user_id: uuid.UUID, item_id: str) -> None:
        iid = parse_id(item_id, "item")
        async with self.database.tx(user_id=str(user_id)) as conn:
            row = await store.get_item(conn, user_id, iid, lock=True)
            if row is None:
                raise NotFound("item not found")
            item = Item.from_row(row)
            await store.delete_item(conn, iid)
            await store.touch_session(conn, item.session_id)
            doomed = await self._unreferenced(conn, [item])
        await self._delete_blobs(doomed)

    # --- filing --------------------------------------------------------------------

    async def file(self, completion: Completion) -> list[Item]:
        """File a completed job's outputs: into the library, or into the job's
        workspace session (the user's active one when the job named none or its
        session is gone). A completion filed before files nothing again.
        Returns the items filed now."""
        user_id = completion.user_id
        if not completion.outputs:
            return []
        # The service acts for the event's owner: row level security still
        # refuses a row written for anyone else.
        async with self.database.tx(user_id=str(user_id), role="system") as conn:
            if completion.to_library:
                title = default_title(completion.original_prompt)
                for output in completion.outputs:
                    await store.insert_asset(
                        conn,
                        user_id=user_id,
                        job_id=completion.job_id,
                        job_type=completion.job_type,
                        title=title,
                        prompt=completion.prompt,
                        original_prompt=completion.original_prompt,
                        negative_prompt=completion.negative_prompt,
                        output=output,
                    )
                return []
            session = None
            if completion.session_id:
                session = await store.get_session(conn, user_id, completion.session_id, lock=True)
            if session is None:
                session = await self._active_session(conn, user_id)
            filed = []
            for output in completion.outputs:
                row = await store.insert_item(
                    conn,
                    session_id=session["id"],
                    user_id=user_id,
                    job_id=completion.job_id,
                    job_type=completion.job_type,
                    prompt=completion.prompt,
                    original_prompt=completion.original_prompt,
                    negative_prompt=completion.negative_prompt,
                    output=output,
                )
                if row is not None:
                    filed.append(Item.from_row(row))
            if filed:
                await store.touch_session(conn, session["id"])
        return filed

    # --- library -------------------------------------------------------------------

    async def list_assets(
        self,
        user_id: uuid.UUID,
        requested_size: int,
        token: str,
        *,
        media_type: str = "",
        job_type: str = "",
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> Page[Asset]:
        """Newest first; `created_after` is inclusive, `created_before` exclusive."""
        size = self._page_size(requested_size)
        media = check_media_type(media_type)
        kind = check_job_type(job_type)
        if created_after and created_before and created_after >= created_before:
            raise InvalidArgument.field("created_before", "must be later than created_after")
        after = decode_token(token, 2)
        async with self.database.tx(user_id=str(user_id)) as conn:
            rows = await store.list_assets(
                conn,
                user_id,
                size + 1,
                after,
                media_type=media,
                job_type=kind,
                created_after=created_after,
                created_before=created_before,
            )
        assets = [Asset.from_row(r) for r in rows[:size]]
        more = len(rows) > size
        next_token = encode_token([assets[-1].created_at, assets[-1].id]) if more else ""
        return Page(assets, next_token)

    async def get_asset(self, user_id: uuid.UUID, asset_id: str) -> Asset:
        aid = parse_id(asset_id, "asset")
        async with self.database.tx(user_id=str(user_id)) as conn:
            row = await store.get_asset(conn, user_id, aid)
        if row is None:
            raise NotFound("asset not found")
        return Asset.from_row(row)

    async def rename_asset(self, user_id: uuid.UUID, asset_id: str, title: str) -> Asset:
        aid = parse_id(asset_id, "asset")
        text = check_title(title)
        async with self.database.tx(user_id=str(user_id)) as conn:
            row = await store.rename_asset(conn, user_id, aid, text)
        if row is None:
            raise NotFound("asset not found")
        return Asset.from_row(row)

    async def delete_asset(self, user_id: uuid.UUID, asset_id: str) -> None:
        aid = parse_id(asset_id, "asset")
        async with self.database.tx(user_id=str(user_id)) as conn:
            row = await store.delete_asset(conn, user_id, aid)
            if row is None:
                raise NotFound("asset not found")
            doomed = await self._unreferenced(conn, [Asset.from_row(row)])
        await self._delete_blobs(doomed)

    # --- uploads -------------------------------------------------------------------

    async def create_upload(self, user_id: uuid.UUID, data: bytes) -> Upload:
        """Store a reference image once it has decoded as PNG, JPEG or WebP
        within the size and pixel limits, re-encoded from its pixels (see
        `images`): never the uploaded bytes. Nothing is stored otherwise."""
        image = await asyncio.to_thread(
            reencode_image,
            data,
            max_bytes=self.settings.workspace_upload_max_bytes,
            max_pixels=self.settings.workspace_upload_max_pixels,
        )
        upload_id = uuid.uuid4()
        key = f"{user_id}/{upload_id}.{image.extension}"
        stored = False
        try:
            async with self.database.tx(user_id=str(user_id)) as conn:
                row = await store.insert_upload(
                    conn,
                    id=upload_id,
                    user_id=user_id,
                    bucket=REFERENCE_BUCKET,
                    key=key,
                    content_type=image.content_type,
                    width=image.width,
                    height=image.height,
                    size_bytes=len(image.data),
                )
                await self.blobs.put(REFERENCE_BUCKET, key, image.data, image.content_type)
                stored = True
        except BaseException:
            if stored:  # the row did not commit: take the blob back
                await self._delete_blobs([(REFERENCE_BUCKET, key)])
            raise
        return Upload.from_row(row)

    async def get_upload(self, user_id: uuid.UUID, upload_id: str) -> Upload:
        uid = parse_id(upload_id, "upload")
        async with self.database.tx(user_id=str(user_id)) as conn:
            row = await store.get_upload(conn, user_id, uid)
        if row is None:
            raise NotFound("upload not found")
        return Upload.from_row(row)


def _output_of(item: Item) -> Output:
    return Output(
        index=item.index,
        content_type=item.content_type,
        width=item.width,
        height=item.height,
        seed=item.seed,
        bucket=item.bucket,
        key=item.key,
        thumbnail_bucket=item.thumbnail_bucket,
        thumbnail_key=item.thumbnail_key,
        size_bytes=item.size_bytes,
    )
