"""Real `dispatcher serve` processes for tests that need several of them (or a crash): each
is spawned from the CLI with a config file, and found by the URL its banner prints."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t0ken-for-tests-only"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def instance_config(store_url: str, prefix: str, webhook: str, **pool: Any) -> dict[str, Any]:
    """One pool `w` delivering every tag to `webhook` (on loopback, allowed), one admin token."""
    return {
        "store": {"url": store_url, "prefix": prefix, "lease": 5, "min_free_bytes": 0},
        "auth": {"tokens": [{"name": "test", "token": TOKEN, "scopes": ["admin"]}]},
        "pools": {
            "w": {
                "concurrency": 16,
                "timeout": 2,
                "max_backlog": 1_000_000,
                "retry": {"max_attempts": 50, "initial_backoff": 0.05, "max_backoff": 0.5},
                "sink": {"type": "webhook", "url": webhook},
                **pool,
            }
        },
        "routes": [{"match": ">", "pools": ["w"]}],
        "security": {"webhook_allow_cidrs": ["127.0.0.1/32"]},
        "demo": {"traffic": 0},
    }


class Instance:
    """One `dispatcher serve` process. `base` is its URL once started."""

    def __init__(self, directory: Path, config: dict[str, Any], name: str) -> None:
        self.directory = directory / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path = self.directory / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.base = ""
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> Instance:
        self.process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "dispatcher", "serve", "--port", "0"),
            *("--config", str(self.config_path), "--log-format", "json"),
            cwd=self.directory,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.process.stdout is not None
        banner = ""
        async with asyncio.timeout(30):
            while not (found := re.search(r"listening on (http://\S+)", banner)):
                line = await self.process.stdout.readline()
                assert line, f"the server exited before it listened: {banner}"
                banner += line.decode()
        self.base = found[1]
        # Keep reading its output so that a full pipe never blocks the server.
        self._drain = asyncio.create_task(self._read(self.process.stdout))
        return self

    @staticmethod
    async def _read(stream: asyncio.StreamReader) -> None:
        while await stream.readline():
            pass

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the process (SIGKILL: a crash) and wait for it; its exit code."""
        process, self.process = self.process, None
        if process is None:
            return 0
        if process.returncode is None:
            process.send_signal(sig)
        code = await asyncio.wait_for(process.wait(), 60)
        self._drain.cancel()
        return code
