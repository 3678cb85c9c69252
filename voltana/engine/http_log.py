"""The logger of the simulated engine's HTTP servers.

The SGLang model gateway probes every worker URL for gRPC first: an HTTP/2 preface on our
HTTP/1.1 port, which aiohttp answers with 400 and logs as an error with a traceback. That is the
expected outcome of a probe, so it becomes one debug line; every other server error still logs
with its traceback.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import BadHttpMessage

LOGGER_NAME = "voltana.engine.http"
# aiohttp's parser stops on HTTP/2's "PRI * HTTP/2.0" preface with this in the message.
_HTTP2_PREFACE_MARK = "PRI/Upgrade"


class _Http2ProbeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, BadHttpMessage) and _HTTP2_PREFACE_MARK in str(error):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            logging.getLogger(LOGGER_NAME).debug(
                "HTTP/2 request on the HTTP/1.1 port from %s (a gRPC probe?); answered 400", peer
            )
            return False
        return True


def http_server_logger() -> logging.Logger:
    """The logger to hand aiohttp's server (``AppRunner(logger=...)``)."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(existing, _Http2ProbeFilter) for existing in logger.filters):
        logger.addFilter(_Http2ProbeFilter())
    return logger
