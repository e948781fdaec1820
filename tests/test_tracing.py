"""Traces end to end: an incoming traceparent reaches the webhook; with the SDK (a test-only
dependency) the spans have the documented names, kinds, parents, links and attributes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from dispatcher.app import create_app
from dispatcher.dispatcher import Dispatcher
from dispatcher.message import DlqFilter
from dispatcher.state import DISPATCHER

from .factories import webhook_settings
from .kit.metrics import scrape
from .kit.receiver import receiver
from .kit.run import eventually

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def _settings(url: str, **pools: Any) -> Any:
    return webhook_settings(
        url,
        pools or {"email": {}},
        [{"match": "user.>", "pools": list(pools or ["email"])}],
        auth={"disabled": True},
    )


async def _post(client: Any, tag: str = "user.signup", headers: Any = None) -> str:
    response = await client.post(
        "/v1/messages", json={"tag": tag, "payload": {"n": 1}}, headers=headers or {}
    )
    assert response.status == 202, await response.text()
    body = await response.json()
    return str(body["id"])


async def test_traceparent_reaches_the_webhook_without_an_sdk(
    aiohttp_client: Callable[..., Any],
) -> None:
    async with receiver() as rec:
        client = await aiohttp_client(create_app(_settings(rec.url)))
        assert not client.app[DISPATCHER].tracing.live
        await _post(client, headers={"traceparent": PARENT})
        await rec.wait_for(1)
        sent = rec.requests[0].headers["traceparent"]
        assert sent.split("-")[1] == TRACE_ID


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


async def test_spans_names_kinds_parents_links_attributes(
    aiohttp_client: Callable[..., Any], exporter: Any
) -> None:
    provider, memory = exporter
    async with receiver() as rec:
        settings = _settings(rec.url)
        dispatcher = Dispatcher(settings, tracer_provider=provider)
        client = await aiohttp_client(create_app(settings, dispatcher=dispatcher))
        message_id = await _post(client, headers={"traceparent": PARENT})
        await rec.wait_for(1)
        await eventually(
            lambda: any(s.name == "process email" for s in memory.get_finished_spans())
        )
        spans = list(memory.get_finished_spans())

    server = _one(spans, "POST /v1/messages")
    send = _one(spans, "send user.signup")
    process = _one(spans, "process email")
    assert server.kind is SpanKind.SERVER
    assert send.kind is SpanKind.PRODUCER
    assert process.kind is SpanKind.CONSUMER
    # One trace, from the producer's traceparent down to the attempt.
    for span in (server, send, process):
        assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert send.parent is not None
    assert send.parent.span_id == server.context.span_id
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/v1/messages"
    assert server.attributes["http.response.status_code"] == 202
    assert send.attributes is not None
    assert send.attributes["messaging.operation.type"] == "send"
    assert send.attributes["messaging.destination.name"] == "user.signup"
    assert send.attributes["messaging.message.id"] == message_id
    attrs = process.attributes
    assert attrs is not None
    assert attrs["messaging.system"] == "dispatcher"
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["messaging.destination.name"] == "email"
    assert attrs["messaging.message.id"] == message_id
    assert attrs["dispatcher.attempt"] == 1
    assert attrs["dispatcher.outcome"] == "success"
    # The webhook request carries the attempt span's context.
    sent = rec.requests[0].headers["traceparent"]
    assert sent == f"00-{TRACE_ID}-{process.context.span_id:016x}-01"


async def test_retries_and_a_replay_keep_the_lineage(
    aiohttp_client: Callable[..., Any], exporter: Any
) -> None:
    provider, memory = exporter
    async with receiver() as rec:
        rec.script = lambda name, n: 500
        retry = {"max_attempts": 2, "initial_backoff": 0.01, "max_backoff": 0.01}
        settings = _settings(rec.url, email={"retry": retry})
        dispatcher = Dispatcher(settings, tracer_provider=provider)
        client = await aiohttp_client(create_app(settings, dispatcher=dispatcher))
        await _post(client, headers={"traceparent": PARENT})
        await rec.wait_for(2)
        await eventually(lambda: dispatcher.dlq_count(DlqFilter()))
        assert await dispatcher.dlq_replay(DlqFilter(), actor="test") == 1
        await rec.wait_for(4)
        await eventually(lambda: dispatcher.dlq_count(DlqFilter()))
        spans = list(memory.get_finished_spans())

    send = _one(spans, "send user.signup")
    attempts = [s for s in spans if s.name == "process email"]
    assert [s.attributes["dispatcher.attempt"] for s in attempts if s.attributes] == [1, 2, 1, 2]
    for span in attempts:  # before and after the replay: children of, and linked to, the send
        assert span.context.trace_id == send.context.trace_id
        assert span.parent is not None
        assert span.parent.span_id == send.context.span_id
        assert [link.context.span_id for link in span.links] == [send.context.span_id]
        assert span.status.status_code is StatusCode.ERROR
    assert attempts[-1].attributes is not None
    assert attempts[-1].attributes["dispatcher.dead_reason"] == "max_attempts"
    ids = {r.headers["traceparent"].split("-")[1] for r in rec.requests}
    assert ids == {TRACE_ID}


async def test_exemplars_carry_the_trace_id(
    aiohttp_client: Callable[..., Any], exporter: Any
) -> None:
    provider, _ = exporter
    async with receiver() as rec:
        settings = _settings(rec.url)
        dispatcher = Dispatcher(settings, tracer_provider=provider)
        client = await aiohttp_client(create_app(settings, dispatcher=dispatcher))
        await _post(client, headers={"traceparent": PARENT})
        await rec.wait_for(1)
        await eventually(lambda: dispatcher.metrics.series["email"].success == 1)
        response = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        text = await response.text()
        await scrape(client)  # the text format still parses with exemplars recorded
    for family in ("dispatcher_delivery_duration_seconds", "dispatcher_queue_wait_seconds"):
        lines = [x for x in text.splitlines() if x.startswith(family)]
        assert any(" # {" in x and f'trace_id="{TRACE_ID}"' in x for x in lines), lines
