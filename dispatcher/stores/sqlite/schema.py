"""The SQLite file: its tables and indexes, the migrations that build them, and how a
connection to it is opened (the layout is drawn in the package docstring)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Final

from ...errors import StoreError
from ..base import contains_ci

READY, CLAIMED, DELIVERED, DEAD, SCHEDULED = 0, 1, 2, 3, 4  # claimed: see claims.Claims
#: jobs of one message per rowid range; config.MAX_POOLS keeps fan-out below it
FANOUT_LIMIT: Final = 1024
_AUTOCHECKPOINT_BACKSTOP: Final = 16384  # pages (64 MiB of WAL at 4 KiB pages)

_V1: Final = (
    """CREATE TABLE messages (
        mid INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        tag TEXT NOT NULL,
        payload BLOB NOT NULL,
        headers TEXT,
        priority INTEGER NOT NULL,
        created_at REAL NOT NULL,
        available_at REAL NOT NULL,
        trace TEXT
    )""",
    """CREATE TABLE jobs (
        jid INTEGER PRIMARY KEY,
        mid INTEGER NOT NULL,
        pool TEXT NOT NULL,
        state INTEGER NOT NULL,
        priority INTEGER NOT NULL,
        available_at REAL NOT NULL,
        created_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        attempt_log TEXT,
        history TEXT,
        finished_at REAL,
        dead_reason TEXT,
        last_error TEXT
    )""",
    "CREATE INDEX jobs_ready ON jobs (pool, priority DESC, available_at, jid) WHERE state = 0",
    "CREATE INDEX jobs_scheduled ON jobs (pool, available_at) WHERE state = 4",
    "CREATE INDEX jobs_undone ON jobs (pool, created_at) WHERE finished_at IS NULL",
    "CREATE INDEX jobs_dead ON jobs (finished_at DESC, jid DESC) WHERE state = 3",
    "CREATE INDEX jobs_dead_pool ON jobs (pool, finished_at DESC, jid DESC) WHERE state = 3",
    "CREATE INDEX jobs_delivered ON jobs (finished_at) WHERE state = 2",
    "CREATE TABLE pool_settings (pool TEXT PRIMARY KEY, settings TEXT NOT NULL)",
    """CREATE TABLE audit (
        aid INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL,
        count INTEGER
    )""",
)


def _statements(*sql: str) -> Callable[[sqlite3.Connection], None]:
    def migrate(db: sqlite3.Connection) -> None:
        for statement in sql:
            db.execute(statement)

    return migrate


_V2: Final = (
    "CREATE TABLE dedup (id TEXT PRIMARY KEY, digest BLOB NOT NULL, until REAL NOT NULL)"
    " WITHOUT ROWID",
    "CREATE INDEX dedup_until ON dedup (until)",
)

# Version 3: expire walks rowid ranges instead (see writes.expire); the index cost every
# completion a b-tree insert, about 4 us a message on the writer thread.
_V3: Final = ("DROP INDEX jobs_delivered",)

# Version 4: a success at the first attempt (most outcomes) is two numbers, not a JSON log
# (writes._DELIVERED_FIRST_SQL): rows that do not grow by a hundred bytes, nothing to encode.
_V4: Final = (
    "ALTER TABLE jobs ADD COLUMN first_started REAL",
    "ALTER TABLE jobs ADD COLUMN first_took REAL",
)

#: migration i brings the schema from version i to i + 1; append, never edit
_MIGRATIONS: Final[tuple[Callable[[sqlite3.Connection], None], ...]] = (
    _statements(*_V1),
    _statements(*_V2),
    _statements(*_V3),
    _statements(*_V4),
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)


def connect(path: str) -> sqlite3.Connection:
    """A connection as every thread of the store opens one."""
    db = sqlite3.connect(path, isolation_level=None, cached_statements=256)
    db.execute("PRAGMA busy_timeout = 10000")
    # The DLQ `error` filter, as the other stores match it; SQLite's lower() only folds ASCII.
    db.create_function("contains_ci", 2, contains_ci, deterministic=True)
    return db


def configure_writer(db: sqlite3.Connection, path: str, synchronous: str) -> None:
    """Settings of the one writing connection (WAL, fsync mode, caches)."""
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(f"{path}: cannot switch to WAL journal mode (got {mode})")
    db.execute(f"PRAGMA synchronous = {synchronous}")
    db.execute("PRAGMA cache_size = -65536")  # KiB: 64 MiB of page cache
    db.execute("PRAGMA temp_store = MEMORY")
    # Checkpoints run on the checkpointer thread (PASSIVE, off the hot path); this large
    # automatic threshold is only a backstop should that thread fall behind.
    db.execute(f"PRAGMA wal_autocheckpoint = {_AUTOCHECKPOINT_BACKSTOP}")


def migrate(db: sqlite3.Connection, path: str) -> None:
    """Bring the schema to SCHEMA_VERSION, inside the caller's transaction; StoreError for a
    file written by a newer dispatcher."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: schema version {version} is newer than this dispatcher's ({SCHEMA_VERSION})"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        _MIGRATIONS[target - 1](db)
        db.execute(f"PRAGMA user_version = {target}")
