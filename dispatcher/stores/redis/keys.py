"""The names of the Redis store's keys (the layout is drawn in the package docstring).

Every key of one pool carries the hash tag `{prefix:pool}`, the keys shared by all pools
the tag `{prefix}`: on a Redis Cluster a pool's keys live in one slot, so each script,
which touches one pool, runs on one node.
"""

from __future__ import annotations

#: per-pool keys, in the order the Lua scripts take them as KEYS
POOL_KEYS = (
    "meta",
    "msg",
    "ids",
    "sched",
    "lease",
    "log",
    "hist",
    "live",
    "done",
    "dlq",
    "prios",
    "dedup",
    "dedupx",
    "bucket",
)


class Keys:
    """The key names of one deployment (`store.prefix`)."""

    def __init__(self, prefix: str) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("store.prefix may not contain { or }: it builds the hash tags")
        self.prefix = prefix
        shared = "{" + prefix + "}"
        self.pools = shared + ":pools"  # SET of pool names that ever had a job
        self.seq = shared + ":seq"  # counter of job numbers
        self.settings = shared + ":settings"  # HASH pool -> JSON overrides
        self.audit = shared + ":audit"  # STREAM of audit entries
        self._pool: dict[str, tuple[str, list[str]]] = {}

    def pool(self, name: str) -> tuple[str, list[str]]:
        """(the pool's tag, its KEYS in POOL_KEYS order)."""
        found = self._pool.get(name)
        if found is None:
            tag = "{" + self.prefix + ":" + name + "}"
            found = self._pool[name] = (tag, [f"{tag}:{k}" for k in POOL_KEYS])
        return found

    def of(self, pool: str, name: str) -> str:
        """One key of a pool, by its name in POOL_KEYS."""
        return f"{self.pool(pool)[0]}:{name}"

    def session(self, sid: str) -> str:
        return "{" + self.prefix + "}:session:" + sid
