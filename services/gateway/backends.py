"""The gRPC services behind the gateway: channels, stubs, and calls that carry
the caller's bearer token and a deadline."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ourvidz.auth import call_metadata
from ourvidz.v1 import job_service_pb2_grpc, workspace_service_pb2_grpc

JOB_SERVICE = "ourvidz.v1.JobService"
WORKSPACE_SERVICE = "ourvidz.v1.WorkspaceService"


@dataclass
class Backends:
    jobs_channel: grpc.aio.Channel
    workspace_channel: grpc.aio.Channel
    deadline: float

    def __post_init__(self) -> None:
        self.jobs = job_service_pb2_grpc.JobServiceStub(self.jobs_channel)
        self.workspace = workspace_service_pb2_grpc.WorkspaceServiceStub(self.workspace_channel)

    async def call(self, method, request, token: str, *, deadline: float | None = None):
        """A unary call as the caller; a failing status raises grpc.aio.AioRpcError,
        which the problem handlers turn into HTTP."""
        return await method(
            request, metadata=call_metadata(token), timeout=deadline or self.deadline
        )

    def stream(self, method, request, token: str):
        """A server stream as the caller; no deadline (it lives as long as the client)."""
        return method(request, metadata=call_metadata(token))

    async def health(self) -> dict[str, str]:
        """The gRPC health status of each service, by name ("SERVING" when up)."""
        out = {}
        for name, chan, service in (
            ("jobs", self.jobs_channel, JOB_SERVICE),
            ("workspace", self.workspace_channel, WORKSPACE_SERVICE),
        ):
            out[name] = await _check(chan, service, min(self.deadline, 2.0))
        return out

    async def close(self) -> None:
        await self.jobs_channel.close()
        await self.workspace_channel.close()


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
