"""The shared server plumbing (ourvidz.grpcserver) with a real gRPC server on
port 0: a server stream the client leaves early is closed in its own call's
context."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

from ourvidz.auth import call_metadata, current_principal, mint_token
from ourvidz.grpcserver import build_server, channel
from ourvidz.v1 import events_pb2
from ourvidz.v1 import job_service_pb2 as pb
from ourvidz.v1 import job_service_pb2_grpc as pb_grpc

SECRET = "s" * 40


class StreamingJobs(pb_grpc.JobServiceServicer):
    """WatchJob sends large events as fast as the client takes them."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.closed_as: str | None = None

    async def WatchJob(self, request, context):
        try:
            for sequence in itertools.count(1):
                yield pb.WatchJobResponse(
                    event=events_pb2.JobEvent(
                        job_id=request.job_id, sequence=sequence, preview_png=b"p" * 256_000
                    )
                )
        finally:
            # Who the stream belongs to, as seen where it is closed.
            try:
                self.closed_as = current_principal().subject
            except Exception as exc:
                self.closed_as = repr(exc)
            self.closed.set()


@pytest.fixture
async def served():
    servicer = StreamingJobs()
    server = build_server(
        secret=SECRET,
        register=lambda s: pb_grpc.add_JobServiceServicer_to_server(servicer, s),
        service_names=["ourvidz.v1.JobService"],
        port=0,
    )
    await server.start()
    ch = channel(f"127.0.0.1:{server.port}")
    try:
        yield servicer, pb_grpc.JobServiceStub(ch)
    finally:
        await ch.close()
        await server.stop(0)


def user_md(subject: str = "user-1"):
    return call_metadata(mint_token(SECRET, subject, "user", 60))


async def test_a_stream_left_early_closes_in_its_own_context(served, caplog):
    servicer, stub = served
    caplog.set_level(logging.DEBUG)
    call = stub.WatchJob(pb.WatchJobRequest(job_id="job-1"), metadata=user_md("watcher"))
    first = await call.read()
    assert first.event.sequence == 1
    # The server is sending (the client reads no more), then the client leaves.
    call.cancel()
    await asyncio.wait_for(servicer.closed.wait(), 30)
    assert servicer.closed_as == "watcher"
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    logged += [r for r in caplog.records if "different Context" in r.getMessage()]
    assert not logged, [r.getMessage() for r in logged]
