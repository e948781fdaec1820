"""Sinks: where pools deliver. `build_sink` makes one from its config; all sinks of a process
share one `SinkContext` (HTTP session, WebSocket subscribers), closed after the sinks."""

from __future__ import annotations

from ..config import (
    DemoSinkConfig,
    LogSinkConfig,
    PythonSinkConfig,
    SinkConfig,
    WebhookSinkConfig,
    WebsocketSinkConfig,
)
from .base import Sink
from .context import SinkContext
from .demo import DemoSink
from .log import LogSink
from .python import PythonSink
from .webhook import WebhookSink
from .websocket import SubscriberHub, WebsocketSink

__all__ = [
    "DemoSink",
    "LogSink",
    "PythonSink",
    "Sink",
    "SinkContext",
    "SubscriberHub",
    "WebhookSink",
    "WebsocketSink",
    "build_sink",
]


def build_sink(pool: str, config: SinkConfig, ctx: SinkContext) -> Sink:
    """The sink a pool's config describes. Call `start()` on it before the first delivery."""
    if isinstance(config, WebhookSinkConfig):
        return WebhookSink(pool, config, ctx)
    if isinstance(config, PythonSinkConfig):
        return PythonSink(pool, config)
    if isinstance(config, WebsocketSinkConfig):
        return WebsocketSink(pool, config, ctx.hub)
    if isinstance(config, LogSinkConfig):
        return LogSink(pool, config)
    if isinstance(config, DemoSinkConfig):
        return DemoSink(pool, config)
    raise TypeError(f"unknown sink config {type(config).__name__}")
