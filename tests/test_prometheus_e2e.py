"""Every dashboard panel and every rule, against a real Prometheus scraping a real dispatcher.

`python -m dispatcher serve` runs as a subprocess on SQLite with demo sinks: one pool that
succeeds under a rate limit, one that fails often with two attempts (retries and both DLQ
reasons), one whose attempts always time out. A producer task keeps traffic flowing, with
some refused requests. The `prometheus` binary (Debian package) scrapes it every second with
the rules of deploy/prometheus/rules/ loaded and evaluated every second. Then each panel
query, with Grafana's variables substituted, and each rule expression must return a
non-empty result; an alert's comparisons are made `bool` ones so the check does not need an
unhealthy system (see monitoring.with_bool).

Skips when `prometheus` is not installed, fails in CI (where .ci/run installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from .conftest import require_service
from .kit.monitoring import (
    RULES,
    Query,
    dashboards,
    panel_queries,
    rule_queries,
    substitute,
    with_bool,
)

pytestmark = [pytest.mark.allow_blocking, pytest.mark.slow]

TOKEN = "e2e-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BANNER = re.compile(r"dispatcher listening on (http://127\.0\.0\.1:\d+)")
#: Grafana's $__rate_interval is max(4 x scrape interval, $__interval + scrape interval).
GRAFANA = {"__rate_interval": "10s", "__interval": "2s", "__range": "1m"}
DEADLINE = 30.0  # seconds for every query to have data; typically about 6


def dispatcher_config(tmp_path: Path) -> Path:
    retry = {"max_attempts": 2, "initial_backoff": 0.05, "max_backoff": 0.1}
    config = {
        "server": {"grace_period": 1},
        "store": {"url": f"sqlite:///{tmp_path / 'd.db'}", "min_free_bytes": 0},
        "auth": {
            "tokens": [
                {"name": "t", "token": TOKEN, "scopes": ["produce", "read", "operate", "admin"]}
            ]
        },
        "pools": {
            # Rate-limited below the offered load: rate-limit wait and a backlog.
            "steady": {
                "concurrency": 4,
                "rate": 20,
                "burst": 2,
                "sink": {"type": "demo", "latency": 0.01},
            },
            # Fails 60% of attempts, two attempts each: retries, max_attempts and permanent.
            "flaky": {
                "concurrency": 4,
                "retry": retry,
                "sink": {"type": "demo", "latency": 0.005, "fail_rate": 0.6},
            },
            # Every attempt outlives its timeout.
            "slow": {
                "concurrency": 2,
                "timeout": 0.05,
                "retry": retry,
                "sink": {"type": "demo", "latency": 0.2},
            },
        },
        "routes": [
            {"match": "e2e.>", "pools": ["steady", "flaky"]},
            {"match": "slow.>", "pools": ["slow"]},
        ],
    }
    path = tmp_path / "dispatcher.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@asynccontextmanager
async def dispatcher(tmp_path: Path) -> AsyncIterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    log = tmp_path / "dispatcher.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "dispatcher", "serve", "--config", str(dispatcher_config(tmp_path))),
            *("--port", "0", "--log-level", "warning"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=tmp_path,
            env=env,
        )
    try:
        assert proc.stdout is not None
        base = None
        async with asyncio.timeout(15):
            while base is None:
                line = (await proc.stdout.readline()).decode(errors="replace")
                if not line:
                    pytest.fail(f"dispatcher exited ({await proc.wait()}):\n{log.read_text()}")
                if match := BANNER.search(line):
                    base = match.group(1)
        yield base
    finally:
        await _stop(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def prometheus(tmp_path: Path, target: str) -> AsyncIterator[str]:
    exe = shutil.which("prometheus")
    if exe is None:
        require_service("prometheus", "Debian package prometheus (.ci/run installs it)")
        raise AssertionError("unreachable")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "dispatcher", "static_configs": [{"targets": [target]}]},
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            exe,
            f"--config.file={path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=tmp_path,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session, asyncio.timeout(20):
            while True:
                if proc.returncode is not None:
                    pytest.fail(f"prometheus exited ({proc.returncode}):\n{log.read_text()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{base}/-/ready") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.1)
        yield base
    finally:
        await _stop(proc)


async def produce(session: aiohttp.ClientSession, base: str) -> None:
    """About 50 messages a second, and now and then a refused one, until cancelled."""
    n = 0
    while True:
        n += 1
        tag = f"slow.m.{n}" if n % 10 == 0 else f"e2e.m.{n % 5}"
        body = {"tag": tag, "payload": {"n": n}}
        async with session.post(f"{base}/v1/messages", json=body, headers=AUTH) as r:
            await r.read()
        if n % 25 == 0:  # unroutable (422) and unauthorized (401)
            async with session.post(
                f"{base}/v1/messages", json={"tag": "nowhere", "payload": 1}, headers=AUTH
            ) as r:
                await r.read()
            async with session.post(f"{base}/v1/messages", json=body) as r:
                await r.read()
        await asyncio.sleep(0.02)


async def operate(session: aiohttp.ClientSession, base: str) -> None:
    """Replay and purge some of the DLQ, for the operator-action panels (best effort: the
    counters exist from the start either way)."""
    for action in ("replay", "purge"):
        body = {"filter": {"pool": "flaky"}, "dry_run": False}
        async with session.post(f"{base}/v1/dlq/{action}", json=body, headers=AUTH) as r:
            await r.read()


async def run_query(session: aiohttp.ClientSession, prom: str, expr: str) -> list[Any]:
    async with session.get(f"{prom}/api/v1/query", params={"query": expr}) as r:
        body = await r.json()
    if body.get("status") != "success":
        raise AssertionError(f"{body.get('errorType')}: {body.get('error')}\n  {expr}")
    result: list[Any] = body["data"]["result"]
    return result


async def variable_values(session: aiohttp.ClientSession, prom: str) -> dict[str, list[str]]:
    """What the dashboards' job/instance/pool variables offer, from their own queries."""
    values: dict[str, list[str]] = {}
    variables = {v["name"]: v for v in next(iter(dashboards().values()))["templating"]["list"]}
    for name in ("job", "instance", "pool"):
        match = re.fullmatch(r"label_values\((.*), (\w+)\)", variables[name]["query"])
        assert match, variables[name]["query"]
        selector = substitute(match.group(1), {k: "|".join(v) for k, v in values.items()})
        async with session.get(f"{prom}/api/v1/series", params={"match[]": selector}) as r:
            series = (await r.json())["data"]
        values[name] = sorted({s[match.group(2)] for s in series if match.group(2) in s})
    return values


async def test_every_panel_and_rule_returns_data(tmp_path: Path) -> None:
    started = time.monotonic()
    if shutil.which("prometheus") is None:
        require_service("prometheus", "Debian package prometheus (.ci/run installs it)")
    async with (
        dispatcher(tmp_path) as base,
        aiohttp.ClientSession() as session,
        prometheus(tmp_path, base.removeprefix("http://")) as prom,
    ):
        traffic = asyncio.create_task(produce(session, base))
        try:
            # Wait for the dispatcher to be scraped, so the variables have values.
            async with asyncio.timeout(15):
                while not await run_query(session, prom, 'dispatcher_build_info{job="dispatcher"}'):
                    await asyncio.sleep(0.25)
            await operate(session, base)
            values = await variable_values(session, prom)
            assert values["job"] == ["dispatcher"]
            assert values["instance"] == [base.removeprefix("http://")]
            assert values["pool"] == ["flaky", "slow", "steady"]
            grafana = {**GRAFANA, "job": "dispatcher", "instance": ".+", "pool": ".+"}
            grafana["datasource"] = "prometheus"

            queries = [Query(q.where, substitute(q.expr, grafana)) for q in panel_queries()]
            for q in rule_queries():
                expr = with_bool(q.expr) if q.where.startswith("alert ") else q.expr
                queries.append(Query(q.where, expr))

            # Poll until every query has data: rates need two scrapes, recording rules an
            # evaluation, rules over recorded series one more.
            pending = queries
            deadline = time.monotonic() + DEADLINE
            while pending and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                pending = [q for q in pending if not await run_query(session, prom, q.expr)]
            assert not pending, "no data for:\n" + "\n".join(
                f"  {q.where}: {q.expr}" for q in pending
            )
            # Informational: a quantile over a window without observations is NaN (Grafana
            # draws a gap); list them so a panel that is never a number stands out.
            nan = [
                q.where
                for q in queries
                if all(r["value"][1] == "NaN" for r in await run_query(session, prom, q.expr))
            ]
            if nan:
                print("\nonly NaN for now:", *nan, sep="\n  ")

            # And Prometheus evaluated every rule without error.
            async with session.get(f"{prom}/api/v1/rules") as r:
                groups = (await r.json())["data"]["groups"]
            evaluated = [rule for group in groups for rule in group["rules"]]
            assert len(evaluated) == len(rule_queries())
            broken = [(r["name"], r.get("lastError")) for r in evaluated if r["health"] != "ok"]
            assert not broken, broken
        finally:
            traffic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await traffic
    print(f"\n{len(queries)} queries with data after {time.monotonic() - started:.1f}s")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    if proc.returncode is None:
        proc.terminate()
    try:
        async with asyncio.timeout(10):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
