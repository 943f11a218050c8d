"""The gRPC services behind the gateway: channels, stubs, and calls that carry
the caller's bearer token and a deadline."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ourvidz.auth import call_metadata
from ourvidz.errors import Unavailable
from ourvidz.v1 import enhancer_service_pb2_grpc, job_service_pb2_grpc, workspace_service_pb2_grpc

JOB_SERVICE = "ourvidz.v1.JobService"
WORKSPACE_SERVICE = "ourvidz.v1.WorkspaceService"
ENHANCER_SERVICE = "ourvidz.v1.EnhancerService"


@dataclass
class Backends:
    jobs_channel: grpc.aio.Channel
    workspace_channel: grpc.aio.Channel
    deadline: float
    # Prompt enhancement, templates and the playground. Optional for serving:
    # jobs go on without it (Jobs falls back to the original prompt).
    enhancer_channel: grpc.aio.Channel | None = None

    def __post_init__(self) -> None:
        self.jobs = job_service_pb2_grpc.JobServiceStub(self.jobs_channel)
        self.workspace = workspace_service_pb2_grpc.WorkspaceServiceStub(self.workspace_channel)
        self.enhancer = (
            enhancer_service_pb2_grpc.EnhancerServiceStub(self.enhancer_channel)
            if self.enhancer_channel is not None
            else None
        )

    def enhancer_stub(self) -> enhancer_service_pb2_grpc.EnhancerServiceStub:
        """The EnhancerService stub; 503 when this gateway has none configured."""
        if self.enhancer is None:
            raise Unavailable("the enhancer is not configured")
        return self.enhancer

    async def call(self, method, request, token: str, *, deadline: float | None = None):
        """A unary call as the caller; a failing status raises grpc.aio.AioRpcError,
        which the problem handlers turn into HTTP."""
        return await method(
            request, metadata=call_metadata(token), timeout=deadline or self.deadline
        )

    def stream(self, method, request, token: str, *, deadline: float | None = None):
        """A server stream as the caller; by default no deadline (it lives as
        long as the client)."""
        return method(request, metadata=call_metadata(token), timeout=deadline)

    async def health(self) -> dict[str, str]:
        """The gRPC health status of each service, by name ("SERVING" when up)."""
        out = {}
        for name, chan, service in (
            ("jobs", self.jobs_channel, JOB_SERVICE),
            ("workspace", self.workspace_channel, WORKSPACE_SERVICE),
        ):
            out[name] = await _check(chan, service, min(self.deadline, 2.0))
        return out

    async def optional_health(self) -> dict[str, str]:
        """The status of services the gateway serves without (readiness does
        not wait for them; enhancement routes answer 503 while they are down)."""
        if self.enhancer_channel is None:
            return {"enhancer": "NOT_CONFIGURED"}
        return {
            "enhancer": await _check(
                self.enhancer_channel, ENHANCER_SERVICE, min(self.deadline, 2.0)
            )
        }

    async def close(self) -> None:
        await self.jobs_channel.close()
        await self.workspace_channel.close()
        if self.enhancer_channel is not None:
            await self.enhancer_channel.close()


async def _check(chan: grpc.aio.Channel, service: str, seconds: float) -> str:
    stub = health_pb2_grpc.HealthStub(chan)
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=seconds)
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            # The service name is not registered with health; fall back to the server's.
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=seconds)
            except grpc.aio.AioRpcError as inner:
                return inner.code().name
        else:
            return err.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
