"""A JobService in front of the real one for workers, that commits every
other completion and then loses its answer: the awkward order a deadline or a
dropped connection produces."""

from __future__ import annotations

import grpc

from ourvidz.v1 import job_service_pb2_grpc


class LossyJobs(job_service_pb2_grpc.JobServiceServicer):
    def __init__(self, target: str) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = job_service_pb2_grpc.JobServiceStub(self._channel)
        self.completions = 0
        self.lost = 0

    async def _forward(self, name: str, request, context):
        metadata = [(k, v) for k, v in context.invocation_metadata() if k == "authorization"]
        try:
            return await getattr(self._stub, name)(request, metadata=metadata, timeout=15)
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details(), exc.trailing_metadata())

    async def StartJob(self, request, context):
        return await self._forward("StartJob", request, context)

    async def ReportProgress(self, request, context):
        return await self._forward("ReportProgress", request, context)

    async def Heartbeat(self, request, context):
        return await self._forward("Heartbeat", request, context)

    async def FailJob(self, request, context):
        return await self._forward("FailJob", request, context)

    async def CompleteJob(self, request, context):
        response = await self._forward("CompleteJob", request, context)
        self.completions += 1
        if self.completions % 2 == 1:  # committed; the worker never hears of it
            self.lost += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the answer was lost")
        return response

    async def close(self) -> None:
        await self._channel.close()


async def serve(target: str) -> tuple[grpc.aio.Server, int, LossyJobs]:
    server = grpc.aio.server()
    lossy = LossyJobs(target)
    job_service_pb2_grpc.add_JobServiceServicer_to_server(lossy, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, lossy
