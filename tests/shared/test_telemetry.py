"""ourvidz.telemetry: the process's tracing set up from OTEL_* alone (off by
default), the spans of a job and its stages, the stage histogram, the trace
and span ids in log lines, and gRPC calls carrying their caller's trace."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opentelemetry import trace
from prometheus_client import REGISTRY

from ourvidz import logs, telemetry

ROOT = Path(__file__).resolve().parents[2]


def run_isolated(code: str, **env: str) -> dict:
    """Run `code` in a fresh interpreter (the tracer provider is per process)
    with no OTEL_* variable but those given; it prints one JSON object."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    clean.update(env)
    clean["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_without_otel_variables_nothing_is_exported_and_no_connection_is_tried():
    result = run_isolated(
        """
        import json, socket, sys
        tried = []
        real_connect = socket.socket.connect
        def connect(self, address):
            tried.append(repr(address))
            return real_connect(self, address)
        socket.socket.connect = connect
        socket.socket.connect_ex = lambda self, address: tried.append(repr(address)) or 111

        from ourvidz import telemetry
        recording = telemetry.setup("jobs")
        with telemetry.tracer("jobs").start_as_current_span("probe") as span:
            ctx = span.get_span_context()
        from opentelemetry import trace
        trace.get_tracer_provider().force_flush()
        print(json.dumps({
            "recording": recording,
            "valid": ctx.is_valid,
            "exporters": [type(e).__name__ for e in telemetry.installed_exporters()],
            "exporter_modules": sorted(m for m in sys.modules if m.startswith("opentelemetry.exporter")),
            "connections": tried,
        }))
        """
    )
    assert result == {
        "recording": True,
        "valid": True,
        "exporters": [],
        "exporter_modules": [],
        "connections": [],
    }


def test_an_otlp_endpoint_alone_installs_the_otlp_exporter_and_the_service_name():
    result = run_isolated(
        """
        import json
        from ourvidz import telemetry
        telemetry.setup("workspace")
        with telemetry.tracer("workspace").start_as_current_span("probe") as span:
            resource = dict(span.resource.attributes)
        print(json.dumps({
            "exporters": [type(e).__module__ for e in telemetry.installed_exporters()],
            "service": resource["service.name"],
        }))
        """,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
        OTEL_BSP_SCHEDULE_DELAY="600000",
    )
    assert result == {
        "exporters": ["opentelemetry.exporter.otlp.proto.grpc.trace_exporter"],
        "service": "workspace",
    }


def test_an_otlp_collector_receives_the_spans_of_a_service_at_exit():
    """OTEL_EXPORTER_OTLP_ENDPOINT alone: the spans reach a collector (here a
    stand-in on the loopback) by the time the process exits."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import (
        trace_service_pb2,
        trace_service_pb2_grpc,
    )

    received: list = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        result = run_isolated(
            """
            import json
            from ourvidz import telemetry
            telemetry.setup("jobs")
            with telemetry.tracer("jobs").start_as_current_span("probe") as span:
                trace_id = span.get_span_context().trace_id
            print(json.dumps({"trace_id": f"{trace_id:032x}"}))
            """,
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
            OTEL_EXPORTER_OTLP_INSECURE="true",
        )
    finally:
        server.stop(0)
    exported = [
        (resource.resource, span)
        for request in received
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert len(exported) == 1
    resource, span = exported[0]
    assert span.name == "probe" and span.trace_id.hex() == result["trace_id"]
    names = {a.key: a.value.string_value for a in resource.attributes}
    assert names["service.name"] == "jobs" and names["service.namespace"] == "ourvidz"


def test_otel_service_name_overrides_and_sdk_disabled_records_nothing():
    named = run_isolated(
        """
        import json
        from ourvidz import telemetry
        telemetry.setup("jobs")
        with telemetry.tracer("jobs").start_as_current_span("probe") as span:
            print(json.dumps({"service": span.resource.attributes["service.name"],
                              "ourvidz": span.attributes["ourvidz.service"]}))
        """,
        OTEL_SERVICE_NAME="jobs-eu-1",
    )
    assert named == {"service": "jobs-eu-1", "ourvidz": "jobs"}

    disabled = run_isolated(
        """
        import json
        from ourvidz import telemetry
        recording = telemetry.setup("jobs")
        with telemetry.tracer("jobs").start_as_current_span("probe") as span:
            print(json.dumps({"setup": recording, "recording": span.is_recording()}))
        """,
        OTEL_SDK_DISABLED="true",
        OTEL_TRACES_EXPORTER="otlp",
    )
    assert disabled == {"setup": False, "recording": False}


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, []),
    ],
)
def test_exporters_come_from_the_standard_variables_only(env, names):
    assert telemetry.exporter_names(env) == names


def _stage_count(service: str, job_type: str, stage: str) -> float:
    value = REGISTRY.get_sample_value(
        "ourvidz_stage_seconds_count",
        {"service": service, "job_type": job_type, "stage": stage},
    )
    return value or 0.0


def test_a_job_span_continues_the_message_trace_and_its_stages_are_spans_and_samples():
    with telemetry.capture() as exporter:
        with telemetry.tracer("jobs").start_as_current_span("publish") as publisher:
            headers = telemetry.inject({"Nats-Msg-Id": "job-7"})
        assert "traceparent" in headers
        before = _stage_count("sdxl", "sdxl_image_fast", "denoise")
        failed_before = _stage_count("sdxl", "sdxl_image_fast", "decode")
        with telemetry.job(
            "sdxl", "sdxl.job", headers, job_id="job-7", job_type="sdxl_image_fast"
        ) as job:
            job.set_attempt(2)
            with telemetry.stage("sdxl.denoise", steps=3):
                pass
            with pytest.raises(RuntimeError), telemetry.stage("sdxl.decode"):
                raise RuntimeError("out of memory")
        spans = {s.name: s for s in exporter.get_finished_spans()}

    root = publisher.get_span_context()
    job_span, denoise, decode = spans["sdxl.job"], spans["sdxl.denoise"], spans["sdxl.decode"]
    assert job_span.context.trace_id == root.trace_id
    assert job_span.parent.span_id == root.span_id
    assert job_span.kind == trace.SpanKind.CONSUMER
    assert job_span.instrumentation_scope.name == "ourvidz.sdxl"
    assert job_span.resource.attributes["service.name"] == "sdxl"
    for span in (denoise, decode):
        assert span.parent.span_id == job_span.context.span_id
        assert span.attributes["ourvidz.service"] == "sdxl"
        assert span.attributes["job.id"] == "job-7"
        assert span.attributes["job.type"] == "sdxl_image_fast"
        assert span.attributes["job.attempt"] == 2
    assert denoise.attributes["ourvidz.stage"] == "denoise"
    assert denoise.attributes["steps"] == 3
    assert decode.status.status_code == trace.StatusCode.ERROR
    # A finished stage is one sample; one that raised is none.
    assert _stage_count("sdxl", "sdxl_image_fast", "denoise") == before + 1
    assert _stage_count("sdxl", "sdxl_image_fast", "decode") == failed_before


def test_only_the_w3c_trace_context_travels_not_a_clients_baggage():
    incoming = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "baggage": "user=someone-else",
    }
    with (
        telemetry.capture(),
        telemetry.tracer("gateway").start_as_current_span(
            "request", context=telemetry.extract(incoming)
        ),
    ):
        outgoing = telemetry.inject()
    assert set(outgoing) == {"traceparent"}
    carried = trace.get_current_span(telemetry.extract(outgoing)).get_span_context()
    assert carried.trace_id == 0x0AF7651916CD43DD8448EB211C80319C


def test_a_message_without_trace_context_starts_a_trace_of_its_own():
    with telemetry.capture() as exporter:
        with telemetry.job("workspace", "workspace.file", None, job_id="j", job_type="t"):
            pass
        (span,) = exporter.get_finished_spans()
    assert span.parent is None and span.context.is_valid


@pytest.mark.parametrize("as_json", [True, False])
def test_log_lines_inside_a_span_carry_its_trace_and_span_ids(as_json):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    formatter = logs.JsonFormatter("sdxl") if as_json else logs.PlainFormatter("sdxl")
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"tests.telemetry.{as_json}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    with telemetry.capture():
        logger.info("outside")
        with (
            logs.bind(job_id="job-9"),
            telemetry.tracer("sdxl").start_as_current_span("work") as span,
        ):
            logger.info("inside")
    ctx = span.get_span_context()
    outside, inside = stream.getvalue().splitlines()
    trace_id, span_id = f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
    if as_json:
        assert "trace_id" not in json.loads(outside)
        entry = json.loads(inside)
        assert (entry["trace_id"], entry["span_id"], entry["job_id"]) == (
            trace_id,
            span_id,
            "job-9",
        )
    else:
        assert "trace_id" not in outside
        assert inside.endswith(f"inside job_id=job-9 trace_id={trace_id} span_id={span_id}")


async def test_grpc_calls_carry_the_callers_trace_unary_and_streaming():
    """Health is left out of traces; reflection (a stream) and a unary call
    of a real servicer are traced: the server span is the child of the
    client span, in the caller's trace, named for its service."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from ourvidz import grpcserver
    from ourvidz.v1 import job_service_pb2, job_service_pb2_grpc
    from tests.conftest import VERIFIER, token

    class Jobs(job_service_pb2_grpc.JobServiceServicer):
        async def GetJob(self, request, context):
            return job_service_pb2.GetJobResponse()

        async def WatchJob(self, request, context):
            yield job_service_pb2.WatchJobResponse()
            yield job_service_pb2.WatchJobResponse()

    served = grpcserver.build_server(
        verifier=VERIFIER,
        register=lambda s: job_service_pb2_grpc.add_JobServiceServicer_to_server(Jobs(), s),
        service_names=["ourvidz.v1.JobService"],
        service="jobs",
    )
    await served.start()
    channel = grpcserver.channel(f"127.0.0.1:{served.port}", service="gateway")
    stub = job_service_pb2_grpc.JobServiceStub(channel)
    metadata = (("authorization", f"Bearer {token('00000000-0000-0000-0000-000000000001')}"),)
    try:
        with telemetry.capture() as exporter:
            with telemetry.tracer("gateway").start_as_current_span("request") as request:
                await stub.GetJob(job_service_pb2.GetJobRequest(job_id="j-1"), metadata=metadata)
                replies = [
                    r
                    async for r in stub.WatchJob(
                        job_service_pb2.WatchJobRequest(job_id="j-1"), metadata=metadata
                    )
                ]
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            spans = exporter.get_finished_spans()
    finally:
        await channel.close()
        await served.stop(0)
    assert len(replies) == 2
    trace_id = request.get_span_context().trace_id
    assert all(s.context.trace_id == trace_id for s in spans)
    assert not [s for s in spans if "Health" in s.name]
    by_kind: dict = {}
    for span in spans:
        by_kind.setdefault((span.name, span.kind), span)
    for method in ("GetJob", "WatchJob"):
        name = f"/ourvidz.v1.JobService/{method}"
        client = by_kind[(name, trace.SpanKind.CLIENT)]
        server = by_kind[(name, trace.SpanKind.SERVER)]
        assert client.attributes["ourvidz.service"] == "gateway"
        assert server.attributes["ourvidz.service"] == "jobs"
        assert server.parent.span_id == client.context.span_id
        assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
