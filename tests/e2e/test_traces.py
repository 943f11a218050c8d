"""One trace per job across the mesh: a job submitted over HTTP with a client's
traceparent is followed, in that one trace, through the gateway, Jobs, the
outbox's message, the SDXL worker and its stages, and the workspace filer;
a worker's log line carries the trace and span ids of its job's span."""

from __future__ import annotations

import io
import json
import logging
import uuid

import nats
from opentelemetry import trace

from ourvidz import logs, telemetry
from tests.e2e.conftest import signup
from tests.e2e.test_generate import job_body, wait_for


def _trace_id(headers) -> int:
    return trace.get_current_span(telemetry.extract(headers)).get_span_context().trace_id


async def test_one_trace_covers_gateway_jobs_worker_stages_and_workspace(http, stack):
    user = await signup(http)
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(logs.JsonFormatter("sdxl"))
    worker_log = logging.getLogger("ourvidz.genworker.loop")
    worker_log.addHandler(handler)
    level = worker_log.level
    worker_log.setLevel(logging.INFO)
    nc = await nats.connect(stack.env["NATS_URL"])
    messages: list = []

    async def keep(msg) -> None:
        messages.append(msg)

    await nc.subscribe("tasks.sdxl.>", cb=keep)
    await nc.subscribe(f"events.jobs.{user.user['id']}.>", cb=keep)
    try:
        with telemetry.capture() as exporter:
            with telemetry.tracer("client").start_as_current_span("client") as client:
                carrier = telemetry.inject()
            response = await user.post(
                "/v1/jobs",
                json=job_body(num_images=1),
                headers={**carrier, "Idempotency-Key": uuid.uuid4().hex},
            )
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]

            async def completed():
                job = (await user.get(f"/v1/jobs/{job_id}")).json()
                assert job["state"] not in ("failed", "cancelled"), job
                return job["state"] == "completed"

            await wait_for(completed, within=60)
            trace_id = client.get_span_context().trace_id

            def in_trace():
                return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]

            async def filed():
                return any(s.name == "workspace.file" for s in in_trace())

            await wait_for(filed, within=20)

            # The event stream of the job, in a trace of its own: the gateway's
            # WatchJob call and Jobs' server stream are spans of it.
            with telemetry.tracer("client").start_as_current_span("client") as watcher:
                watch_headers = telemetry.inject()
            async with user.http.stream(
                "GET",
                f"/v1/jobs/{job_id}/events",
                headers={**user.headers, **watch_headers},
                timeout=60,
            ) as stream:
                assert stream.status_code == 200
                body = "".join([chunk async for chunk in stream.aiter_text()])
            assert "event: completed" in body
            watch_trace = watcher.get_span_context().trace_id

            async def watch_served():
                return [
                    s
                    for s in exporter.get_finished_spans()
                    if s.context.trace_id == watch_trace
                    and s.name == "/ourvidz.v1.JobService/WatchJob"
                    and s.kind == trace.SpanKind.SERVER
                ]

            (watch_server,) = await wait_for(watch_served, within=10)
            spans = in_trace()
    finally:
        worker_log.removeHandler(handler)
        worker_log.setLevel(level)
        await nc.close()

    assert watch_server.attributes["ourvidz.service"] == "jobs"

    by_service: dict[str, list] = {}
    for span in spans:
        by_service.setdefault(span.attributes.get("ourvidz.service"), []).append(span)
    assert {"gateway", "jobs", "sdxl", "workspace"} <= set(by_service), sorted(
        (s.attributes.get("ourvidz.service"), s.name) for s in spans
    )

    def one(name: str, kind: trace.SpanKind | None = None):
        found = [s for s in spans if s.name == name and (kind is None or s.kind == kind)]
        assert len(found) == 1, (name, [s.name for s in spans])
        return found[0]

    ids = {s.context.span_id: s for s in spans}
    # The gateway's request span continues the client's traceparent.
    (request,) = [
        s
        for s in by_service["gateway"]
        if s.kind == trace.SpanKind.SERVER and s.attributes.get("http.route") == "/v1/jobs"
    ]
    assert request.parent.span_id == client.get_span_context().span_id
    create = one("/ourvidz.v1.JobService/CreateJob", trace.SpanKind.SERVER)
    assert create.attributes["ourvidz.service"] == "jobs"
    assert ids[create.parent.span_id].attributes["ourvidz.service"] == "gateway"

    # The task's message carried the trace: the worker's job span is the child
    # of the relay's publish span, itself the child of CreateJob.
    job_span = one("sdxl.job")
    publish = ids[job_span.parent.span_id]
    assert publish.name == "jobs.outbox.publish"
    assert ids[publish.parent.span_id] is create
    assert job_span.attributes["job.id"] == job_id
    assert job_span.attributes["job.attempt"] == 1
    tasks = [m for m in messages if m.subject.startswith("tasks.") and job_id in m.subject]
    assert tasks and all(_trace_id(m.headers) == trace_id for m in tasks)
    events_published = [m for m in messages if m.subject.endswith(job_id)]
    assert events_published and all(_trace_id(m.headers) == trace_id for m in events_published)

    # One span per stage, inside the job's span, with the job's attributes.
    for stage in ("encode_text", "denoise", "decode", "upload"):
        span = one(f"sdxl.{stage}")
        assert span.parent.span_id == job_span.context.span_id, stage
        assert span.attributes["job.id"] == job_id
        assert span.attributes["job.type"] == "sdxl_image_fast"
        assert span.attributes["job.attempt"] == 1
    # The worker's calls to Jobs run inside its job span.
    for method in ("StartJob", "ReportProgress", "CompleteJob"):
        served = [
            s
            for s in spans
            if s.name == f"/ourvidz.v1.JobService/{method}" and s.kind == trace.SpanKind.SERVER
        ]
        assert served, method
        for span in served:
            caller = ids[span.parent.span_id]
            assert caller.attributes["ourvidz.service"] == "sdxl"
            assert caller.parent.span_id == job_span.context.span_id
    filing = one("workspace.file")
    assert filing.attributes["job.id"] == job_id
    assert ids[filing.parent.span_id].name == "jobs.outbox.publish"

    # The worker's log line of the completion: the job's trace and span.
    entries = [json.loads(line) for line in lines.getvalue().splitlines()]
    (done,) = [e for e in entries if e.get("job_id") == job_id and e["msg"] == "job completed"]
    assert done["trace_id"] == f"{trace_id:032x}"
    assert done["span_id"] == f"{job_span.context.span_id:016x}"
