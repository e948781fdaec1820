"""Shared set-up of the API tests: an app on the memory store or a real SQLite file, with
tokens of every scope, a pool that dead-letters everything and one with a tiny backlog.
tests/conftest.py serves it as the `client` fixture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dispatcher.config import Settings
from tests.factories import doomed_pool, settings

ADMIN = {"Authorization": "Bearer admin-token"}
PRODUCE = {"Authorization": "Bearer app-token"}
READ = {"Authorization": "Bearer viewer-token"}
OPERATE = {"Authorization": "Bearer operator-token"}


def api_settings(store: str, tmp_path: Path, **server: Any) -> Settings:
    url = f"sqlite:///{tmp_path}/api.db" if store == "sqlite" else "memory://"
    return settings(
        server={"max_body_bytes": 65536, **server},
        store={"url": url, "min_free_bytes": 0},
        auth={
            "tokens": [
                {"name": "ops", "token": "admin-token", "scopes": ["admin"]},
                {"name": "app", "token": "app-token", "scopes": ["produce"]},
                {"name": "viewer", "token": "viewer-token", "scopes": ["read"]},
                {"name": "operator", "token": "operator-token", "scopes": ["operate"]},
            ]
        },
        pools={
            "email": {"sink": {"type": "log", "level": "debug"}},
            "doomed": doomed_pool(),
            "tiny": {"sink": {"type": "log", "level": "debug"}, "max_backlog": 2},
            "live": {"sink": {"type": "websocket", "ack_timeout": 5}},
        },
        routes=[
            {"match": "user.>", "pools": ["email"]},
            {"match": "doom.>", "pools": ["doomed"]},
            {"match": "tiny.>", "pools": ["tiny"]},
            {"match": "live.>", "pools": ["live"]},
            {"match": "com.example.>", "pools": ["email"]},
        ],
    )
