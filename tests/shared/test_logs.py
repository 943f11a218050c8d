"""Expected library errors as one line each (ourvidz.logs.OneLineErrors)."""

from __future__ import annotations

import logging

from ourvidz.logs import OneLineErrors


def _error(logger: logging.Logger, exc: Exception) -> None:
    try:
        raise exc
    except Exception as raised:
        logger.error("nats: encountered error", exc_info=raised)


def test_a_nats_connection_error_is_one_warning_line_not_repeated(caplog):
    logger = logging.getLogger("tests.one-line-errors")
    logger.addFilter(OneLineErrors("nats", quiet_seconds=3600))
    caplog.set_level(logging.INFO, logger=logger.name)
    refused = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 4222)")
    for _ in range(5):  # a reconnect loop
        _error(logger, refused)
    _error(logger, EOFError("unexpected EOF"))
    logger.info("no exception: left alone")
    assert [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records] == [
        (
            "WARNING",
            "nats: ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 4222)",
            None,
        ),
        ("WARNING", "nats: EOFError: unexpected EOF", None),
        ("INFO", "no exception: left alone", None),
    ]


async def test_a_nats_outage_is_one_line_each_way_and_a_close_is_silent(tmp_path, caplog):
    import asyncio

    from ourvidz import queue
    from ourvidz_dev.embedded import Embedded, free_port, start_nats

    port = free_port()
    first, second = Embedded(), Embedded()
    start_nats(tmp_path / "nats", first, port=port)
    nc, _ = await queue.connect(f"nats://127.0.0.1:{port}", "outage-log-test")
    try:
        caplog.set_level(logging.INFO, logger="ourvidz.queue")
        first.stop()  # the server goes away; the client retries twice a second

        async def logged(text: str) -> None:
            for _ in range(600):
                if any(text in r.getMessage() for r in caplog.records):
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"never logged: {text}")

        await logged("connection lost")
        await asyncio.sleep(1.5)  # room for three more refused reconnects, unlogged
        start_nats(tmp_path / "nats", second, port=port)
        await logged("reconnected")
        await nc.drain()
        lines = [r.getMessage() for r in caplog.records if r.name == "ourvidz.queue"]
        assert len(lines) == 2 and "connection lost" in lines[0] and lines[1] == "nats: reconnected"
        assert not any(r.exc_info for r in caplog.records)
    finally:
        if not nc.is_closed:
            await nc.close()
        second.stop()
