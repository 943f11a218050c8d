"""Prometheus metrics of the mesh, read as Prometheus reads them: GET /metrics
on each service's internal metrics port, after real jobs went through the
in-process mesh (jobs, workspace, the gateway, the SDXL worker and the
enhancer, tiny models). The services share this process's registry, so every
check compares a value with the one read before the action."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
import urllib.request
import uuid

import httpx
import pytest
from nats.js.errors import NotFoundError
from prometheus_client.parser import text_string_to_metric_families

from ourvidz import queue
from ourvidz.errors import JOB_ERROR_CODES
from ourvidz.grpcserver import channel
from ourvidz.metrics import GpuMemoryCollector, start_metrics_server
from ourvidz.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from ourvidz_dev.stack import ServiceProcesses, running_stack
from services.jobs.queue_metrics import task_consumers
from tests.conftest import token
from tests.e2e.conftest import mesh_env, signup

SIZE = 64
Samples = dict[tuple[str, frozenset], float]


@pytest.fixture(scope="module")
async def stack(base_env):
    env = mesh_env(
        base_env,
        ENHANCER_MODEL="tiny",
        JOBS_METRICS_POLL_SECONDS="0.2",
        JOBS_ENHANCE_TIMEOUT_SECONDS="3600",
    )
    async with running_stack(env, workers=("sdxl",), enhancer=True, metrics=True) as s:
        yield s


@pytest.fixture
async def http(stack):
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
        yield client


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


async def scrape(port: int) -> Samples:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200, response.text
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def until(port: int, check, within: float = 30.0) -> Samples:
    """Scrape `port` until `check(samples)` holds; fail after `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        samples = await scrape(port)
        if check(samples):
            return samples
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the metrics did not show it in time")
        await asyncio.sleep(0.1)


def parts(stack) -> dict[str, object]:
    return {
        "jobs": stack.jobs,
        "workspace": stack.workspace,
        "gateway": stack.gateway,
        "sdxl": stack.sdxl,
        "enhancer": stack.enhancer,
    }


async def test_each_service_serves_metrics_on_its_own_port_and_the_public_port_none(stack):
    ports = {name: part.metrics.port for name, part in parts(stack).items()}
    assert len(set(ports.values())) == len(ports)
    assert stack.gateway.port not in ports.values()
    for name, port in ports.items():
        samples = await scrape(port)
        assert any(key[0].startswith("ourvidz_") for key in samples), name
    async with httpx.AsyncClient(base_url=stack.url) as client:
        assert (await client.get("/metrics")).status_code == 404


async def test_a_job_through_the_mesh_shows_in_the_job_metrics(stack, http):
    port = stack.jobs.metrics.port
    job_type = {"job_type": "sdxl_image_fast"}
    before = await scrape(port)
    user = await signup(http)
    body = {"job_type": "sdxl_image_fast", "prompt": "a red kite", "width": SIZE, "height": SIZE}
    response = await user.post("/v1/jobs", json={**body, "num_images": 1})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    events = await user.events(f"/v1/jobs/{job_id}/events")
    assert events[-1]["event"] == "completed", events

    def counted(samples: Samples) -> bool:
        return value(samples, "ourvidz_job_generation_seconds_count", **job_type) >= (
            value(before, "ourvidz_job_generation_seconds_count", **job_type) + 1
        )

    after = await until(port, counted)
    for name in (
        "ourvidz_job_queue_seconds_count",
        "ourvidz_job_starts_total",
        "ourvidz_job_attempts_count",
    ):
        assert value(after, name, **job_type) >= value(before, name, **job_type) + 1, name
    # Real values: the time in queue and the generation took time, one attempt was used.
    for name in ("ourvidz_job_queue_seconds_sum", "ourvidz_job_generation_seconds_sum"):
        assert value(after, name, **job_type) > value(before, name, **job_type), name
    assert value(after, "ourvidz_job_attempts_sum", **job_type) >= (
        value(before, "ourvidz_job_attempts_sum", **job_type) + 1
    )
    # The calls behind it, by method and code.
    start_ok = {"grpc_service": "ourvidz.v1.JobService", "grpc_method": "StartJob"}
    assert value(after, "ourvidz_grpc_server_requests_total", **start_ok, grpc_code="OK") >= (
        value(before, "ourvidz_grpc_server_requests_total", **start_ok, grpc_code="OK") + 1
    )
    assert value(after, "ourvidz_grpc_server_request_duration_seconds_count", **start_ok) >= 1
    submit = {"method": "POST", "route": "/v1/jobs", "status": "202"}
    name = "ourvidz_gateway_http_requests_total"
    assert value(after, name, **submit) >= value(before, name, **submit) + 1


async def test_queue_gauges_for_each_consumer_and_the_outbox_backlog(stack):
    consumers = task_consumers()
    # The workers of this mesh declared their consumers: sdxl's and the enhancer's.
    running = (queue.consumer_name("sdxl"), queue.ENHANCE_CONSUMER)
    assert set(running) <= set(consumers)

    def polled(samples: Samples) -> bool:
        return all(
            ("ourvidz_queue_consumer_declared", frozenset({("consumer", c)})) in samples
            for c in consumers
        ) and all(value(samples, "ourvidz_queue_consumer_declared", consumer=c) for c in running)

    samples = await until(stack.jobs.metrics.port, polled)
    for consumer in consumers:
        declared = value(samples, "ourvidz_queue_consumer_declared", consumer=consumer)
        for gauge in (
            "ourvidz_queue_pending_tasks",
            "ourvidz_queue_ack_pending_tasks",
            "ourvidz_queue_redelivered_tasks",
            "ourvidz_queue_waiting_pulls",
        ):
            present = (gauge, frozenset({("consumer", consumer)})) in samples
            assert present == bool(declared), (gauge, consumer)
    # A real value: the idle workers' fetches show as waiting pull requests
    # (the SDXL worker fetches from its family's consumer).
    await until(
        stack.jobs.metrics.port,
        lambda s: any(value(s, "ourvidz_queue_waiting_pulls", consumer=c) >= 1 for c in running),
    )
    assert ("ourvidz_outbox_backlog_rows", frozenset()) in samples


async def test_a_failed_job_counts_its_code_and_its_event_stream_the_watchers(stack, http):
    """A WAN job (no WAN worker runs here) is started and failed by this test
    acting as the worker; its event stream, open meanwhile, ends with it."""
    port = stack.gateway.metrics.port
    watchers = {"stream": "job"}
    failure = {"job_type": "image_fast", "code": "INVALID_TASK"}
    before = await scrape(port)
    user = await signup(http)
    body = {"job_type": "image_fast", "prompt": "a blue boat", "width": SIZE, "height": SIZE}
    response = await user.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    events: list[str] = []

    async def watch() -> None:
        async with http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers=user.headers, timeout=60
        ) as stream:
            assert stream.status_code == 200
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    events.append(line.split(":", 1)[1].strip())

    watching = asyncio.create_task(watch())
    nc, js = await queue.connect(stack.env["NATS_URL"], "test-metrics")
    jobs = channel(f"127.0.0.1:{stack.jobs.port}")
    try:
        base = value(before, "ourvidz_gateway_sse_watchers", **watchers)
        await until(
            port, lambda s: value(s, "ourvidz_gateway_sse_watchers", **watchers) >= base + 1
        )

        stub = job_service_pb2_grpc.JobServiceStub(jobs)
        worker = (("authorization", f"Bearer {token('metrics-test-worker', 'worker')}"),)
        started = await stub.StartJob(
            job_service_pb2.StartJobRequest(job_id=job_id, delivery=1), metadata=worker
        )
        assert started.proceed
        await stub.FailJob(
            job_service_pb2.FailJobRequest(
                job_id=job_id,
                start_token=started.start_token,
                error=job_pb2.JobError(code="INVALID_TASK", message="the test refuses it"),
                will_retry=False,
            ),
            metadata=worker,
        )
        await asyncio.wait_for(watching, 30)  # the stream ends with the job
        assert events[-1] == "failed", events
        after = await until(
            port, lambda s: value(s, "ourvidz_gateway_sse_watchers", **watchers) == base
        )
        assert value(after, "ourvidz_job_failures_total", **failure) == (
            value(before, "ourvidz_job_failures_total", **failure) + 1
        )
        assert value(after, "ourvidz_job_starts_total", job_type="image_fast") >= (
            value(before, "ourvidz_job_starts_total", job_type="image_fast") + 1
        )
        # Every failure is labelled with a known code (or OTHER): labels stay bounded.
        codes = {dict(k[1])["code"] for k in after if k[0] == "ourvidz_job_failures_total"}
        assert codes <= {*JOB_ERROR_CODES, "OTHER"}
    finally:
        watching.cancel()
        with contextlib.suppress(BaseException):
            await watching
        await jobs.close()
        # No WAN worker will take the task: take it off the queue.
        subject = queue.job_task_subject("tasks.wan.fast", job_id)
        for _ in range(50):
            try:
                message = await js.get_last_msg(queue.TASKS_STREAM, subject)
            except NotFoundError:
                await asyncio.sleep(0.1)
                continue
            await js.delete_msg(queue.TASKS_STREAM, message.seq)
            break
        await nc.close()


async def test_grpc_errors_are_counted_by_code(stack):
    port = stack.jobs.metrics.port
    labels = {"grpc_service": "ourvidz.v1.JobService", "grpc_method": "GetJob"}
    before = await scrape(port)
    async with channel(f"127.0.0.1:{stack.jobs.port}") as jobs:
        stub = job_service_pb2_grpc.JobServiceStub(jobs)
        user = (("authorization", f"Bearer {token(str(uuid.uuid4()))}"),)
        with pytest.raises(Exception) as caught:
            await stub.GetJob(
                job_service_pb2.GetJobRequest(job_id=str(uuid.uuid4())), metadata=user
            )
        assert "NOT_FOUND" in str(caught.value.code())
        with pytest.raises(Exception) as caught:
            await stub.GetJob(job_service_pb2.GetJobRequest(job_id=str(uuid.uuid4())))
        assert "UNAUTHENTICATED" in str(caught.value.code())
    after = await scrape(port)
    for code in ("NOT_FOUND", "UNAUTHENTICATED"):
        name = "ourvidz_grpc_server_requests_total"
        assert value(after, name, **labels, grpc_code=code) == (
            value(before, name, **labels, grpc_code=code) + 1
        ), code


async def test_gpu_memory_only_where_cuda_is_in_use(stack):
    samples = await scrape(stack.sdxl.metrics.port)
    gpu = [key for key in samples if key[0].startswith("ourvidz_gpu_memory_")]
    torch = sys.modules.get("torch")
    in_use = torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()
    if not in_use:
        assert gpu == []  # absent on the CPU, not zero
    else:
        devices = {dict(key[1])["device"] for key in gpu}
        assert devices == {str(i) for i in range(torch.cuda.device_count())}
        assert value(samples, "ourvidz_gpu_memory_allocated_bytes", device="0") > 0


class FakeCuda:
    """torch.cuda as the collector reads it: two devices, or none in use."""

    def __init__(self, available: bool, initialized: bool) -> None:
        self.available, self.initialized = available, initialized

    def is_available(self) -> bool:
        return self.available

    def is_initialized(self) -> bool:
        return self.initialized

    def device_count(self) -> int:
        return 2

    def memory_allocated(self, index: int) -> int:
        return 1000 * (index + 1)

    def memory_reserved(self, index: int) -> int:
        return 2000 * (index + 1)

    def max_memory_allocated(self, index: int) -> int:
        return 3000 * (index + 1)


class FakeTorch:
    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda = cuda


def collected(collector: GpuMemoryCollector) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels["device"]): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


def test_gpu_memory_per_device_when_cuda_is_in_use():
    found = collected(GpuMemoryCollector(FakeTorch(FakeCuda(True, True))))
    assert found == {
        ("ourvidz_gpu_memory_allocated_bytes", "0"): 1000,
        ("ourvidz_gpu_memory_allocated_bytes", "1"): 2000,
        ("ourvidz_gpu_memory_reserved_bytes", "0"): 2000,
        ("ourvidz_gpu_memory_reserved_bytes", "1"): 4000,
        ("ourvidz_gpu_memory_max_allocated_bytes", "0"): 3000,
        ("ourvidz_gpu_memory_max_allocated_bytes", "1"): 6000,
    }


def test_no_gpu_series_without_cuda_or_before_it_is_used():
    assert collected(GpuMemoryCollector(FakeTorch(FakeCuda(False, False)))) == {}
    assert collected(GpuMemoryCollector(FakeTorch(FakeCuda(True, False)))) == {}


def test_the_metrics_server_is_off_at_port_0_and_a_taken_port_stops_the_start():
    from ourvidz.settings import CommonSettings

    assert start_metrics_server(CommonSettings(metrics_port=0)) is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            start_metrics_server(CommonSettings(metrics_port=port))


def test_a_service_run_as_its_own_process_serves_its_metrics(base_env, tmp_path):
    """`python -m services.jobs`, as `make up` and the deployments run it."""
    procs = ServiceProcesses(env=dict(base_env), log_dir=tmp_path)
    try:
        procs.start("jobs")
        url = f"http://127.0.0.1:{procs.metrics_ports['jobs']}/metrics"
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(url, timeout=5) as response:
                samples = parse(response.read().decode())
            declared = [k for k in samples if k[0] == "ourvidz_queue_consumer_declared"]
            if len(declared) == len(task_consumers()):
                break
            assert time.monotonic() < deadline, sorted(samples)[:20]
            time.sleep(0.1)
        health = {
            "grpc_service": "grpc.health.v1.Health",
            "grpc_method": "Check",
            "grpc_code": "OK",
        }
        assert value(samples, "ourvidz_grpc_server_requests_total", **health) >= 1
    finally:
        procs.stop_all()
