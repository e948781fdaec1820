"""dispatcher: an observability-first message dispatcher with an ops console.

The public API is what `__all__` lists (checked by tests/test_public_api.py); everything
else may change without notice.
"""

from __future__ import annotations

from .config import Settings, load_settings
from .dispatcher import Dispatcher
from .errors import (
    BacklogFull,
    ConfigError,
    DeliveryError,
    DispatcherError,
    InvalidMessage,
    NotFound,
    Overloaded,
    Permanent,
    Rejected,
    Retry,
    StoreError,
    Unavailable,
    Unroutable,
)
from .message import Accepted, Attempt, DlqFilter, Job, Message, Outcome, PoolInfo, Publish
from .middleware import Middleware
from .sinks.base import Sink
from .stores.base import Store
from .version import __version__

__all__ = [
    "Accepted",
    "Attempt",
    "BacklogFull",
    "ConfigError",
    "DeliveryError",
    "Dispatcher",
    "DispatcherError",
    "DlqFilter",
    "InvalidMessage",
    "Job",
    "Message",
    "Middleware",
    "NotFound",
    "Outcome",
    "Overloaded",
    "Permanent",
    "PoolInfo",
    "Publish",
    "Rejected",
    "Retry",
    "Settings",
    "Sink",
    "Store",
    "StoreError",
    "Unavailable",
    "Unroutable",
    "__version__",
    "load_settings",
]
