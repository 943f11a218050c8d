"""Building a service's gRPC server: the identity-and-errors interceptor, the
standard health service and reflection, a port that may be 0 (tests), and a
graceful stop.

`build_server()` returns the server, the port it bound and the health
servicer; `main.py` of each service starts it and owns the signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc
from grpc._cython import cygrpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ourvidz import metrics
from ourvidz.auth import TokenVerifier, bearer, reset_principal, set_principal
from ourvidz.errors import Unauthenticated, abort_with

log = logging.getLogger(__name__)

# What a write to a call that is already over raises (grpc's core refuses it).
_CALL_GONE: tuple[type[BaseException], ...] = tuple(
    cls for cls in (getattr(cygrpc, "ExecuteBatchError", None),) if isinstance(cls, type)
)

_OPEN_PREFIXES = ("/grpc.health.", "/grpc.reflection.")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Verifies the bearer token of every call (but health and reflection), makes
    the caller available through `ourvidz.auth.current_principal()`, and maps
    domain errors to status codes, a dependency's failure to UNAVAILABLE; any
    other exception becomes INTERNAL with a generic message."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    def _authenticate(self, context: grpc.aio.ServicerContext):
        token = bearer(context.invocation_metadata())
        if not token:
            raise Unauthenticated("missing bearer token")
        return self._verifier.verify(token)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_OPEN_PREFIXES):
            return handler
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _wrap_unary(self, inner, method: str):
        async def call(request, context):
            try:
                token = set_principal(self._authenticate(context))
                try:
                    return await inner(request, context)
                finally:
                    reset_principal(token)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await abort_with(context, exc, method)

        return call

    def _wrap_stream(self, inner, method: str):
        """A server stream as a coroutine that writes each item itself.

        Left to grpc, an async generator handler is iterated by grpc's own
        loop, which drops it unclosed when the call ends while an item is being
        sent (the client went away): the generator is then closed later by the
        garbage collector, in another task and another context, where resetting
        the caller's context variable fails ("created in a different Context")
        and the stream's clean-up (unsubscribing) runs late. Here the inner
        generator is closed in this task, on every way out."""

        async def call(request, context):
            try:
                token = set_principal(self._authenticate(context))
            except Exception as exc:
                await abort_with(context, exc, method)
            try:
                async with contextlib.aclosing(inner(request, context)) as items:
                    while True:
                        try:
                            item = await anext(items)
                        except StopAsyncIteration:
                            return
                        except grpc.aio.AbortError:
                            raise
                        except Exception as exc:
                            await abort_with(context, exc, method)
                        try:
                            await context.write(item)
                        except _CALL_GONE as exc:
                            # The client left (or the call ended) under the
                            # write: nothing to report, as for a cancellation.
                            raise asyncio.CancelledError() from exc
            finally:
                reset_principal(token)

        return call


def _code_name(context, default: str) -> str:
    """The status the call ended with, as its name ("OK", "NOT_FOUND", ...)."""
    try:
        code = context.code()
    except Exception:
        code = None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
    return default


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call of the server's methods by service, method and status
    code, and times it (a server stream: its whole lifetime). Outermost, so it
    sees the status the other interceptors give (an abort, UNAUTHENTICATED).
    Calls of methods the server does not have are not counted: their names
    would be whatever a caller sends."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, _, name = handler_call_details.method.lstrip("/").rpartition("/")
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, service, name),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            inner = handler.unary_stream
            wrap = self._wrap_generator if inspect.isasyncgenfunction(inner) else self._wrap_unary
            return grpc.unary_stream_rpc_method_handler(
                wrap(inner, service, name),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    @staticmethod
    def _record(service: str, name: str, code: str, started: float) -> None:
        metrics.GRPC_REQUESTS.labels(service, name, code).inc()
        metrics.GRPC_LATENCY.labels(service, name).observe(time.perf_counter() - started)

    def _wrap_unary(self, inner, service: str, name: str):
        async def call(request, context):
            started = time.perf_counter()
            code = "UNKNOWN"
            try:
                result = await inner(request, context)
                code = _code_name(context, "OK")
                return result
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except grpc.aio.AbortError:
                code = _code_name(context, "UNKNOWN")
                raise
            finally:
                self._record(service, name, code, started)

        return call

    def _wrap_generator(self, inner, service: str, name: str):
        async def call(request, context):
            started = time.perf_counter()
            code = "UNKNOWN"
            try:
                async with contextlib.aclosing(inner(request, context)) as items:
                    async for item in items:
                        yield item
                code = _code_name(context, "OK")
            except (asyncio.CancelledError, GeneratorExit):
                code = "CANCELLED"
                raise
            except grpc.aio.AbortError:
                code = _code_name(context, "UNKNOWN")
                raise
            finally:
                self._record(service, name, code, started)

        return call


@dataclass
class Served:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float = 10.0) -> None:
        """Mark every service NOT_SERVING, then stop with a grace period."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def build_server(
    *,
    verifier: TokenVerifier,
    register: Callable[[grpc.aio.Server], None],
    service_names: Iterable[str],
    host: str = "127.0.0.1",
    port: int = 0,
    interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
) -> Served:
    server = grpc.aio.server(
        interceptors=[MetricsInterceptor(), ServiceInterceptor(verifier), *interceptors],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # gRPC binds with SO_REUSEPORT by default: a second service given
            # the same port would start and silently take half of the calls.
            # Without it, that start fails.
            ("grpc.so_reuseport", 0),
        ],
    )
    register(server)
    names = list(service_names)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"could not bind {host}:{port}")
    return Served(server=server, port=bound, health=health_servicer)


async def set_serving(served: Served, service_names: Iterable[str], serving: bool = True) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    await served.health.set("", status)
    for name in service_names:
        await served.health.set(name, status)


def channel(addr: str) -> grpc.aio.Channel:
    """A client channel with the mesh's message size limits. It tries to
    reconnect to a peer that went away at least every 5 s (gRPC's default
    back-off grows to 2 minutes, so a service that came back would stay
    "unavailable" to its callers for that long)."""
    return grpc.aio.insecure_channel(
        addr,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 5000),
        ],
    )
