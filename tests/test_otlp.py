"""Our OTLP span encoding: the official protobuf classes read back exactly what the SDK's own
encoder makes, for spans of every shape; and the exporter `configure_sdk` installs sends it
to a real OTLP/HTTP receiver with the SDK's OTEL_* settings (endpoint, headers, compression)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from dispatcher.observe import otlp, tracing

REMOTE = SpanContext(
    0x4BF92F3577B34DA6A3CE929D0E0E4736,
    0x00F067AA0BA902B7,
    is_remote=True,
    trace_flags=TraceFlags(1),
    trace_state=TraceState([("vendor", "x1"), ("other", "y2")]),
)


def _provider(resource: Resource | None = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(
        resource=resource or Resource.create({"service.name": "test", "deployment": 3}),
        span_limits=SpanLimits(max_span_attributes=8, max_events=2, max_links=2),
    )
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


def _spans_of_every_shape(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("dispatcher", "1.2.3", schema_url="https://example.com/s/1")
    other = provider.get_tracer("handler")  # a second scope, no version
    remote = trace.set_span_in_context(trace.NonRecordingSpan(REMOTE))
    with tracer.start_as_current_span(
        "POST /v1/messages",
        context=remote,
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "POST", "url.path": "/v1/messages"},
    ) as server:
        server.set_attribute("http.response.status_code", 202)
        with tracer.start_as_current_span("send user.signup", kind=SpanKind.PRODUCER) as send:
            send.set_attributes(
                {
                    "messaging.message.id": "é-ünïcode-1",
                    "negative": -7,
                    "big": 2**62,
                    "ratio": 0.25,
                    "minus_zero": -0.0,
                    "flag": True,
                    "off": False,
                    "names": ["a", "b"],
                }
            )
            send.set_attribute("one_too_many", 1)  # dropped by the limit of 8
        with other.start_as_current_span("work", attributes={"sizes": [1, 2, 3]}) as work:
            work.add_event("started", {"n": 1, "floats": [0.5, 1.5]})
            work.add_event("no attributes")
            work.add_event("third", {"x": "y"})  # dropped by the limit of 2
            work.set_status(Status(StatusCode.ERROR, "it broke: ünicode"))
    consumer = tracer.start_span(
        "process email",
        kind=SpanKind.CONSUMER,
        links=[
            Link(REMOTE, {"link.kind": "creation", "flag": True}),
            Link(server.get_span_context()),
            Link(REMOTE),  # dropped by the limit of 2
        ],
    )
    consumer.set_status(Status(StatusCode.OK))
    consumer.end()
    internal = other.start_span("bare")  # a root span: no parent, no attributes
    internal.end()


def _decoded(spans: list[ReadableSpan], encoder: otlp.Encoder | None = None) -> Any:
    return ExportTraceServiceRequest.FromString((encoder or otlp.Encoder()).encode(spans))


def test_the_encoding_reads_back_as_the_sdks() -> None:
    provider, memory = _provider()
    _spans_of_every_shape(provider)
    spans = list(memory.get_finished_spans())
    assert len(spans) == 5
    assert _decoded(spans) == encode_spans(spans)


def test_what_the_encoder_keeps_does_not_leak_between_batches() -> None:
    # Values kept from one batch (span names, attributes, the resource) come back under
    # the right field of the next: the same key and value as a resource attribute and as
    # a span attribute, and a second provider with another resource.
    encoder = otlp.Encoder()
    provider, memory = _provider(Resource.create({"service.name": "test", "k": "v"}))
    with provider.get_tracer("t").start_as_current_span("a", attributes={"k": "v"}):
        pass
    first = list(memory.get_finished_spans())
    assert _decoded(first, encoder) == encode_spans(first)
    _spans_of_every_shape(provider)
    again = list(memory.get_finished_spans())
    assert _decoded(again, encoder) == encode_spans(again)
    other, other_memory = _provider(Resource.create({"service.name": "other"}))
    _spans_of_every_shape(other)
    both = again + list(other_memory.get_finished_spans())
    assert _decoded(both, encoder) == encode_spans(both)
    assert len(_decoded(both, encoder).resource_spans) == 2


def test_an_attribute_the_sdk_would_refuse_is_left_out_not_the_batch() -> None:
    provider, memory = _provider()
    with provider.get_tracer("t").start_as_current_span("a", attributes={"ok": 1}):
        pass
    (span,) = memory.get_finished_spans()
    span._attributes = {"ok": 1, "bad": object()}  # type: ignore[dict-item]
    (decoded,) = _decoded([span]).resource_spans[0].scope_spans[0].spans
    assert [a.key for a in decoded.attributes] == ["ok"]


class Receiver:
    def __init__(self) -> None:
        self.requests: list[tuple[Any, Any]] = []
        self.status = 200

    async def export(self, request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp inflates a gzip body
        self.requests.append((request.headers.copy(), ExportTraceServiceRequest.FromString(body)))
        return web.Response(status=self.status, content_type="application/x-protobuf")


@pytest.fixture
async def receiver(aiohttp_server: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> Receiver:
    """A real OTLP/HTTP receiver, and the OTEL_* variables that point the SDK's exporter at
    it (with headers, gzip and a timeout, to see them applied)."""
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.export)
    server = await aiohttp_server(app)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", str(server.make_url("")).rstrip("/"))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme,authorization=Bearer%20t")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "5")
    return receiver


async def test_the_exporter_sends_our_encoding_with_the_sdks_settings(
    receiver: Receiver,
) -> None:
    exporter = otlp.exporter()
    assert isinstance(exporter, otlp.FastExporter)  # the installed SDK takes our bytes
    provider, memory = _provider()
    _spans_of_every_shape(provider)
    spans = list(memory.get_finished_spans())
    # The SDK's client is blocking: it runs on a thread, as in the batch span processor.
    assert await asyncio.to_thread(exporter.export, spans) is SpanExportResult.SUCCESS
    ((headers, request),) = receiver.requests
    assert request == encode_spans(spans)
    assert headers["x-tenant"] == "acme"
    assert headers["authorization"] == "Bearer t"
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"] == "application/x-protobuf"

    receiver.status = 400  # refused, not retryable: the batch fails, the exporter goes on
    assert await asyncio.to_thread(exporter.export, spans) is SpanExportResult.FAILURE
    receiver.status = 200
    assert await asyncio.to_thread(exporter.export, spans[:1]) is SpanExportResult.SUCCESS

    await asyncio.to_thread(exporter.shutdown)
    assert await asyncio.to_thread(exporter.export, spans) is SpanExportResult.FAILURE
    assert len(receiver.requests) == 3


def test_scopes_and_resources_kept_between_batches_stay_bounded() -> None:
    provider, memory = _provider()
    encoder = otlp.Encoder()
    for n in range(3 * otlp._KEPT):
        with provider.get_tracer(f"scope-{n}").start_as_current_span("t"):
            pass
        (span,) = memory.get_finished_spans()[-1:]
        assert _decoded([span], encoder) == encode_spans([span])
        assert len(encoder._scopes) <= otlp._KEPT + 1  # cleared between batches
    spans = list(memory.get_finished_spans())
    decoded = _decoded(spans, encoder)
    assert decoded == encode_spans(spans)
    assert len(decoded.resource_spans[0].scope_spans) == 3 * otlp._KEPT


def test_scopes_that_compare_equal_but_encode_differently_stay_apart() -> None:
    # {"x": 1} == {"x": True}: the scope of one provider must not stand for the other's.
    encoder = otlp.Encoder()
    for flag in (1, True, 1):
        provider, memory = _provider()
        with provider.get_tracer("t", attributes={"x": flag}).start_as_current_span("s"):
            pass
        spans = list(memory.get_finished_spans())
        assert _decoded(spans, encoder) == encode_spans(spans)
        (scope_spans,) = _decoded(spans, encoder).resource_spans[0].scope_spans
        (x,) = scope_spans.scope.attributes
        assert x.value.WhichOneof("value") == ("bool_value" if flag is True else "int_value")


def test_what_the_sdk_would_refuse_or_lose_a_batch_for() -> None:
    provider, memory = _provider()
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("s", attributes={"big": 2**63, "ok": -(2**63)}) as span:
        span.set_status(Status(StatusCode.ERROR, "bad text: \ud800"))  # from an exception
    link = Link(SpanContext(1, 2, is_remote=None))  # type: ignore[arg-type]
    tracer.start_span("linked", links=[link]).end()
    spans = list(memory.get_finished_spans())
    (first, linked) = _decoded(spans).resource_spans[0].scope_spans[0].spans
    assert [(a.key, a.value.int_value) for a in first.attributes] == [("ok", -(2**63))]
    assert first.status.message == "bad text: ?"  # the SDK's encoder fails the whole batch
    assert linked.links[0].flags == 0x100


def test_long_values_are_not_kept() -> None:
    # A stack trace in every exception event must not stay in memory after its batch.
    provider, memory = _provider()
    encoder = otlp.Encoder()
    for n in range(10):
        with provider.get_tracer("t").start_as_current_span("s") as span:
            span.add_event("exception", {"exception.stacktrace": f"{n}" * 20_000, "n": n})
    spans = list(memory.get_finished_spans())
    assert _decoded(spans, encoder) == encode_spans(spans)
    kept = [key for _, key, _, _ in encoder._attributes]
    assert "exception.stacktrace" not in kept
    assert kept.count("n") == 10


ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}


@pytest.mark.parametrize(
    ("env", "installed", "warning"),
    [
        ({}, False, None),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "TRUE"}, False, None),
        ({"OTEL_TRACES_EXPORTER": "none", **ENDPOINT}, False, None),
        ({"OTEL_TRACES_EXPORTER": "console"}, False, "OTLP only; traces stay off"),
        ({"OTEL_TRACES_EXPORTER": "otlp, console", **ENDPOINT}, True, "OTLP only"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True, None),  # the SDK's default endpoint
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, True, "over HTTP"),
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, True, "over HTTP"),
    ],
)
def test_which_otel_settings_install_the_sdk(
    env: dict[str, str], installed: bool, warning: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    provider = tracing.sdk_provider(env)
    try:
        assert (provider is not None) == installed
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        if warning is None:
            assert warnings == []
        else:
            assert any(warning in w for w in warnings), warnings
    finally:
        if provider is not None:
            provider.shutdown()


async def test_the_provider_exports_each_span_to_the_otlp_endpoint(
    receiver: Receiver,
) -> None:
    provider = await asyncio.to_thread(tracing.sdk_provider, os.environ)
    try:
        with provider.get_tracer("dispatcher").start_as_current_span("send user.signup"):
            pass
        assert await asyncio.to_thread(provider.force_flush)
    finally:
        await asyncio.to_thread(provider.shutdown)
    ((headers, request),) = receiver.requests
    (span,) = request.resource_spans[0].scope_spans[0].spans
    assert span.name == "send user.signup"
    assert headers["x-tenant"] == "acme"
