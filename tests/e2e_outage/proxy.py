"""A TCP proxy in front of a real server, which a test can cut (nothing listens
on its port any more, and every open connection is dropped) and restore: the
server itself stays up for the rest of the suite."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class CuttableProxy:
    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening (new connections are refused) and drop every open one."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        # Every connection's task ends here, not when the event loop closes.
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def restore(self) -> None:
        await self.start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            try:
                up_reader, up_writer = await self._connect()
            except OSError:
                writer.transport.abort()
                return
            self._writers.update((writer, up_writer))
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                for w in (writer, up_writer):
                    self._writers.discard(w)
                    w.transport.abort()
        finally:
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


def postgres_proxy(database_url: str) -> tuple[CuttableProxy, Callable[[int], str]]:
    """A proxy to the PostgreSQL of `database_url` (a Unix socket or TCP), and
    the function that turns the proxy's port (and a URL of the same server,
    by default `database_url`: another role's, say) into a URL through it."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(database_url)
    host = params.get("host") or "/tmp"
    port = int(params.get("port") or 5432)

    async def connect():
        if host.startswith("/"):
            return await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        return await asyncio.open_connection(host, port)

    def url(proxy_port: int, of: str = database_url) -> str:
        login = conninfo_to_dict(of)
        return make_conninfo("", **{**login, "host": "127.0.0.1", "port": str(proxy_port)})

    return CuttableProxy(connect), url


def nats_proxy(nats_url: str) -> tuple[CuttableProxy, Callable[[int], str]]:
    from urllib.parse import urlsplit

    target = urlsplit(nats_url)

    async def connect():
        return await asyncio.open_connection(target.hostname, target.port or 4222)

    return CuttableProxy(connect), lambda port: f"nats://127.0.0.1:{port}"
