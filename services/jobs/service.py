"""What the jobs service does, one method per operation. Each change runs in
one transaction: lock the job, check the transition, update it, write the next
events and the outbox rows that carry them (and any task) to JetStream."""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from psycopg.types.json import Jsonb

from ourvidz import catalog, metrics, queue, telemetry
from ourvidz.db import Database
from ourvidz.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from ourvidz.policy import PromptPolicy
from ourvidz.settings import CatalogLimits
from ourvidz.storage import BlobStore, check_location
from ourvidz.v1 import job_pb2
from services.jobs import convert, domain, store
from services.jobs.dispatch import Dispatcher, task_subject
from services.jobs.uploads import UploadResolver

log = logging.getLogger(__name__)

ENHANCE_MSG_SUFFIX = ":enhance"
# Starts the fallback reason of an enhancement that timed out in Jobs.
ENHANCE_TIMEOUT_CODE = "ENHANCER_TIMEOUT"
MAX_REASON_CHARS = 500
MAX_TEMPLATE_ID_CHARS = 64
# The reason of a worker call refused because another start holds the job (or
# none ever did): the worker stops and leaves the job to that start.
NOT_JOB_HOLDER = "NOT_JOB_HOLDER"


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
        max_attempts: int = 3,
        silent_seconds: float = 15.0,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.db = database
        # Publishes queued jobs' tasks when workers have room (None: tests
        # that read the line themselves).
        self.dispatcher = dispatcher
        self.policy = policy or PromptPolicy()
        self.limits = limits
        self.blobs = blobs
        self.uploads = uploads
        self.max_active = max_active_per_user
        self.max_preview = max_preview_bytes
        self.max_attempts = max(max_attempts, 1)
        self.silent_seconds = silent_seconds

    # --- the line ------------------------------------------------------------------

    def _wake_dispatch(self) -> None:
        """After a commit that queued a job or freed or took a worker."""
        if self.dispatcher is not None:
            self.dispatcher.wake()

    async def _with_queue(self, job: job_pb2.Job) -> job_pb2.Job:
        """A queued job with where it stands in line and when it should start."""
        if self.dispatcher is None or job.state != job_pb2.JOB_STATE_QUEUED:
            return job
        estimate = await self.dispatcher.estimate(job)
        if estimate is not None:
            job.queue.CopyFrom(estimate)
        return job

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
            await store.insert_event(
                conn,
                job.id,
                job.user_id,
                seq,
                emit.kind,
                ev.SerializeToString(),
                queue.event_subject(job.user_id, job.id),
                f"{job.id}:{seq}",
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
        self,
        user_id: str,
        sub: domain.Submission,
        request_id: str,
        metadata,
        *,
        rerun_of: str | None = None,
    ) -> tuple[job_pb2.Job, bool]:
        valid = domain.validate(sub, self.limits, self.policy)
        request_id = domain.check_request_id(request_id)
        if request_id:
            async with self.db.tx(user_id=user_id) as conn:
                found = await store.find_by_request_id(conn, user_id, request_id)
                if found is not None:
                    return await self._job(conn, found), True
        if valid.workspace_session_id is not None:
            # The gateway checks this too; a caller that reaches Jobs directly
            # is held to the same rule.
            await self.uploads.check_session(valid.workspace_session_id, metadata)
        if valid.reference is not None:
            where = await self.uploads.resolve(valid.reference.upload_id, metadata)
            valid = replace(
                valid, reference=replace(valid.reference, bucket=where.bucket, key=where.key)
            )

        look = None
        if self.dispatcher is not None and not valid.job_type.enhanced:
            look = self.dispatcher.look_ahead(valid.job_type.name)
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
            row = await store.insert_job(conn, _job_row(valid, user_id, request_id, rerun_of))
            job = convert.job_proto(row)
            await self._write_events(conn, job, 1, [Emit("state")])
            sent = None
            if valid.job_type.enhanced:
                task = convert.enhance_task(job, now=_now())
                await store.insert_outbox(
                    conn,
                    queue.ENHANCE_SUBJECT,
                    job.id + ENHANCE_MSG_SUFFIX,
                    task.SerializeToString(),
                )
            elif self.dispatcher is not None:
                # To a waiting worker at once, or in line for the dispatcher.
                sent = await self.dispatcher.dispatch_new(conn, row, active, look)
        if sent is not None:
            await self.dispatcher.publish_now(sent)
        else:
            self._wake_dispatch()
        log.info("job %s created (%s, %s)", job.id, job.job_type, convert.state_name(job.state))
        if sent is not None:  # on the queue already, for the worker that waits
            job.queue.CopyFrom(job_pb2.QueueEstimate(dispatched=True))
            job.queue.estimated_start_time.FromDatetime(_now())
            return job, False
        return await self._with_queue(job), False

    async def rerun(
        self, user_id: str, job_id: str, request_id: str, workspace_session_id: str, metadata
    ) -> tuple[job_pb2.Job, bool]:
        """A new job with exactly the recorded parameters of the caller's job
        `job_id` (domain.rerun_submission), through `create` and its checks
        and limits. Refused unless the job completed and its worker family
        still runs the model that rendered it: "now" is the provenance that
        family's workers recorded last, read across every user's jobs (only
        the preset and digest leave that transaction). A repeated
        `request_id` answers the job it made, whatever changed since."""
        key = domain.check_request_id(request_id)
        async with self.db.tx(user_id=user_id) as conn:
            if key and (found := await store.find_by_request_id(conn, user_id, key)):
                return await self._job(conn, found), True
            row = await store.get_job(conn, domain.parse_id(job_id))
        if row is None:
            raise NotFound("job not found")
        rerun_type = catalog.plain_twin(catalog.CATALOG[row["job_type"]])
        async with self.db.tx(role="system") as conn:
            current = await store.latest_provenance(
                conn, catalog.worker_job_types(rerun_type.worker)
            )
        domain.check_rerun(row, rerun_type, current)
        sub = domain.rerun_submission(row, rerun_type, workspace_session_id)
        job, existing = await self.create(
            user_id, sub, request_id, metadata, rerun_of=str(row["id"])
        )
        if not existing:
            log.info("job %s re-runs job %s", job.id, job.rerun_of)
        return job, existing

    async def get(self, user_id: str, job_id: str) -> job_pb2.Job:
        async with self.db.tx(user_id=user_id) as conn:
            row = await store.get_job(conn, domain.parse_id(job_id))
            if row is None:
                raise NotFound("job not found")
            job = await self._job(conn, row)
        return convert.sign_assets(await self._with_queue(job), self.blobs)

    async def list(
        self, user_id: str, page_size: int, page_token: str, state: str, job_type: str = ""
    ) -> tuple[list[job_pb2.Job], str]:
        size = domain.page_size(page_size)
        after = domain.decode_page_token(page_token)
        job_type = domain.listed_job_type(job_type)
        async with self.db.tx(user_id=user_id) as conn:
            rows = await store.list_jobs(
                conn, user_id, state=state, job_type=job_type, after=after, limit=size + 1
            )
            page = rows[:size]
            assets = await store.assets_of(conn, [r["id"] for r in page])
        jobs = [
            convert.sign_assets(
                await self._with_queue(convert.job_proto(r, assets[str(r["id"])])), self.blobs
            )
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
        self._wake_dispatch()
        log.info("job %s cancelled", job.id)
        return convert.sign_assets(job, self.blobs)

    # --- worker operations ------------------------------------------------------

    async def start(
        self, job_id: str, delivery: int, task_sequence: int = 0
    ) -> tuple[job_pb2.Job, bool, str, bool]:
        """A worker took the job's task: (job, proceed, start token, held
        elsewhere).

        Attempts are counted here, one per start of a render: a repeated call
        with the same delivery (its answer was lost) is the same start; any
        other delivery of a job that is running or queued is the next attempt.
        A start beyond the last attempt fails the job instead (the previous
        attempts died without a word, e.g. a worker killed each time). A
        second delivery while the worker that holds the job still beats (NATS
        was away and redelivered) does not start: it would run the job twice
        and spend an attempt on a dependency's fault."""
        this_delivery = f"{max(task_sequence, 0)}:{max(delivery, 1)}"
        async with self.db.tx(role="worker") as conn:
            row = await self._locked(conn, job_id)
            state = row["state"]
            if state in domain.TERMINAL or row["cancel_requested"]:
                return await self._job(conn, row), False, "", False
            if state == domain.RUNNING and _same_delivery(row["start_token"], this_delivery):
                await store.heartbeat(conn, job_id)
                job = await self._job(conn, row)
                return job, True, row["start_token"], False  # the same start again
            beat = row["heartbeat_at"]
            if (
                state == domain.RUNNING
                and beat is not None
                and (_now() - beat).total_seconds() < self.silent_seconds
            ):
                return await self._job(conn, row), False, "", True
            domain.transition(state, domain.RUNNING)
            attempt = row["attempt"] + 1
            if attempt > self.max_attempts:
                last = f": {row['error_message']}" if row["error_message"] else ""
                job = await self._apply(
                    conn,
                    row,
                    {
                        "state": domain.FAILED,
                        "completed_at": _now(),
                        "error_code": "ATTEMPTS_EXHAUSTED",
                        "error_message": f"the job did not finish in {self.max_attempts} "
                        f"attempts{last}"[:2000],
                    },
                    [Emit("failed")],
                )
                token = ""
            else:
                # The delivery names the start; the random part makes its token
                # one that only the worker StartJob answered can show.
                token = f"{this_delivery}:{secrets.token_urlsafe(18)}"
                changes = {
                    "state": domain.RUNNING,
                    "attempt": attempt,
                    "start_token": token,
                    "heartbeat_at": _now(),
                    "progress_step": 0,
                    "progress_stage": "",
                    "error_code": "",
                    "error_message": "",
                }
                if row["started_at"] is None:
                    changes["started_at"] = _now()
                job = await self._apply(conn, row, changes, [Emit("state")])
        self._wake_dispatch()  # its task left the queue: room for the next
        if self.dispatcher is not None:
            self.dispatcher.on_started()
        # Measured once the change is committed.
        if not token:
            metrics.JOB_FAILURES.labels(job.job_type, "ATTEMPTS_EXHAUSTED").inc()
            log.warning("job %s failed: no attempt left", job.id)
            return job, False, "", False
        metrics.JOB_STARTS.labels(job.job_type).inc()
        if state == domain.QUEUED:
            # A queued job's row last changed when it became queued (submitted,
            # enhanced, or given back for a retry).
            waited = (_now() - row["updated_at"]).total_seconds()
            metrics.JOB_QUEUE_SECONDS.labels(job.job_type).observe(max(waited, 0.0))
        log.info("job %s running (attempt %d)", job.id, job.attempt)
        return job, True, token, False

    async def heartbeat(self, job_id: str, start_token: str) -> tuple[bool, bool]:
        """The worker holding the job is alive: (cancel requested, finished).
        A job the reconciler handed back while its worker was cut off (same
        start token) is running again."""
        async with self.db.tx(role="worker") as conn:
            row = await self._locked(conn, job_id)
            _check_holder(row, start_token)
            state = row["state"]
            if state in domain.TERMINAL:
                return bool(row["cancel_requested"]), True
            if state == domain.QUEUED:
                await self._apply(
                    conn,
                    row,
                    {"state": domain.RUNNING, "heartbeat_at": _now(), "error_code": "",
                     "error_message": ""},
                    [Emit("state")],
                )  # fmt: skip
                log.info("job %s: its worker is back; running again", job_id)
            elif state == domain.RUNNING:
                await store.heartbeat(conn, job_id)
            return bool(row["cancel_requested"]), False

    async def progress(
        self, job_id: str, start_token: str, progress: job_pb2.Progress, preview_png: bytes
    ) -> bool:
        if len(preview_png) > self.max_preview:
            raise InvalidArgument.field("preview_png", f"must be at most {self.max_preview} bytes")
        async with self.db.tx(role="worker") as conn:
            row = await self._locked(conn, job_id)
            _check_holder(row, start_token)
            if row["state"] in domain.TERMINAL:
                return True  # nothing more to do for this job: stop
            if row["state"] == domain.QUEUED and row["start_token"]:
                return False  # handed back meanwhile: the report changes nothing
            if row["state"] != domain.RUNNING:
                raise FailedPrecondition(f"a {row['state']} job cannot report progress")
            emits = [Emit("progress")]
            if preview_png:
                emits.append(Emit("preview", preview_png))
            changes = {
                "heartbeat_at": _now(),
                "progress_step": max(progress.step, 0),
                "progress_total": max(progress.total, 0),
                "progress_stage": progress.stage[:64],
            }
            await self._apply(conn, row, changes, emits)
            return bool(row["cancel_requested"])

    async def complete(
        self,
        job_id: str,
        start_token: str,
        assets: list[job_pb2.Asset],
        provenance: job_pb2.Provenance | None = None,
    ) -> job_pb2.Job:
        """The holder's outputs make the job completed. Only the job's own
        objects are accepted, as many and of the kind its job type makes.
        `provenance` (what rendered them) is stored as the worker sent it;
        None (a worker that reports none) leaves the job without one."""
        async with self.db.tx(role="worker") as conn:
            row = await self._locked(conn, job_id)
            _check_holder(row, start_token)
            rows = _asset_rows(row, assets)
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
                    "provenance": convert.provenance_row(provenance),
                },
                [Emit("completed")],
                assets=rows,
            )
        self._wake_dispatch()
        log.info("job %s completed with %d assets", job.id, len(job.assets))
        metrics.JOB_ATTEMPTS.labels(job.job_type).observe(row["attempt"])
        if row["started_at"] is not None:
            took = (_now() - row["started_at"]).total_seconds()
            metrics.JOB_GENERATION_SECONDS.labels(job.job_type).observe(max(took, 0.0))
        return job

    async def fail(
        self,
        job_id: str,
        start_token: str,
        code: str,
        message: str,
        will_retry: bool,
        dependency_failure: bool = False,
    ) -> job_pb2.Job:
        """A failed attempt. With `will_retry` the job goes back to `queued`
        with the error, to wait for its next delivery, unless that was its
        last attempt (then it fails). A `dependency_failure` (a service or
        storage the worker needs was away) gives the attempt back."""
        code = (code or "WORKER_ERROR")[:64]
        message = (message or "the job failed")[:2000]
        async with self.db.tx(role="worker") as conn:
            row = await self._locked(conn, job_id)
            _check_holder(row, start_token)
            if row["state"] in domain.TERMINAL:
                if will_retry or not domain.transition(row["state"], domain.FAILED):
                    return await self._job(conn, row)  # ended meanwhile, or a repeat
            error = {"error_code": code, "error_message": message}
            attempt = row["attempt"]
            if dependency_failure:
                attempt = max(attempt - 1, 0)
            retried = will_retry and (dependency_failure or attempt < self.max_attempts)
            if retried:
                changes = {**error, "attempt": attempt}
                if row["state"] == domain.RUNNING:
                    changes["state"] = domain.QUEUED
                job = await self._apply(conn, row, changes, [Emit("state")])
            else:
                if will_retry:
                    error["error_message"] = (
                        f"{message} (the last of {self.max_attempts} attempts)"[:2000]
                    )
                domain.transition(row["state"], domain.FAILED)
                job = await self._apply(
                    conn,
                    row,
                    {**error, "state": domain.FAILED, "completed_at": _now()},
                    [Emit("failed")],
                )
        self._wake_dispatch()
        label = metrics.failure_code(code)
        if not retried:
            metrics.JOB_FAILURES.labels(job.job_type, label).inc()
            log.warning("job %s failed: %s %s", job.id, code, message)
        elif not dependency_failure:  # a dependency's fault costs the job nothing
            metrics.JOB_ATTEMPT_FAILURES.labels(job.job_type, label).inc()
        return job

    # --- the reconciler ---------------------------------------------------------

    async def hand_back_silent(self, silent_seconds: float, limit: int) -> list[job_pb2.Job]:
        """Running jobs whose worker gave no sign of life for `silent_seconds`
        go back to `queued` (the attempt stays counted): their task is
        redelivered when its ack wait runs out, or re-published by
        `requeue_lost` when it is gone."""
        async with self.db.tx(role="system") as conn:
            rows = await store.claim_silent_running(conn, silent_seconds, limit)
            jobs = [
                await self._apply(
                    conn,
                    row,
                    {
                        "state": domain.QUEUED,
                        "error_code": "WORKER_LOST",
                        "error_message": "the worker stopped responding; "
                        "the job waits for another attempt",
                    },
                    [Emit("state")],
                )
                for row in rows
            ]
        for job in jobs:
            metrics.JOB_ATTEMPT_FAILURES.labels(job.job_type, "WORKER_LOST").inc()
            log.warning("job %s: its worker went silent; handed back", job.id)
        return jobs

    async def requeue_lost(
        self,
        older_than_seconds: float,
        limit: int,
        present: Callable[[list[str]], Awaitable[set[str]]],
    ) -> tuple[int, list[job_pb2.Job]]:
        """Dispatched queued jobs unchanged for `older_than_seconds` whose task
        is neither in the outbox nor on the queue (`present` answers which task
        subjects JetStream holds; a batch's members look for the batch's task)
        go back in line, where the dispatcher publishes them again under new
        message ids. Returns how many were checked and the jobs put back.
        Raises when `present` does (NATS away): nothing is changed then."""
        async with self.db.tx(role="system") as conn:
            rows = await store.claim_queued_to_check(conn, older_than_seconds, limit)
            if not rows:
                return 0, []
            by_subject: dict[str, list[dict]] = {}
            for row in rows:
                by_subject.setdefault(task_subject(row), []).append(row)
            waiting = await store.outbox_subjects(conn, list(by_subject))
            candidates = [subject for subject in by_subject if subject not in waiting]
            held = await present(candidates) if candidates else set()
            await store.mark_checked(conn, [str(row["id"]) for row in rows])
            lost_rows = [row for s in candidates if s not in held for row in by_subject[s]]
            if lost_rows:
                await store.undispatch(conn, [str(row["id"]) for row in lost_rows])
            lost = [await self._job(conn, row) for row in lost_rows]
        if lost:
            self._wake_dispatch()
        for job in lost:
            log.warning("job %s: its task was not on the queue; back in line", job.id)
        return len(rows), lost

    async def orphan_blobs(self, candidates: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
        """Of (bucket, key, job id) triples, the objects no asset will ever
        point at: their job does not exist, or ended without them. Objects
        of jobs still active are kept (a retry writes the same keys)."""
        job_ids = sorted({job_id for _, _, job_id in candidates})
        async with self.db.tx(role="system") as conn:
            states = await store.job_states(conn, job_ids)
            ended = [j for j, state in states.items() if state in domain.TERMINAL]
            kept = await store.asset_locations(conn, ended)
        orphans = []
        for bucket, key, job_id in candidates:
            state = states.get(job_id)
            if state is None or (state in domain.TERMINAL and (bucket, key) not in kept):
                orphans.append((bucket, key))
        return orphans

    async def complete_enhancement(
        self,
        job_id: str,
        enhanced_prompt: str,
        fallback: bool,
        reason: str,
        template: tuple[str, int] = ("", 0),
    ) -> job_pb2.Job:
        """The enhancer's answer for an enhancing job: its enhanced prompt and
        the `template` (id, version) that wrote it, or a fallback."""
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
            job = await self._finish_enhancement(
                conn, row, enhanced_prompt, fallback, reason, template
            )
        self._wake_dispatch()
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
        if jobs:
            self._wake_dispatch()
        for job in jobs:
            log.warning("job %s: %s; generating with the original prompt", job.id, reason)
        return jobs

    async def _finish_enhancement(
        self,
        conn,
        row: dict,
        enhanced_prompt: str,
        fallback: bool,
        reason: str,
        template: tuple[str, int] = ("", 0),
    ) -> job_pb2.Job:
        """enhancing -> queued with the prompt to render and the template that
        wrote it (none with a fallback), in line for the dispatcher."""
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
        template_id = template[0].strip()[:MAX_TEMPLATE_ID_CHARS]
        template_version = max(template[1], 0)
        changes = {
            "state": domain.QUEUED,
            "enhanced_prompt": "" if fallback else enhanced,
            "enhancement_fallback": fallback,
            "enhancement_fallback_reason": reason[:MAX_REASON_CHARS] if fallback else "",
            "enhancement_template_id": "" if fallback else template_id,
            "enhancement_template_version": 0 if fallback else template_version,
        }
        if carried := telemetry.inject():
            # The generation continues from the enhancement's call (the sweep
            # has none: the job keeps the trace it was created in).
            changes["trace_headers"] = Jsonb(carried)
        return await self._apply(conn, row, changes, [Emit("state")])


def _job_row(
    valid: domain.ValidJob, user_id: str, request_id: str | None, rerun_of: str | None
) -> dict:
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
        "rerun_of": rerun_of,
        "last_sequence": 1,
        # Its task, published later by the dispatcher, continues this trace.
        "trace_headers": Jsonb(telemetry.inject()),
    }


def _same_delivery(start_token: str, delivery: str) -> bool:
    """True when `start_token` was given to the start of `delivery`
    ("<task sequence>:<delivery>", then a random part)."""
    return start_token == delivery or start_token.startswith(delivery + ":")


def _check_holder(row: dict, start_token: str) -> None:
    """Only the start that holds the job may report on it: a job never
    started, or started again by another delivery, refuses the call."""
    held = row["start_token"]
    if not (held and start_token and secrets.compare_digest(held.encode(), start_token.encode())):
        raise FailedPrecondition(
            "the job is not held under this start token "
            "(it never started, or another delivery started it since)",
            reason=NOT_JOB_HOLDER,
        )


def _asset_rows(job: dict, assets: list[job_pb2.Asset]) -> list[dict]:
    """Check a worker's outputs against the job before they are recorded: as
    many as it asked for (its images, or one video), of its job type's content
    type, each at the job's own key in the job type's bucket, and a video's
    thumbnail at the job's key in the thumbnails bucket. A wrong count or kind
    is INVALID_ARGUMENT; any other object (another job's, an upload) is
    PERMISSION_DENIED."""
    jt = catalog.CATALOG[job["job_type"]]
    user_id, job_id = str(job["user_id"]), str(job["id"])
    wanted = catalog.output_count(jt, job["num_images"])
    if len(assets) != wanted:
        made = f"{wanted} image(s)" if jt.output == "image" else "one video"
        raise InvalidArgument.field(
            "assets", f"a completed {jt.name} job has {made}, not {len(assets)} asset(s)"
        )
    seen: set[int] = set()
    for n, asset in enumerate(assets):
        at = f"assets[{n}]"
        try:
            check_location(asset.bucket, asset.key)
        except ValueError as exc:
            raise InvalidArgument.field(at, str(exc)) from exc
        if asset.index in seen or not 0 <= asset.index < wanted:
            raise InvalidArgument.field(
                f"{at}.index", f"must be one of 0..{wanted - 1}, each once (got {asset.index})"
            )
        seen.add(asset.index)
        if asset.content_type != jt.content_type:
            raise InvalidArgument.field(
                f"{at}.content_type", f"a {jt.name} job makes {jt.content_type} outputs"
            )
        thumbnail = bool(asset.thumbnail_bucket or asset.thumbnail_key)
        if thumbnail and jt.output != "video":
            raise InvalidArgument.field(f"{at}.thumbnail_key", "only a video has a thumbnail")
        if asset.bucket != jt.bucket:
            raise PermissionDenied(
                f"{at}.bucket: a {jt.name} job's outputs are in the bucket {jt.bucket}",
                reason="FOREIGN_OBJECT",
            )
        if asset.key != catalog.output_key(jt, user_id, job_id, asset.index):
            raise PermissionDenied(f"{at}.key: not an output of this job", reason="FOREIGN_OBJECT")
        if thumbnail and (
            asset.thumbnail_bucket != catalog.THUMBNAIL_BUCKET
            or asset.thumbnail_key != catalog.thumbnail_key(user_id, job_id)
        ):
            raise PermissionDenied(
                f"{at}.thumbnail_key: not this job's thumbnail in the bucket "
                f"{catalog.THUMBNAIL_BUCKET}",
                reason="FOREIGN_OBJECT",
            )
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
