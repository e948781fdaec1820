"""Shared fixtures. Strictness lives in pyproject (warnings are errors, per-test timeout);
the `blockbuster` guard below fails any test whose code blocks the event loop. `client` is
the API tests' app (tests/kit/api.py) on each store."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from blockbuster import BlockBuster, blockbuster_ctx
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dispatcher.app import create_app
from tests.kit.api import api_settings

IN_CI = bool(os.environ.get("CI"))


@pytest.fixture(autouse=True)
def blockbuster(request: pytest.FixtureRequest) -> Iterator[BlockBuster | None]:
    """Raise when a blocking call (file I/O, time.sleep, socket) runs on the event loop.

    Opt out per test with @pytest.mark.allow_blocking (for tests that drive subprocesses)."""
    if request.node.get_closest_marker("allow_blocking"):
        yield None
        return
    # Scan only our packages: test helpers and pytest plumbing may block, our code may not.
    with blockbuster_ctx(["dispatcher", "console"]) as bb:
        yield bb


def require_service(name: str, reason: str) -> None:
    """Skip on a laptop without the service; fail in CI, where it must be there."""
    if IN_CI:
        pytest.fail(f"{name} is required in CI: {reason}")
    pytest.skip(f"{name} not available: {reason}")


@pytest.fixture
def exporter() -> tuple[TracerProvider, InMemorySpanExporter]:
    """An SDK tracer provider recording every span in memory (pass it to the Dispatcher)."""
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


@pytest.fixture(params=["memory", "sqlite"])
async def client(request: pytest.FixtureRequest, aiohttp_client: Any, tmp_path: Path) -> Any:
    """The API tests' app on the memory store and on a SQLite file, behind a test client."""
    return await aiohttp_client(create_app(api_settings(request.param, tmp_path)))


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A Redis key prefix of this test's own on the shared server, deleted afterwards."""
    from tests.kit.redis import drop_prefix, require_redis, unique_prefix  # it imports us

    await require_redis()
    name = unique_prefix()
    yield name
    await drop_prefix(name)
