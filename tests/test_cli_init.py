"""`dispatcher init [FILE]`: a commented starter config with every key at its default, which
check-config accepts and serve runs, and which never overwrites a file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import textwrap
import typing
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
import yaml

from dispatcher import config, starter
from dispatcher.cli import main
from dispatcher.config import (
    LogSinkConfig,
    PoolConfig,
    RouteConfig,
    Settings,
    SinkConfig,
    load_settings,
    redacted,
    settings_from_dict,
)

ROOT = Path(__file__).parents[1]


def test_init_writes_a_config_that_check_config_reads_as_the_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "conf.yaml"
    assert main(["init", str(path)]) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    assert main(["check-config", str(path)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)

    settings = load_settings(path, env={})
    assert printed == redacted(settings)
    defaults = Settings()
    for section in ("server", "store", "auth", "security", "demo", "console"):
        assert getattr(settings, section) == getattr(defaults, section), section
    # Beyond the defaults, one pool whose every key is at its default, and one route.
    assert settings.pools == {"example": PoolConfig(sink=LogSinkConfig())}
    assert settings.routes == (RouteConfig(match=">", pools=("example",)),)


def test_init_writes_dispatcher_yaml_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    text = (tmp_path / "dispatcher.yaml").read_text(encoding="utf-8")
    assert text == starter.starter("dispatcher.yaml")
    assert "dispatcher check-config dispatcher.yaml" in text


def test_init_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "dispatcher.yaml"
    path.write_text("server: {port: 9000}\n", encoding="utf-8")
    assert main(["init", str(path)]) == 1
    assert "exists; not overwritten" in capsys.readouterr().err
    assert path.read_text(encoding="utf-8") == "server: {port: 9000}\n"


def test_every_key_is_in_the_starter_file_under_its_comment() -> None:
    lines = starter.starter().splitlines()
    comments = " ".join(line.lstrip(" #") for line in lines if line.lstrip().startswith("#"))
    keys = {line.lstrip(" #-").split(":", 1)[0] for line in lines}
    structs = [
        cls
        for cls in vars(config).values()
        if isinstance(cls, type)
        and issubclass(cls, msgspec.Struct)
        and cls is not Settings
        and not cls.__name__.startswith("_")
    ]
    assert PoolConfig in structs
    for cls in structs:
        assert starter.class_doc(cls) in comments, cls
        for name, doc in starter.field_docs(cls).items():
            assert doc in comments, f"{cls.__name__}.{name}"
        for name in cls.__struct_fields__:
            assert name in keys, f"{cls.__name__}.{name}"


def _commented_block(lines: list[str], start: int) -> list[str]:
    """The commented-out lines from `start`, with the one # that comments them removed."""
    indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
    block = []
    for line in lines[start:]:
        if not line.startswith(f"{indent}#"):
            break
        block.append(line[len(indent) + 1 :])
    return block


def test_the_commented_out_examples_are_valid_config() -> None:
    lines = starter.starter().splitlines()
    tokens = lines.index("  #tokens:")
    block = yaml.safe_load("\n".join(_commented_block(lines, tokens)))
    settings = settings_from_dict({"auth": block}, env={"DISPATCHER_OPS_TOKEN": "s3cret"})
    assert settings.auth.tokens[0].token_env == "DISPATCHER_OPS_TOKEN"

    # Each sink type, in place of the log sink.
    found = [i for i, line in enumerate(lines) if line.strip().startswith("#type: ")]
    assert len(found) == len(typing.get_args(SinkConfig)) - 1
    for start in found:
        sink = yaml.safe_load(textwrap.dedent("\n".join(_commented_block(lines, start))))
        pool = settings_from_dict({"pools": {"p": {"sink": sink}}}, env={}).pools["p"]
        assert type(pool.sink).__struct_config__.tag == sink["type"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def _spawned(*args: str, cwd: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m dispatcher *args` in `cwd`, its output in cwd/out.log; killed if the test
    leaves it running."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with (cwd / "out.log").open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dispatcher", *args,
            cwd=cwd, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def _wait_healthy(proc: asyncio.subprocess.Process, url: str, log: Path) -> None:
    async with aiohttp.ClientSession() as http, asyncio.timeout(30):
        while proc.returncode is None:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise AssertionError(f"serve exited early:\n{log.read_text()}")


@pytest.mark.allow_blocking
@pytest.mark.slow
async def test_serve_runs_the_file_init_wrote(tmp_path: Path) -> None:
    async with _spawned("init", cwd=tmp_path) as init:
        assert await init.wait() == 0
    port = _free_port()
    async with _spawned(
        "serve", "--config", "dispatcher.yaml", "--port", str(port), cwd=tmp_path
    ) as serve:
        await _wait_healthy(serve, f"http://127.0.0.1:{port}/healthz", tmp_path / "out.log")
        # The store is where the starter's store.url says, under the working directory.
        assert (tmp_path / "dispatcher-data" / "dispatcher.db").exists()
        serve.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(serve.wait(), 30) == 0
