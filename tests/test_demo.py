"""The README's first command: `dispatcher serve` with no config runs a live demo."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import signal
import sys
import weakref
from pathlib import Path

import aiohttp
import pytest

from dispatcher.http import malformed
from dispatcher.server import GC_YOUNG_THRESHOLD, GIL_SWITCH_INTERVAL, tune_gc, tune_process


@pytest.mark.allow_blocking
@pytest.mark.slow
async def test_serve_without_config_runs_the_demo(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher",
        "serve",
        "--port",
        "0",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    try:
        assert proc.stdout is not None
        banner = ""
        async with asyncio.timeout(20):
            while "token:" not in banner:
                line = await proc.stdout.readline()
                assert line, "the server exited before printing its banner"
                banner += line.decode()
        base = re.search(r"listening on (http://\S+)", banner)
        token = re.search(r"token:\s+(\S+)", banner)
        assert base, banner
        assert token, banner
        headers = {"Authorization": f"Bearer {token[1]}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(
                f"{base[1]}/v1/messages", json={"tag": "user.signup", "payload": {"u": 1}}
            ) as resp:
                assert resp.status == 202
                accepted = await resp.json()
            assert accepted["pools"] == ["email", "analytics"]
            async with asyncio.timeout(10):
                while True:
                    async with http.get(f"{base[1]}/v1/messages/{accepted['id']}") as resp:
                        view = await resp.json()
                    if view["pools"]["analytics"]["status"] == "delivered":
                        break
                    await asyncio.sleep(0.1)
        assert (tmp_path / "dispatcher-data" / "dispatcher.db").exists()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
        ref = weakref.ref(_Cycle())  # garbage cycles made after start-up are still collected
        gc.collect()
        assert ref() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_tune_process_shortens_the_gil_switch_interval_but_never_lengthens_it() -> None:
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        tune_process()
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL)
        sys.setswitchinterval(0.0001)
        tune_process()
        assert sys.getswitchinterval() == pytest.approx(0.0001)
    finally:
        sys.setswitchinterval(before)
        malformed.uninstall()
