"""The enhance stage of the `*_enhanced` job types: a durable pull consumer of
`tasks.enhance`, shared by every replica.

Per message: parse the `EnhanceTask`, enhance its prompt for its target while
`in_progress` heartbeats keep the message ours, record the analytics under the
job, tell Jobs (`CompleteEnhancement`: the enhanced prompt and the template
version that wrote it, or the fallback and its reason when the model failed
or timed out), then ack. Jobs then queues the generation stage. A job that
is no longer `enhancing` (cancelled, or a repeat) is acked and left alone.
When Jobs cannot be reached the message is nak'ed with a backoff; after the
last attempt it is terminated (Jobs times out jobs stuck in `enhancing`).

Each task is a span of its job's trace (the message's headers carry the
context of the CreateJob that queued it), with the enhancement itself as the
`enhancer.enhance` stage; CompleteEnhancement runs inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from google.protobuf.message import DecodeError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext

from ourvidz import logs, queue, telemetry
from ourvidz.auth import TokenSource
from ourvidz.v1 import job_service_pb2, job_service_pb2_grpc, queue_pb2
from services.enhancer import domain
from services.enhancer.service import Caller, EnhancerCore
from services.enhancer.settings import EnhancerSettings

log = logging.getLogger(__name__)

# Jobs' answers that mean "nothing more to do for this task".
_SETTLED = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)
_PERMANENT = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)


class EnhanceStage:
    def __init__(
        self,
        settings: EnhancerSettings,
        js: JetStreamContext,
        core: EnhancerCore,
        jobs: job_service_pb2_grpc.JobServiceStub,
    ) -> None:
        self.settings = settings
        self.js = js
        self.core = core
        self.jobs = jobs
        # Calls Jobs as a worker, with its own key.
        self.tokens = TokenSource(
            settings.worker_signer(), settings.enhancer_worker_id, role="worker"
        )
        self._stopping = asyncio.Event()
        self._sub = None
        self.handled = 0
        # For the worker registry: the job in hand, and tasks that had to be retried.
        self.current_job_id = ""
        self.failed = 0

    def queue_settings(self) -> queue.QueueSettings:
        # One delivery beyond the attempts, so the last one can still settle the
        # job. No backoff: a replica that died mid-enhancement hands its task on
        # after the ack wait (heartbeats keep a live one's), and a nak carries
        # its own delay.
        return queue.QueueSettings(
            ack_wait_seconds=self.settings.enhancer_ack_wait_seconds,
            max_deliver=self.settings.enhancer_max_attempts + 1,
            backoff_seconds=(),
            replicas=self.settings.queue_replicas,
        )

    async def declare(self) -> None:
        """The streams and the durable consumer (idempotent), then bind to it."""
        qs = self.queue_settings()
        await queue.declare_streams(self.js, qs)
        durable = self.settings.enhancer_consumer
        await queue.declare_task_consumer(self.js, queue.ENHANCE_SUBJECT, durable, qs)
        self._sub = await self.js.pull_subscribe_bind(durable=durable, stream=queue.TASKS_STREAM)

    def stop(self) -> None:
        self._stopping.set()

    async def unsubscribe(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def run(self) -> None:
        if self._sub is None:
            await self.declare()
        wait = self.settings.enhancer_fetch_timeout_seconds
        while not self._stopping.is_set():
            try:
                msgs = await self._sub.fetch(1, timeout=wait)
            except (TimeoutError, NatsTimeout):
                continue
            except Exception as exc:  # a broken connection: nats reconnects, we retry
                log.warning("fetch failed: %s", exc)
                await asyncio.sleep(wait)
                continue
            for msg in msgs:
                await self.handle(msg)

    async def handle(self, msg) -> None:
        try:
            task = queue_pb2.EnhanceTask.FromString(msg.data)
        except DecodeError:
            log.error("undecodable enhance task dropped")
            await msg.term()
            return
        if not task.job_id:
            log.error("enhance task without a job id dropped")
            await msg.term()
            return
        delivery = msg.metadata.num_delivered
        with (
            logs.bind(job_id=task.job_id, user_id=task.user_id, delivery=delivery),
            telemetry.job(
                "enhancer",
                "enhancer.job",
                msg.headers,
                job_id=task.job_id,
                job_type=task.job_type,
                # The enhancement's attempt: its deliveries are its attempts here.
                attempt=delivery,
                **{"messaging.system": "nats", "messaging.destination.name": msg.subject},
            ),
        ):
            self.current_job_id = task.job_id
            try:
                async with queue.heartbeat(msg, self.settings.enhancer_ack_wait_seconds):
                    await self._handle(msg, task, delivery)
            except Exception as exc:  # e.g. the database is away: try again later
                self.failed += 1
                log.error("enhance task failed; retried", exc_info=exc)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=self._backoff(delivery))
            finally:
                self.current_job_id = ""
            self.handled += 1

    async def _handle(self, msg, task: queue_pb2.EnhanceTask, delivery: int) -> None:
        attempts = self.settings.enhancer_max_attempts
        if delivery > attempts:
            request = job_service_pb2.CompleteEnhancementRequest(
                job_id=task.job_id,
                fallback=True,
                fallback_reason=f"the enhancement did not finish in {attempts} attempts",
            )
        else:
            request = await self._enhance(task)
        try:
            await self.jobs.CompleteEnhancement(
                request,
                metadata=self.tokens.metadata(),
                timeout=self.settings.grpc_deadline_seconds,
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code in _SETTLED:
                log.info("job no longer waits for its enhancement (%s); acked", exc.details())
                await msg.ack_sync()
            elif code in _PERMANENT or delivery >= attempts + 1:
                log.error("CompleteEnhancement refused: %s %s", code.name, exc.details())
                await msg.term()
            else:
                log.warning("CompleteEnhancement failed: %s %s", code.name, exc.details())
                await msg.nak(delay=self._backoff(delivery))
            return
        await msg.ack_sync()
        log.info(
            "enhancement delivered",
            extra={"fallback": request.fallback, "reason": request.fallback_reason},
        )

    async def _enhance(
        self, task: queue_pb2.EnhanceTask
    ) -> job_service_pb2.CompleteEnhancementRequest:
        target = task.target_model
        if target not in domain.TARGETS:
            jt_target = None
            with contextlib.suppress(Exception):
                jt_target = domain.resolve_target("", task.job_type)
            target = jt_target or "wan"
        caller = Caller(user_id=task.user_id, role="worker", job_id=task.job_id)
        prompt = task.prompt.strip()
        if not prompt or not self.core.policy.allows(prompt):
            result = None
            reason = "the prompt cannot be enhanced (empty or against the prompt policy)"
        else:
            with telemetry.stage("enhancer.enhance", target=target):
                result = await self.core.enhance(prompt, target, caller=caller)
            reason = result.fallback_reason
        if result is None or result.fallback:
            return job_service_pb2.CompleteEnhancementRequest(
                job_id=task.job_id, fallback=True, fallback_reason=reason
            )
        return job_service_pb2.CompleteEnhancementRequest(
            job_id=task.job_id,
            enhanced_prompt=result.enhanced_prompt,
            template_id=result.template_id,
            template_version=result.template_version,
        )

    def _backoff(self, delivery: int) -> float:
        return queue.retry_delay(self.settings.enhancer_retry_backoff_seconds, delivery)
