"""Store backends behind one interface; `open_store(url)` picks one by URL scheme."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Claim, Store

__all__ = ["Claim", "Store", "open_store"]


def open_store(url: str, *, synchronous: str = "full") -> Store:
    """A store for `url` (not yet opened: await `store.open()`)."""
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
    if url.startswith(("redis://", "rediss://")):
        raise ConfigError(
            "store.url",
            "the redis store is not in this version yet; use sqlite:///path.db or memory://",
        )
    raise ValueError(f"unknown store URL scheme: {url!r}")
