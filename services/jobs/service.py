"""What the jobs service does, one method per operation. Each change runs in
one transaction: lock the job, check the transition, update it, write the next
events and the outbox rows that carry them (and any task) to JetStream."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from ourvidz import catalog, queue
from ourvidz.db import Database
from ourvidz.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from ourvidz.policy import PromptPolicy
from ourvidz.settings import CatalogLimits
from ourvidz.storage import BlobStore, check_location
from ourvidz.v1 import job_pb2
from services.jobs import convert, domain, store
from services.jobs.uploads import UploadResolver

log = logging.getLogger(__name__)

ENHANCE_MSG_SUFFIX = ":enhance"
# Starts the fallback reason of an enhancement that timed out in Jobs.
ENHANCE_TIMEOUT_CODE = "ENHANCER_TIMEOUT"
MAX_REASON_CHARS = 500


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Emit:
    """One event to write: its kind, and a preview image for `preview`."""

    kind: str
    preview_png: bytes = b""

    @property
    def snapshot(self) -> bool:
        return self.kind not in ("progress", "preview")


class JobsCore:
    def __init__(
        self,
        database: Database,
        *,
        limits: CatalogLimits,
        blobs: BlobStore,
        uploads: UploadResolver,
        max_active_per_user: int,
        max_preview_bytes: int,
        policy: PromptPolicy | None = None,
    ) -> None:
        self.db = database
        self.policy = policy or PromptPolicy()
        self.limits = limits
        self.blobs = blobs
        self.uploads = uploads
        self.max_active = max_active_per_user
        self.max_preview = max_preview_bytes

    # --- writing a change -------------------------------------------------------

    async def _write_events(
        self, conn, job: job_pb2.Job, first_seq: int, emits: list[Emit]
    ) -> None:
        now = _now()
        for offset, emit in enumerate(emits):
            seq = first_seq + offset
            ev = convert.event(
                job, seq, emit.kind, now=now, snapshot=emit.snapshot, preview_png=emit.preview_png
            )
            payload = ev.SerializeToString()
            await store.insert_event(conn, job.id, job.user_id, seq, emit.kind, payload)
            await store.insert_outbox(
                conn, queue.event_subject(job.user_id, job.id), f"{job.id}:{seq}", payload
            )

    async def _apply(
        self,
        conn,
        row: dict,
        changes: dict,
        emits: list[Emit],
        *,
        assets: list[dict] | None = None,
    ) -> job_pb2.Job:
        """Update the locked job, then write its events with the next sequences."""
        job_id = str(row["id"])
        changes = {**changes, "last_sequence": row["last_sequence"] + len(emits)}
        updated = await store.update_job(conn, job_id, changes)
        if assets is not None:
            await store.replace_assets(conn, job_id, str(row["user_id"]), assets)
        current = (await store.assets_of(conn, [job_id]))[job_id]
        job = convert.job_proto(updated, current)
        await self._write_events(conn, job, row["last_sequence"] + 1, emits)
        return job

    async def _job(self, conn, row: dict) -> job_pb2.Job:
        job_id = str(row["id"])
        return convert.job_proto(row, (await store.assets_of(conn, [job_id]))[job_id])

    async def _locked(self, conn, job_id: str) -> dict:
        row = await store.get_job(conn, domain.parse_id(job_id), for_update=True)
        if row is None:
            raise NotFound("job not found")
        return row

    # --- client operations ------------------------------------------------------

    async def create(
        self, user_id: str, sub: domain.Submission, request_id: str, metadata
    ) -> tuple[job_pb2.Job, bool]:
        valid = domain.validate(sub, self.limits, self.policy)
        request_id = request_id.strip() or None
        if request_id:
            async with self.db.tx(user_id=user_id) as conn:
                found = await store.find_by_request_id(conn, user_id, request_id)
                if found is not None:
                    return await self._job(conn, found), True
        if valid.reference is not None:
            where = await self.uploads.resolve(valid.reference.upload_id, metadata)
            valid = replace(
                valid, reference=replace(valid.reference, bucket=where.bucket, key=where.key)
            )

        async with self.db.tx(user_id=user_id) as conn:
            await store.lock_user(conn, user_id)
            if request_id:
                found = await store.find_by_request_id(conn, user_id, request_id)
                if found is not None:
                    return await self._job(conn, found), True
            active = await store.count_active(conn, user_id)
            if active >= self.max_active:
                raise ResourceExhausted(
                    f"too many active jobs: at most {self.max_active} may be queued or running at once",
                    subject=f"user:{user_id}",
                    limit_description=f"{self.max_active} active jobs per user",
                    reason="TOO_MANY_ACTIVE_JOBS",
                )
            row = await store.insert_job(conn, _job_row(valid, user_id, request_id))
            job = convert.job_proto(row)
            await self._write_events(conn, job, 1, [Emit("state")])
            now = _now()
            if valid.job_type.enhanced:
                task = convert.enhance_task(job, now=now)
                subject, msg_id = queue.ENHANCE_SUBJECT, job.id + ENHANCE_MSG_SUFFIX
            else:
                task = convert.generation_task(job, now=now)
                subject, msg_id = valid.job_type.subject, job.id
            await store.insert_outbox(conn, subject, msg_id, task.SerializeToString())
        log.info("job %s created (%s, %s)", job.id, job.job_type, convert.state_name(job.state))
        return job, False

    async def get(self, user_id: str, job_id: str) -> job_pb2.Job:
        async with self.db.tx(user_id=user_id) as conn:
            row = await store.get_job(conn, domain.parse_id(job_id))
            if row is None:
                raise NotFound("job not found")
            return convert.sign_assets(await self._job(conn, row), self.blobs)

    async def list(
        self, user_id: str, page_size: int, page_token: str, state: str
    ) -> tuple[list[job_pb2.Job], str]:
        size = domain.page_size(page_size)
        after = domain.decode_page_token(page_token)
        async with self.db.tx(user_id=user_id) as conn:
            rows = await store.list_jobs(conn, user_id, state=state, after=after, limit=size + 1)
            page = rows[:size]
            assets = await store.assets_of(conn, [r["id"] for r in page])
        jobs = [
            convert.sign_assets(convert.job_proto(r, assets[str(r["id"])]), self.blobs)
            for r in page
        ]
        token = ""
        if len(rows) > size:
            token = domain.encode_page_token(page[-1]["created_at"], str(page[-1]["id"]))
        return jobs, token

    async def cancel(self, user_id: str, job_id: str) -> job_pb2.Job:
        async with self.db.tx(user_id=user_id) as conn:
            row = await self._locked(conn, job_id)
            if not domain.transition(row["state"], domain.CANCELLED):
                job = await self._job(conn, row)
            else:
                job = await self._apply(
                    conn,
                    row,
                    {"state": domain.CANCELLED, "cancel_requested": True, "completed_at": _now()},
                    [Emit("cancelled")],
                )
        log.info("job %s cancelled", job.id)
        return convert.sign_assets(job, self.blobs)

    # --- worker operations ------------------------------------------------------

    async def start(self, job_id: str, delivery: int) -> tuple[job_pb2.Job, bool]:
        delivery = max(delivery, 1)
        async with self.db.tx(role="worker") as conn:
            row = await self._locked(conn, job_id)
            state = row["state"]
            if state in domain.TERMINAL or row["cancel_requested"]:
                return await self._job(conn, row), False
            if state == domain.RUNNING and delivery <= row["attempt"]:
                return await self._job(conn, row), True  # the same start again
            domain.transition(state, domain.RUNNING)
            changes = {"state": domain.RUNNING, "attempt": delivery}
            if state != domain.RUNNING:
                changes["started_at"] = _now()
            changes.update(progress_step=0, progress_stage="")
            job = await self._apply(conn, row, changes, [Emit("state")])
        log.info("job %s running (attempt %d)", job.id, job.attempt)
        return job, True

    async def progress(self, job_id: str, progress: job_pb2.Progress, preview_png: bytes) -> bool:
        if len(preview_png) > self.max_preview:
            raise InvalidArgument.field("preview_png", f"must be at most {self.max_preview} bytes")
        async with self.db.tx(role="worker") as conn:
            row = await self._locked(conn, job_id)
            if row["state"] in domain.TERMINAL:
                return True  # nothing more to do for this job: stop
            if row["state"] != domain.RUNNING:
                raise FailedPrecondition(f"a {row['state']} job cannot report progress")
            emits = [Emit("progress")]
            if preview_png:
                emits.append(Emit("preview", preview_png))
            changes = {
                "progress_step": max(progress.step, 0),
                "progress_total": max(progress.total, 0),
                "progress_stage": progress.stage[:64],
            }
            await self._apply(conn, row, changes, emits)
            return bool(row["cancel_requested"])

    async def complete(self, job_id: str, assets: list[job_pb2.Asset]) -> job_pb2.Job:
        rows = _asset_rows(assets)
        async with self.db.tx(role="worker") as conn:
            row = await self._locked(conn, job_id)
            if row["state"] in (domain.CANCELLED, domain.FAILED):
                raise FailedPrecondition(
                    f"the job was {row['state']}; its outputs are not wanted",
                    reason="JOB_" + row["state"].upper(),
                )
            if not domain.transition(row["state"], domain.COMPLETED):
                return await self._job(conn, row)  # a repeated completion
            job = await self._apply(
                conn,
                row,
                {
                    "state": domain.COMPLETED,
                    "completed_at": _now(),
                    "progress_step": row["progress_total"] or row["steps"],
                    "progress_total": row["progress_total"] or row["steps"],
                    "progress_stage": "done",
                    "error_code": "",
                    "error_message": "",
                },
                [Emit("completed")],
                assets=rows,
            )
        log.info("job %s completed with %d assets", job.id, len(job.assets))
        return job

    async def fail(self, job_id: str, code: str, message: str, will_retry: bool) -> job_pb2.Job:
        code = (code or "WORKER_ERROR")[:64]
        message = (message or "the job failed")[:2000]
        async with self.db.tx(role="worker") as conn:
            row = await self._locked(conn, job_id)
            error = {"error_code": code, "error_message": message}
            if will_retry:
                if row["state"] in domain.TERMINAL:
                    return await self._job(conn, row)
                return await self._apply(conn, row, error, [Emit("state")])
            if not domain.transition(row["state"], domain.FAILED):
                return await self._job(conn, row)
            job = await self._apply(
                conn,
                row,
                {**error, "state": domain.FAILED, "completed_at": _now()},
                [Emit("failed")],
            )
        log.warning("job %s failed: %s %s", job.id, code, message)
        return job

    async def complete_enhancement(
        self, job_id: str, enhanced_prompt: str, fallback: bool, reason: str
    ) -> job_pb2.Job:
        async with self.db.tx(role="worker") as conn:
            row = await self._locked(conn, job_id)
            jt = catalog.CATALOG[row["job_type"]]
            if not jt.enhanced:
                raise FailedPrecondition(f"{jt.name} jobs are not enhanced")
            if row["state"] != domain.ENHANCING:
                if row["enhancement_fallback_reason"].startswith(ENHANCE_TIMEOUT_CODE):
                    # Too late: the job went on with its original prompt.
                    raise FailedPrecondition(
                        "the enhancement timed out; the job went on with its original prompt",
                        reason="ENHANCEMENT_TIMED_OUT",
                    )
                return await self._job(conn, row)  # a repeat, or cancelled meanwhile
            job = await self._finish_enhancement(conn, row, enhanced_prompt, fallback, reason)
        if job.enhancement_fallback:
            log.warning(
                "job %s: enhancement fell back to the original prompt: %s",
                job.id,
                job.enhancement_fallback_reason,
            )
        return job

    async def expire_enhancements(self, timeout_seconds: float, limit: int) -> list[job_pb2.Job]:
        """Jobs enhancing for longer than `timeout_seconds` go on with their
        original prompt (a fallback with an ENHANCER_TIMEOUT reason) and their
        generation task is queued, so a job never waits on an enhancer that is
        down. Rows another replica or a CompleteEnhancement holds are skipped:
        whoever holds the lock decides, the other sees a job no longer enhancing."""
        reason = f"{ENHANCE_TIMEOUT_CODE}: no enhancement within {timeout_seconds:g} s"
        async with self.db.tx(role="system") as conn:
            rows = await store.claim_stale_enhancing(conn, timeout_seconds, limit)
            jobs = [await self._finish_enhancement(conn, row, "", True, reason) for row in rows]
        for job in jobs:
            log.warning("job %s: %s; generating with the original prompt", job.id, reason)
        return jobs

    async def _finish_enhancement(
        self, conn, row: dict, enhanced_prompt: str, fallback: bool, reason: str
    ) -> job_pb2.Job:
        """enhancing -> queued with the prompt to render, and the generation task."""
        jt = catalog.CATALOG[row["job_type"]]
        domain.transition(row["state"], domain.QUEUED)
        enhanced = enhanced_prompt.strip()
        reason = reason.strip()
        enhanced = _fit(enhanced, self.limits.max_prompt_chars)
        if not fallback:
            if not enhanced:
                fallback, reason = True, "EMPTY_ENHANCEMENT: the enhancer returned no prompt"
            elif denied := self.policy.violations(enhanced):
                # The enhancer checks its output too; an enhanced prompt must
                # never bring back what the user could not submit.
                listed = ", ".join(repr(t) for t in denied)
                fallback, reason = True, f"PROMPT_POLICY: the enhanced prompt contains {listed}"
        elif not reason:
            reason = "UNSPECIFIED: the enhancer gave no reason"
        job = await self._apply(
            conn,
            row,
            {
                "state": domain.QUEUED,
                "enhanced_prompt": "" if fallback else enhanced,
                "enhancement_fallback": fallback,
                "enhancement_fallback_reason": reason[:MAX_REASON_CHARS] if fallback else "",
            },
            [Emit("state")],
        )
        task = convert.generation_task(job, now=_now())
        await store.insert_outbox(conn, jt.subject, job.id, task.SerializeToString())
        return job


def _job_row(valid: domain.ValidJob, user_id: str, request_id: str | None) -> dict:
    ref = valid.reference
    return {
        "id": str(uuid.uuid4()),
        "user_id": user_id,
        "request_id": request_id,
        "job_type": valid.job_type.name,
        "state": valid.initial_state,
        "prompt": valid.prompt,
        "negative_prompt": valid.negative_prompt,
        "seed": valid.seed,
        "num_images": valid.num_images,
        "width": valid.width,
        "height": valid.height,
        "num_frames": valid.num_frames,
        "steps": valid.steps,
        "guidance_scale": valid.guidance_scale,
        "reference_upload_id": ref.upload_id if ref else None,
        "reference_type": ref.type if ref else None,
        "reference_strength": ref.strength if ref else None,
        "reference_bucket": ref.bucket if ref else None,
        "reference_key": ref.key if ref else None,
        "destination": valid.destination,
        "workspace_session_id": valid.workspace_session_id,
        "last_sequence": 1,
    }


def _asset_rows(assets: list[job_pb2.Asset]) -> list[dict]:
    """Check a worker's outputs before they are recorded."""
    if not assets:
        raise InvalidArgument.field("assets", "a completed job has at least one asset")
    seen: set[int] = set()
    for asset in assets:
        try:
            check_location(asset.bucket, asset.key)
            if asset.thumbnail_bucket or asset.thumbnail_key:
                check_location(asset.thumbnail_bucket, asset.thumbnail_key)
        except ValueError as exc:
            raise InvalidArgument.field("assets", str(exc)) from exc
        if asset.index in seen or asset.index < 0:
            raise InvalidArgument.field(
                "assets", f"asset index {asset.index} is repeated or negative"
            )
        seen.add(asset.index)
    return [convert.asset_row(a) for a in assets]


def _fit(text: str, max_chars: int) -> str:
    """`text` cut to `max_chars` at a word boundary: an enhanced prompt obeys the
    length limit of a submitted one."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    if not text[max_chars].isspace() and " " in head:
        head = head.rsplit(None, 1)[0]
    return head.rstrip(" ,;")
