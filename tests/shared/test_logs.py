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
