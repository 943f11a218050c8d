"""The shared server plumbing (ourvidz.grpcserver) with a real gRPC server on
port 0: a server stream the client leaves early is closed in its own call's
context, and a dependency failure reaches the caller as UNAVAILABLE."""

from __future__ import annotations

import asyncio
import itertools
import logging

import grpc
import nats.errors
import nats.js.errors
import psycopg
import psycopg_pool
import pytest
import urllib3.exceptions

from ourvidz.auth import call_metadata, current_principal
from ourvidz.errors import DATABASE, PEER, QUEUE, STORAGE, NotFound, dependency_failure
from ourvidz.grpcserver import build_server, channel
from ourvidz.v1 import events_pb2
from ourvidz.v1 import job_service_pb2 as pb
from ourvidz.v1 import job_service_pb2_grpc as pb_grpc
from tests.conftest import VERIFIER, rpc_error, token


class StreamingJobs(pb_grpc.JobServiceServicer):
    """WatchJob sends large events as fast as the client takes them; GetJob
    fails the way `failure` says."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.closed_as: str | None = None
        self.failure: BaseException | None = None

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

    async def GetJob(self, request, context):
        assert self.failure is not None
        raise self.failure


@pytest.fixture
async def served():
    servicer = StreamingJobs()
    server = build_server(
        verifier=VERIFIER,
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
    return call_metadata(token(subject, "user", 60))


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


@pytest.mark.parametrize(
    "failure",
    [
        psycopg.OperationalError("connection failed: Connection refused"),
        psycopg_pool.PoolTimeout("couldn't get a connection after 5.00 sec"),
    ],
)
async def test_a_dependency_failure_is_unavailable_without_a_trace(served, caplog, failure):
    servicer, stub = served
    servicer.failure = failure
    caplog.set_level(logging.INFO)
    err = await rpc_error(stub.GetJob(pb.GetJobRequest(job_id="job-1"), metadata=user_md()))
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert err.message == "the database is unavailable; try again shortly"
    assert err.reason == "DATABASE_UNAVAILABLE"
    mine = [r for r in caplog.records if r.name == "ourvidz.errors"]
    assert len(mine) == 1 and mine[0].levelno == logging.WARNING and not mine[0].exc_info
    assert "GetJob" in mine[0].getMessage() and type(failure).__name__ in mine[0].getMessage()


def _caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "dependency"),
    [
        (psycopg.InterfaceError("the connection is closed"), DATABASE),
        (nats.errors.NoServersError(), QUEUE),
        (nats.errors.ConnectionReconnectingError(), QUEUE),
        (nats.errors.TimeoutError(), QUEUE),
        (nats.js.errors.ServiceUnavailableError(), QUEUE),
        (urllib3.exceptions.MaxRetryError(None, "/bucket/key"), STORAGE),
        (ConnectionRefusedError(111, "Connection refused"), PEER),
        (TimeoutError(), PEER),
        (_caused(RuntimeError("could not file"), psycopg.OperationalError("gone")), DATABASE),
        (RuntimeError("a bug"), None),
        (ValueError("bad"), None),
        (NotFound("job not found"), None),
    ],
)
def test_which_failures_are_a_dependencys(exc, dependency):
    assert dependency_failure(exc) == dependency


async def test_a_second_server_on_a_taken_port_fails_to_start():
    # gRPC's default SO_REUSEPORT would let both bind and split the calls.
    from ourvidz.grpcserver import build_server

    first = build_server(verifier=VERIFIER, register=lambda s: None, service_names=[], port=0)
    await first.start()
    try:
        with pytest.raises(RuntimeError, match="Failed to bind"):
            second = build_server(
                verifier=VERIFIER, register=lambda s: None, service_names=[], port=first.port
            )
            await second.start()
    finally:
        await first.stop(0)
