"""The log sink: one log line per delivery. It shows metadata only, never the payload, which
may hold secrets."""

from __future__ import annotations

import logging

from ..config import LogSinkConfig
from ..message import Job
from .base import Sink

logger = logging.getLogger("dispatcher.sink.log")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


class LogSink(Sink):
    kind = "log"

    def __init__(self, pool: str, config: LogSinkConfig) -> None:
        self.pool = pool
        self._level = _LEVELS[config.level]

    async def deliver(self, job: Job, attempt: int) -> None:
        message = job.message
        logger.log(
            self._level,
            "delivered id=%s tag=%s pool=%s attempt=%d bytes=%d",
            message.id,
            message.tag,
            self.pool,
            attempt,
            len(message.payload),
            extra={
                "message_id": message.id,
                "tag": message.tag,
                "pool": self.pool,
                "attempt": attempt,
            },
        )
