"""Store backends behind one interface; `open_store(url)` picks one by URL scheme."""

from __future__ import annotations

from ..config import REDIS_SCHEMES
from ..errors import ConfigError
from .base import Claim, Store

__all__ = ["Claim", "Store", "open_store"]


def open_store(
    url: str,
    *,
    synchronous: str = "full",
    prefix: str = "dispatcher",
    lease: float = 30.0,
    consumer: str | None = None,
) -> Store:
    """A store for `url` (not yet opened: await `store.open()`). `synchronous` is SQLite's;
    `prefix`, `lease` and `consumer` (this process's stable name) are Redis's."""
    if url.startswith("memory://"):
        from .memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite://"):
        from .sqlite import SqliteStore

        # As SQLAlchemy: sqlite:///relative/x.db, sqlite:////absolute/x.db
        path = url.removeprefix("sqlite:///")
        if path == url or not path:
            raise ValueError(f"expected sqlite:///path/to/file.db, got {url!r}")
        return SqliteStore(path, synchronous=synchronous)
    if url.startswith(REDIS_SCHEMES):
        try:
            from .redis import RedisStore
        except ImportError:  # redis-py is the `redis` extra
            raise ConfigError(
                "store.url", "the redis store needs redis-py: pip install 'dispatcher[redis]'"
            ) from None
        return RedisStore(url, prefix=prefix, lease=lease, consumer=consumer)
    raise ValueError(f"unknown store URL scheme: {url!r}")
