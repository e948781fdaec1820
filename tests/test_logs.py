"""Logs: JSON lines with the attempt's context, text lines on a TTY or when asked (the same
record either way), a counter for every warning, and never a payload or a secret."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher import Dispatcher, Middleware, Publish, Retry, cli
from dispatcher.message import Completion, Job, Message, Outcome
from dispatcher.observe import logs

from . import factories
from .kit.receiver import receiver
from .kit.run import eventually, running

SECRET = "whsec_" + "c2VjcmV0LXNpZ25pbmcta2V5LWZvci10ZXN0cw=="
PAYLOAD = b'{"card": "SECRET-PAYLOAD-4242"}'
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
user_log = logging.getLogger("tests.handler")


async def handler(message: Message) -> None:
    """A python sink handler that logs: its records get the attempt's context."""
    user_log.info("handling")


FAILED_ONCE: set[str] = set()


async def fail_once(message: Message) -> None:
    if message.id not in FAILED_ONCE:
        FAILED_ONCE.add(message.id)
        raise Retry("once")


def sleepy(message: Message) -> None:
    """A sync handler (its own thread) that outlives its attempt's timeout, then logs."""
    time.sleep(0.45 if message.payload == b'"slow"' else 0.25)
    user_log.info("woke")


class Recording(Middleware):
    """A user's middleware: what it saw, and a log line from each hook."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, ...]] = []

    def before_attempt(self, job: Job, attempt: int) -> object:
        user_log.info("before")
        self.seen.append(("before", job.message.id, attempt))
        return attempt * 10

    def after_attempt(self, completion: Completion, state: object) -> None:
        user_log.info("after")
        attempt = completion.attempt
        self.seen.append(("after", completion.job.message.id, attempt.n, attempt.outcome, state))


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.usefixtures("restore_root")
async def test_json_lines_carry_the_attempt_context_and_no_payload() -> None:
    stream = io.StringIO()
    output = await asyncio.to_thread(logs.configure, "INFO", stream)
    try:
        async with receiver() as rec:
            rec.script = lambda name, n: 400  # permanent: dead-lettered at once, a WARNING
            settings = factories.webhook_settings(
                rec.url,
                {
                    "hooks": {
                        "sink": {"type": "webhook", "url": f"{rec.url}/hooks", "secret": SECRET}
                    }
                },
                [{"match": "pay.>", "pools": ["hooks"]}],
            )
            async with running(Dispatcher(settings)) as d:
                trace = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
                (accepted,) = await d.publish([Publish("pay.card", PAYLOAD, trace=trace)])
                await rec.wait_for(1)
                await eventually(lambda: d.metrics.series["hooks"].dead["permanent"] == 1)
                warnings = d.metrics.log_messages.labels("warning")._value.get()
                assert warnings >= 1
    finally:
        await asyncio.to_thread(output.stop)  # joins the writer thread
    text = stream.getvalue()
    assert "SECRET-PAYLOAD" not in text
    assert SECRET not in text
    records = _lines(stream)
    dead = [r for r in records if r["message"].startswith("dead-lettered")]
    assert len(dead) == 1
    assert dead[0]["level"] == "warning"
    assert dead[0]["message_id"] == accepted.id
    assert dead[0]["pool"] == "hooks"
    assert dead[0]["attempt"] == 1
    assert dead[0]["trace_id"] == TRACE_ID
    assert dead[0]["task"] == "pool:hooks:worker:0" or dead[0]["task"].startswith("pool:hooks:")
    assert {"time", "logger"} <= dead[0].keys()


@pytest.mark.usefixtures("restore_root")
async def test_a_handlers_own_logs_get_the_context_and_tty_is_human() -> None:
    stream = Tty()
    output = await asyncio.to_thread(logs.configure, "INFO", stream)
    try:
        settings = factories.settings(
            pools={"py": {"sink": {"type": "python", "handler": f"{__name__}:handler"}}},
            routes=[{"match": "t", "pools": ["py"]}],
        )
        async with running(Dispatcher(settings)) as d:
            (accepted,) = await d.publish([Publish("t", b"{}")])
            await eventually(lambda: d.metrics.series["py"].success == 1)
    finally:
        await asyncio.to_thread(output.stop)  # joins the writer thread
    line = next(x for x in stream.getvalue().splitlines() if "handling" in x)
    assert not line.startswith("{")
    assert "INFO" in line
    assert f"message_id={accepted.id}" in line
    assert "pool=py" in line
    assert "attempt=1" in line


@pytest.mark.usefixtures("restore_root")
async def test_a_users_middleware_runs_per_attempt_in_the_attempts_context() -> None:
    stream = io.StringIO()
    output = await asyncio.to_thread(logs.configure, "INFO", stream)
    middleware = Recording()
    try:
        sink = {"type": "python", "handler": f"{__name__}:fail_once"}
        retry = {"initial_backoff": 0.01, "max_backoff": 0.01}
        settings = factories.settings(
            pools={"py": {"sink": sink, "retry": retry}},
            routes=[{"match": "t", "pools": ["py"]}],
        )
        async with running(Dispatcher(settings, middleware=[middleware])) as d:
            (accepted,) = await d.publish([Publish("t", b"{}")])
            await eventually(lambda: d.attempt_totals()["py"] == (1, 1))
    finally:
        await asyncio.to_thread(output.stop)  # joins the writer thread
    mid = accepted.id
    assert middleware.seen == [
        ("before", mid, 1),
        ("after", mid, 1, Outcome.FAILURE, 10),
        ("before", mid, 2),
        ("after", mid, 2, Outcome.SUCCESS, 20),
    ]
    hooks = [r for r in _lines(stream) if r["message"] in ("before", "after")]
    assert [(r["message"], r["attempt"]) for r in hooks] == [
        ("before", 1), ("after", 1), ("before", 2), ("after", 2)
    ]  # fmt: skip
    assert all(r["message_id"] == mid and r["pool"] == "py" for r in hooks)


@pytest.mark.usefixtures("restore_root")
async def test_a_handler_thread_that_outlives_its_attempt_logs_as_its_own_message() -> None:
    """The worker moved on to the next message meanwhile; the thread's records must not say
    so (a worker holds the job it attempts, a thread its own)."""
    stream = io.StringIO()
    output = await asyncio.to_thread(logs.configure, "INFO", stream)
    try:
        settings = factories.settings(
            pools={
                "py": {
                    "sink": {"type": "python", "handler": f"{__name__}:sleepy"},
                    "concurrency": 1,
                    "timeout": 0.3,
                    "retry": {"max_attempts": 1},
                }
            },
            routes=[{"match": "t", "pools": ["py"]}],
        )
        async with running(Dispatcher(settings)) as d:
            slow, quick = await d.publish([Publish("t", b'"slow"'), Publish("t", b'"quick"')])
            await eventually(lambda: stream.getvalue().count("woke") == 2)
    finally:
        await asyncio.to_thread(output.stop)  # joins the writer thread
    woke = {r["message_id"]: r["attempt"] for r in _lines(stream) if r["message"] == "woke"}
    assert woke == {slow.id: 1, quick.id: 1}


def test_json_formatter_outside_an_attempt() -> None:
    record = logging.LogRecord("dispatcher.x", logging.ERROR, __file__, 1, "boom %s", ("x",), None)
    out = json.loads(logs.JsonFormatter().format(record))
    assert out["message"] == "boom x"
    assert out["level"] == "error"
    assert "message_id" not in out


def _record(exc_info: Any = None) -> logging.LogRecord:
    record = logging.LogRecord(
        "dispatcher.delivery",
        logging.WARNING,
        __file__,
        1,
        "dead-lettered: %s",
        ("HTTP 400",),
        exc_info,
    )
    record.created = 1_795_341_600.123456  # 2026-11-22T10:00:00.123Z
    extra = {"message_id": "m1", "pool": "email", "attempt": 3, "span_id": "00f067aa0ba902b7"}
    record.__dict__.update(extra, trace_id=TRACE_ID, task="pool:email:worker:0")
    return record


def test_both_formats_render_one_record() -> None:
    record = _record()
    out = json.loads(logs.FORMATTERS["json"]().format(record))
    assert out == {
        "time": "2026-11-22T10:00:00.123Z",
        "level": "warning",
        "logger": "dispatcher.delivery",
        "message": "dead-lettered: HTTP 400",
        "message_id": "m1",
        "pool": "email",
        "attempt": 3,
        "trace_id": TRACE_ID,
        "span_id": "00f067aa0ba902b7",
        "task": "pool:email:worker:0",
    }
    assert logs.FORMATTERS["text"]().format(record) == (
        "10:00:00.123 WARNING dispatcher.delivery: dead-lettered: HTTP 400"
        f" message_id=m1 pool=email attempt=3 trace_id={TRACE_ID}"
    )


def test_text_puts_a_traceback_under_its_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = _record(sys.exc_info())
    first, *rest = logs.FORMATTERS["text"]().format(record).splitlines()
    assert first.startswith("10:00:00.123 WARNING dispatcher.delivery: dead-lettered")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "RuntimeError: boom"


def test_the_default_format_follows_isatty() -> None:
    assert logs.default_format(Tty()) == "text"
    assert logs.default_format(io.StringIO()) == "json"
    assert logs.default_format(object()) == "json"  # type: ignore[arg-type]  # no isatty at all


@pytest.mark.usefixtures("restore_root")
@pytest.mark.parametrize(("stream", "forced"), [(Tty(), "json"), (io.StringIO(), "text")])
def test_a_forced_format_wins_over_the_stream(stream: io.StringIO, forced: logs.LogFormat) -> None:
    output = logs.configure("INFO", stream, log_format=forced)
    logging.getLogger("tests.forced").info("hello")
    output.stop()
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("{") == (forced == "json")
    assert "hello" in line


@pytest.mark.usefixtures("restore_root")
@pytest.mark.parametrize("flag", [[], ["--log-format", "text"], ["--log-format", "json"]])
def test_serve_takes_the_log_format(
    flag: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    chosen: list[str | None] = []
    real = logs.configure

    def configure(level: str, log_format: logs.LogFormat | None = None) -> logs.Logging:
        chosen.append(log_format)
        return real(level, io.StringIO(), log_format)

    monkeypatch.setattr(logs, "configure", configure)
    missing = str(tmp_path / "missing.yaml")  # serve stops at the config, after the logs
    assert cli.main(["serve", "--config", missing, *flag]) == 2
    assert chosen == [flag[1] if flag else None]


def test_serve_refuses_an_unknown_log_format(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--log-format", "xml"])
    assert exit_.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err
