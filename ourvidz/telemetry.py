"""Traces: one OpenTelemetry trace per job, from the HTTP request that
submits it through Jobs, the queue, the enhancer and the worker to the
workspace filer; and the time of each stage of a job.

- `setup(service, settings)` (called by `runtime.run` for every service)
  installs the SDK's tracer provider. Export is off unless the standard
  variables ask for it: OTEL_TRACES_EXPORTER (otlp, console; a list), or an
  OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT),
  which alone means "otlp". The exporters, the batch processor (OTEL_BSP_*),
  the sampler (OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG), the resource
  (OTEL_RESOURCE_ATTRIBUTES; OTEL_SERVICE_NAME overrides the service's name)
  and propagation (OTEL_PROPAGATORS; W3C tracecontext alone by default) read
  their own variables. OTEL_SDK_DISABLED=true installs nothing: spans are
  then not recorded, but trace context still passes through.
- Several services can share a process (the in-process mesh of the tests and
  benchmarks). Each service gets its own provider, with its own resource
  (`service.name`) and an `ourvidz.service` attribute on each of its spans, all
  feeding the same processors; our own spans come from the instrumentation
  scope `ourvidz.<service>`. `tracer_provider(service)` resolves lazily, so a
  server or channel built before `setup` (or `capture`) traces once it runs.
- Propagation: HTTP through the gateway's instrumented app, gRPC through the
  client and server interceptors here, NATS through message headers (`inject`
  into the outbox row or a publish's headers, `extract` from a message's).
- `job(...)` opens the span of a job taken from the queue, a child of the
  context its message carried; `stage(...)` the span of one stage, and it
  observes `ourvidz_stage_seconds` (service, job_type, stage).
- `capture()` (tests): an in-memory exporter for the whole process.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import inspect
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, SynchronousMultiSpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import Histogram

log = logging.getLogger(__name__)

SERVICE_ATTR = "ourvidz.service"
STAGE_ATTR = "ourvidz.stage"
JOB_ID_ATTR = "job.id"
JOB_TYPE_ATTR = "job.type"
JOB_ATTEMPT_ATTR = "job.attempt"
SCOPE_PREFIX = "ourvidz."

# Seconds of each finished stage of a job (a stage that raised is not observed).
STAGE_SECONDS = Histogram(
    "ourvidz_stage_seconds",
    "Duration of one stage of a job (enhance, encode_text, denoise, decode, "
    "encode_video, upload), finished stages only.",
    ["service", "job_type", "stage"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300, 600),
)

# gRPC services left out of traces: probes and tooling, not work.
_UNTRACED_GRPC = ("grpc.health.", "grpc.reflection.")
# The gateway's paths left out of traces (regular expressions, searched in the URL).
_UNTRACED_HTTP = "/healthz$,/readyz$"
_TRUE = ("true", "1", "yes", "on")


# --- the process's providers ------------------------------------------------------------


class _Fanout(SpanProcessor):
    """The span processors every service's provider shares: the exporters of
    `setup`, a test's in-memory exporter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processors: tuple[SpanProcessor, ...] = ()
        self._shut = False

    def add(self, processor: SpanProcessor) -> None:
        with self._lock:
            self._processors = (*self._processors, processor)

    def remove(self, processor: SpanProcessor) -> None:
        with self._lock:
            self._processors = tuple(p for p in self._processors if p is not processor)

    def on_start(self, span, parent_context: Context | None = None) -> None:
        for processor in self._processors:
            processor.on_start(span, parent_context=parent_context)

    def _on_ending(self, span) -> None:
        for processor in self._processors:
            processor._on_ending(span)

    def on_end(self, span) -> None:
        for processor in self._processors:
            processor.on_end(span)

    def shutdown(self) -> None:
        with self._lock:
            if self._shut:
                return
            self._shut = True
            processors = self._processors
        for processor in processors:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(p.force_flush(timeout_millis) for p in self._processors)


class _ServiceAttribute(SpanProcessor):
    """Marks each span of a service's provider with `ourvidz.service`."""

    def __init__(self, service: str) -> None:
        self.service = service

    def on_start(self, span, parent_context: Context | None = None) -> None:
        span.set_attribute(SERVICE_ATTR, self.service)


@dataclass
class _State:
    environment: str = ""
    fanout: _Fanout = field(default_factory=_Fanout)
    providers: dict[str, Any] = field(default_factory=dict)
    exporters: list = field(default_factory=list)
    exporting: bool = False


_state: _State | None = None
_state_lock = threading.RLock()


def _sdk_disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE


def _provider(state: _State, service: str):
    """The SDK provider of `service` (made once), feeding the shared processors."""
    provider = state.providers.get(service)
    if provider is not None:
        return provider
    defaults = {"service.namespace": "ourvidz"}
    if state.environment:
        defaults["deployment.environment"] = state.environment
    # OTEL_RESOURCE_ATTRIBUTES wins over the defaults; OTEL_SERVICE_NAME over the name.
    name = os.environ.get("OTEL_SERVICE_NAME") or service or "ourvidz"
    resource = Resource(defaults).merge(Resource.create({SERVICE_NAME: name}))
    processors = SynchronousMultiSpanProcessor()
    if service:
        processors.add_span_processor(_ServiceAttribute(service))
    processors.add_span_processor(state.fanout)
    # The sampler comes from OTEL_TRACES_SAMPLER (parent-based, always on by default).
    provider = TracerProvider(
        resource=resource,
        active_span_processor=processors,
        shutdown_on_exit=False,
    )
    state.providers[service] = provider
    return provider


def _ensure_state(service: str, environment: str = "") -> _State | None:
    """The process's state, made on first use (None when the SDK is disabled).
    The first service to ask gets the process's global provider."""
    global _state
    if _sdk_disabled():
        return None
    with _state_lock:
        if _state is None:
            state = _State(environment=environment)
            if not os.environ.get("OTEL_PROPAGATORS"):
                # W3C trace context only: no baggage from outside (a client's
                # request) travels into the mesh's calls and messages.
                propagate.set_global_textmap(TraceContextTextMapPropagator())
            trace.set_tracer_provider(_provider(state, service))
            atexit.register(_shutdown)
            _state = state
        return _state


def _shutdown() -> None:
    state = _state
    if state is not None:
        with contextlib.suppress(Exception):
            state.fanout.force_flush(5000)
        with contextlib.suppress(Exception):
            state.fanout.shutdown()


# --- exporters from the environment ---------------------------------------------------


def exporter_names(env: Mapping[str, str] | None = None) -> list[str]:
    """The trace exporters the environment asks for: OTEL_TRACES_EXPORTER
    (comma separated; "none" for none), else "otlp" when an OTLP endpoint is
    set, else none (export is off by default)."""
    env = os.environ if env is None else env
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if raw:
        names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        names = ["otlp"]
    else:
        names = []
    return [n for n in names if n != "none"]


def _entry_point_name(name: str, env: Mapping[str, str]) -> str:
    """The OTLP exporter of the protocol the environment names for "otlp"
    (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, OTEL_EXPORTER_OTLP_PROTOCOL; grpc by
    default), as the SDK resolves it."""
    if name != "otlp":
        return name
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    return "otlp_proto_http" if protocol.startswith("http") else "otlp_proto_grpc"


def _load_exporters(names: list[str]) -> list:
    """An exporter for each name, built by its package's entry point with no
    arguments: each reads its own OTEL_EXPORTER_* variables."""
    found = {ep.name: ep for ep in entry_points(group="opentelemetry_traces_exporter")}
    exporters = []
    for name in names:
        ep = found.get(_entry_point_name(name, os.environ))
        if ep is None:
            log.error(
                "OTEL_TRACES_EXPORTER names %r, which no installed package provides "
                "(installed: %s); traces are not exported there",
                name,
                ", ".join(sorted(found)) or "none",
            )
            continue
        exporters.append(ep.load()())
    return exporters


def setup(service: str, settings: Any = None) -> bool:
    """Install the tracer provider of `service` for this process and the
    exporters the environment asks for (none by default). Returns whether
    spans are recorded (False with OTEL_SDK_DISABLED=true)."""
    environment = str(getattr(settings, "env", "") or "")
    state = _ensure_state(service, environment)
    if state is None:
        log.info("tracing disabled (OTEL_SDK_DISABLED)")
        return False
    with _state_lock:
        _provider(state, service)
        if not state.exporting:
            state.exporting = True
            names = exporter_names()
            for exporter in _load_exporters(names) if names else []:
                state.exporters.append(exporter)
                state.fanout.add(BatchSpanProcessor(exporter))
            if state.exporters:
                log.info(
                    "traces exported with %s",
                    ", ".join(type(e).__name__ for e in state.exporters),
                )
    return True


def installed_exporters() -> list:
    """The exporters `setup` installed (for tests and diagnostics)."""
    return list(_state.exporters) if _state is not None else []


@contextlib.contextmanager
def capture() -> Iterator[Any]:
    """Record every span of this process (every service in it) in memory
    while inside: yields the `InMemorySpanExporter` (tests)."""
    state = _ensure_state("ourvidz")
    if state is None:
        raise RuntimeError("OTEL_SDK_DISABLED is set: no spans to capture")
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    state.fanout.add(processor)
    try:
        yield exporter
    finally:
        state.fanout.remove(processor)


# --- tracers per service ----------------------------------------------------------------


class _ServiceTracer(trace.Tracer):
    """A tracer of one service that finds its provider when a span starts:
    the service's SDK provider once `setup` (or `capture`) ran, the global one
    (no-op) before."""

    def __init__(self, service: str, name: str, version: str | None, schema_url: str | None):
        self._service = service
        self._name = name
        self._version = version
        self._schema_url = schema_url
        self._cache: tuple[Any, trace.Tracer] | None = None

    def _tracer(self) -> trace.Tracer:
        state = _state
        if state is None or not self._service:
            return trace.get_tracer(self._name, self._version, schema_url=self._schema_url)
        cached = self._cache
        if cached is not None and cached[0] is state:
            return cached[1]
        with _state_lock:
            provider = _provider(state, self._service)
        tracer = provider.get_tracer(self._name, self._version, schema_url=self._schema_url)
        self._cache = (state, tracer)
        return tracer

    def start_span(self, *args, **kwargs) -> trace.Span:
        return self._tracer().start_span(*args, **kwargs)

    def start_as_current_span(self, *args, **kwargs):
        return self._tracer().start_as_current_span(*args, **kwargs)


class ServiceTracerProvider(trace.TracerProvider):
    """The tracer provider of one service, for the instrumentations."""

    def __init__(self, service: str) -> None:
        self.service = service

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Any = None,
    ) -> trace.Tracer:
        return _ServiceTracer(
            self.service, instrumenting_module_name, instrumenting_library_version, schema_url
        )


def tracer_provider(service: str) -> ServiceTracerProvider:
    return ServiceTracerProvider(service)


def tracer(service: str) -> trace.Tracer:
    """The tracer of our own spans of `service` (scope `ourvidz.<service>`)."""
    return _ServiceTracer(service, SCOPE_PREFIX + (service or "mesh"), None, None)


# --- propagation ------------------------------------------------------------------------


def inject(carrier: dict[str, str] | None = None) -> dict[str, str]:
    """The current trace context as headers (traceparent, tracestate, ...);
    empty outside any span."""
    carrier = {} if carrier is None else carrier
    propagate.inject(carrier)
    return carrier


def extract(headers: Mapping[str, str] | None) -> Context:
    """The trace context that message headers carry (an empty one when they
    carry none: a span started in it begins a new trace)."""
    return propagate.extract(dict(headers or {}))


# --- jobs and their stages --------------------------------------------------------------


@dataclass
class JobSpan:
    """The job in hand and its span; stages inside take its attributes."""

    service: str
    job_id: str
    job_type: str
    span: trace.Span
    attempt: int = 0

    def set_attempt(self, attempt: int) -> None:
        self.attempt = attempt
        self.span.set_attribute(JOB_ATTEMPT_ATTR, attempt)

    def failed(self, exc: BaseException, code: str) -> None:
        """The job's attempt failed here (the error was handled, not raised)."""
        self.span.record_exception(exc)
        self.span.set_status(trace.Status(trace.StatusCode.ERROR, code))

    def attributes(self) -> dict[str, Any]:
        out: dict[str, Any] = {JOB_ID_ATTR: self.job_id, JOB_TYPE_ATTR: self.job_type}
        if self.attempt:
            out[JOB_ATTEMPT_ATTR] = self.attempt
        return out


_current_job: contextvars.ContextVar[JobSpan | None] = contextvars.ContextVar(
    "ourvidz_job_span", default=None
)


def current_job() -> JobSpan | None:
    return _current_job.get()


@contextlib.contextmanager
def job(
    service: str,
    name: str,
    headers: Mapping[str, str] | None,
    *,
    job_id: str,
    job_type: str,
    attempt: int = 0,
    **attributes: Any,
) -> Iterator[JobSpan]:
    """The span of a job taken from a queue message (`name`, e.g. "sdxl.job"),
    a child of the context the message's `headers` carry. Stages opened inside
    (in this task or a thread started from it) belong to it."""
    attrs = {JOB_ID_ATTR: job_id, JOB_TYPE_ATTR: job_type, **attributes}
    if attempt:
        attrs[JOB_ATTEMPT_ATTR] = attempt
    with tracer(service).start_as_current_span(
        name, context=extract(headers), kind=trace.SpanKind.CONSUMER, attributes=attrs
    ) as span:
        held = JobSpan(service, job_id, job_type, span, attempt)
        token = _current_job.set(held)
        try:
            yield held
        finally:
            _current_job.reset(token)


@contextlib.contextmanager
def stage(name: str, **attributes: Any) -> Iterator[trace.Span]:
    """One stage of a job: a span `name` ("<service>.<stage>", e.g.
    "sdxl.denoise") with the job's attributes (job.id, job.type, job.attempt,
    from the job in hand, or `job_id=`, `job_type=`, `attempt=` here), and its
    duration observed in `ourvidz_stage_seconds` once it finishes."""
    held = _current_job.get()
    service, _, stage_name = name.partition(".")
    if not stage_name:
        service, stage_name = (held.service if held else ""), name
    attrs: dict[str, Any] = held.attributes() if held else {}
    for key, attr in (("job_id", JOB_ID_ATTR), ("job_type", JOB_TYPE_ATTR)):
        if key in attributes:
            attrs[attr] = attributes.pop(key)
    if "attempt" in attributes:
        attrs[JOB_ATTEMPT_ATTR] = attributes.pop("attempt")
    attrs[STAGE_ATTR] = stage_name
    attrs.update(attributes)
    started = time.perf_counter()
    with tracer(service).start_as_current_span(name, attributes=attrs) as span:
        yield span
    STAGE_SECONDS.labels(service, str(attrs.get(JOB_TYPE_ATTR, "")), stage_name).observe(
        time.perf_counter() - started
    )


# --- gRPC -------------------------------------------------------------------------------


def _traced_method(details) -> bool:
    method = getattr(details, "method", "") or ""
    if isinstance(method, bytes):
        method = method.decode()
    return not method.lstrip("/").startswith(_UNTRACED_GRPC)


def grpc_server_interceptor(service: str):
    """The server interceptor of opentelemetry-instrumentation-grpc for
    `service`: a server span per call, a child of the caller's context. A
    server-streaming handler written as a coroutine that writes each item
    itself (as `grpcserver.ServiceInterceptor` makes them) runs inside its
    span too; health and reflection calls are not traced."""
    from opentelemetry.instrumentation.grpc._aio_server import (
        OpenTelemetryAioServerInterceptor,
        _OpenTelemetryAioServicerContext,
    )

    class _Interceptor(OpenTelemetryAioServerInterceptor):
        def _intercept_aio_server_stream(self, behavior, handler_call_details):
            if not inspect.iscoroutinefunction(behavior):
                return super()._intercept_aio_server_stream(behavior, handler_call_details)

            async def _stream(request, context):
                with (
                    self._set_remote_context(context),
                    self._start_span(
                        handler_call_details, context, set_status_on_exception=False
                    ) as span,
                ):
                    return await behavior(request, _OpenTelemetryAioServicerContext(context, span))

            return _stream

    scope = "opentelemetry.instrumentation.grpc"
    return _Interceptor(
        tracer_provider(service).get_tracer(
            scope, schema_url="https://opentelemetry.io/schemas/1.11.0"
        ),
        filter_=_traced_method,
    )


def grpc_client_interceptors(service: str) -> list:
    """The aio client interceptors of opentelemetry-instrumentation-grpc for
    `service`: a client span per call, its context sent in the metadata."""
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return aio_client_interceptors(tracer_provider=tracer_provider(service), filter_=_traced_method)


# --- HTTP -------------------------------------------------------------------------------


def instrument_fastapi(app, service: str = "gateway") -> None:
    """A server span per request (a child of the client's traceparent), the
    probes left out (OTEL_PYTHON_FASTAPI_EXCLUDED_URLS replaces that list)."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=tracer_provider(service),
        excluded_urls=os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS") or _UNTRACED_HTTP,
        exclude_spans=["receive", "send"],
    )
