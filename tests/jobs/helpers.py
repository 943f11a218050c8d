"""Small helpers shared by the jobs tests."""

from __future__ import annotations

import grpc
import psycopg

from ourvidz.errors import RemoteError, parse_rpc_error

MAX_ACTIVE = 3


async def rpc_error(coro) -> RemoteError:
    """The error a call ends with, decoded (fails the test when it succeeds)."""
    try:
        await coro
    except grpc.aio.AioRpcError as exc:
        return parse_rpc_error(exc)
    raise AssertionError("the call succeeded")


def owner_query(owner_url: str, query: str, params=()) -> list[tuple]:
    """Run `query` as the database owner (no row level security)."""
    with psycopg.connect(owner_url) as conn:
        return conn.execute(query, params).fetchall()
