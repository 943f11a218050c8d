"""Prometheus metrics of every service, on an internal port of its own.

Each service's `start()` calls `start_metrics_server(settings)`: the default
prometheus_client registry at `http://METRICS_HOST:METRICS_PORT/metrics`
(METRICS_PORT=0, the default, serves nothing; k8s sets 0.0.0.0 and 9464). The
public ports (the gateway's HTTP API, the gRPC ports) never serve metrics.

Every metric the mesh exports is defined here, once per process, on the
default registry: several services started in one process (the tests' mesh)
share them, and their labels tell the services apart. Names start with
`ourvidz_`, carry their unit, and every label takes a bounded set of values
(job types of the catalog, worker families, consumer names, gRPC methods,
error codes of `ourvidz.errors.JOB_ERROR_CODES`). docs/OBSERVABILITY.md lists
them.
"""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from ourvidz.errors import JOB_ERROR_CODES

log = logging.getLogger(__name__)

# --- the queue (Jobs polls JetStream's consumer info) ----------------------------------

QUEUE_DECLARED = Gauge(
    "ourvidz_queue_consumer_declared",
    "1 when the durable consumer exists on the TASKS stream (a worker of its family "
    "has started once), else 0.",
    ["consumer"],
)
QUEUE_PENDING = Gauge(
    "ourvidz_queue_pending_tasks",
    "Tasks waiting on the consumer, not yet delivered (JetStream num_pending): the consumer's lag.",
    ["consumer"],
)
QUEUE_ACK_PENDING = Gauge(
    "ourvidz_queue_ack_pending_tasks",
    "Tasks delivered to a worker and not yet acknowledged (num_ack_pending).",
    ["consumer"],
)
QUEUE_REDELIVERED = Gauge(
    "ourvidz_queue_redelivered_tasks",
    "Tasks delivered more than once and not yet acknowledged (num_redelivered).",
    ["consumer"],
)
QUEUE_WAITING_PULLS = Gauge(
    "ourvidz_queue_waiting_pulls",
    "Pull requests of idle workers waiting for a task (num_waiting).",
    ["consumer"],
)
QUEUE_GAUGES = (QUEUE_PENDING, QUEUE_ACK_PENDING, QUEUE_REDELIVERED, QUEUE_WAITING_PULLS)

# --- the backlog (set by Jobs' dispatcher) -------------------------------------------

# Jobs holds queued jobs back and publishes a task only when a worker can take
# it, so the consumers' lag is not the backlog: this is, and KEDA scales the
# model workers on it (deploy/k8s/components/queue-autoscaling).
JOBS_WAITING = Gauge(
    "ourvidz_jobs_waiting",
    "Queued jobs of the worker family not yet started, held back by Jobs or waiting on "
    "the queue (a shared value: every Jobs replica sets the same; aggregate with max()).",
    ["family"],
)

# --- jobs (measured by Jobs at StartJob, CompleteJob, FailJob) ----------------------------

JOB_QUEUE_SECONDS = Histogram(
    "ourvidz_job_queue_seconds",
    "Time a job waited in the queue: from becoming queued (submitted, enhanced, or "
    "handed back for a retry) to the StartJob of a worker.",
    ["job_type"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
JOB_GENERATION_SECONDS = Histogram(
    "ourvidz_job_generation_seconds",
    "Time from a job's first start to its completion (every attempt included).",
    ["job_type"],
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)
JOB_STARTS = Counter(
    "ourvidz_job_starts",
    "Attempts started: each StartJob that begins a render (a repeat of the same "
    "delivery is not counted).",
    ["job_type"],
)
JOB_ATTEMPTS = Histogram(
    "ourvidz_job_attempts",
    "Attempts a completed job used.",
    ["job_type"],
    buckets=(1, 2, 3, 4, 5, 10),
)
JOB_FAILURES = Counter(
    "ourvidz_job_failures",
    "Jobs that ended failed, by error code (codes outside ourvidz.errors.JOB_ERROR_CODES "
    "are counted as OTHER).",
    ["job_type", "code"],
)
JOB_ATTEMPT_FAILURES = Counter(
    "ourvidz_job_attempt_failures",
    "Attempts that failed and gave the job back to the queue for another one, by code "
    "(WORKER_LOST: the reconciler handed back a silent worker's job).",
    ["job_type", "code"],
)
OUTBOX_BACKLOG = Gauge(
    "ourvidz_outbox_backlog_rows",
    "Outbox rows not yet published to JetStream, as the relay of this replica last "
    "counted them (a shared value: aggregate replicas with max(), not sum()).",
)

# --- the gateway ---------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "ourvidz_gateway_http_requests",
    "HTTP requests by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "ourvidz_gateway_http_request_duration_seconds",
    "Time to serve an HTTP request (for streams: their lifetime).",
    ["method", "route"],
)
SSE_WATCHERS = Gauge(
    "ourvidz_gateway_sse_watchers",
    "Server-Sent Event streams open now, by kind (job: a job's events, session: a "
    "workspace session's, chat: a playground chat).",
    ["stream"],
)

# --- gRPC servers (ourvidz.grpcserver.MetricsInterceptor) ---------------------------------

GRPC_REQUESTS = Counter(
    "ourvidz_grpc_server_requests",
    "gRPC calls served, by service, method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
GRPC_LATENCY = Histogram(
    "ourvidz_grpc_server_request_duration_seconds",
    "Time to serve a gRPC call (for server streams: their lifetime).",
    ["grpc_service", "grpc_method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def failure_code(code: str) -> str:
    """A job's error code as a label value: one of JOB_ERROR_CODES, else OTHER."""
    return code if code in JOB_ERROR_CODES else "OTHER"


# --- GPU memory (the model workers) --------------------------------------------------------


class GpuMemoryCollector:
    """torch.cuda's memory counters per device, read at each scrape. Nothing is
    reported where torch is not loaded, CUDA is not available or not yet in use
    (a CPU worker has no such series at all, rather than zeros)."""

    def __init__(self, torch: Any = None) -> None:
        self._torch = torch  # tests pass a stand-in; else the process's torch, once loaded

    def describe(self):
        return []

    def collect(self):
        torch = self._torch or sys.modules.get("torch")
        if torch is None:
            return
        try:
            if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
                return
            count = torch.cuda.device_count()
            readings = [
                (
                    str(index),
                    torch.cuda.memory_allocated(index),
                    torch.cuda.memory_reserved(index),
                    torch.cuda.max_memory_allocated(index),
                )
                for index in range(count)
            ]
        except Exception as exc:  # a scrape must never fail for this
            log.debug("GPU memory not readable: %s", exc)
            return
        families = (
            GaugeMetricFamily(
                "ourvidz_gpu_memory_allocated_bytes",
                "GPU memory held by tensors (torch.cuda.memory_allocated).",
                labels=["device"],
            ),
            GaugeMetricFamily(
                "ourvidz_gpu_memory_reserved_bytes",
                "GPU memory reserved by torch's caching allocator (torch.cuda.memory_reserved).",
                labels=["device"],
            ),
            GaugeMetricFamily(
                "ourvidz_gpu_memory_max_allocated_bytes",
                "Peak GPU memory held by tensors since the process started "
                "(torch.cuda.max_memory_allocated).",
                labels=["device"],
            ),
        )
        for device, allocated, reserved, peak in readings:
            families[0].add_metric([device], allocated)
            families[1].add_metric([device], reserved)
            families[2].add_metric([device], peak)
        yield from families


_gpu_lock = threading.Lock()
_gpu_collector: GpuMemoryCollector | None = None


def register_gpu_collector() -> None:
    """Add the GPU memory collector to the default registry (once per process)."""
    global _gpu_collector
    with _gpu_lock:
        if _gpu_collector is None:
            _gpu_collector = GpuMemoryCollector()
            REGISTRY.register(_gpu_collector)


# --- the internal HTTP server ---------------------------------------------------------------


@dataclass
class MetricsServer:
    """prometheus_client's own HTTP server (a thread) serving the default registry."""

    host: str
    port: int
    _server: Any
    _thread: threading.Thread
    _stopped: bool = False

    def stop(self) -> None:
        """Close the port (once; a second call does nothing)."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def start_metrics_server(
    settings, *, gpu: bool = False, port: int | None = None
) -> MetricsServer | None:
    """Serve /metrics on settings.metrics_host:metrics_port (`port` overrides
    it); None when the port is 0 (metrics off). `gpu`: add the GPU memory
    collector (model workers). A port that cannot be bound raises OSError,
    which stops the service's start: a scrape target that silently does not
    exist would go unnoticed."""
    if gpu:
        register_gpu_collector()
    wanted = settings.metrics_port if port is None else port
    if not wanted:
        return None
    server, thread = start_http_server(wanted, addr=settings.metrics_host, registry=REGISTRY)
    bound = server.server_address[1]
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, bound)
    return MetricsServer(host=settings.metrics_host, port=bound, _server=server, _thread=thread)
