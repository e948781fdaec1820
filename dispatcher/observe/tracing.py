"""OpenTelemetry traces, with the API only at run time (the SDK is the `otel` extra).

    incoming traceparent ─▶ SERVER "POST /v1/messages" ─▶ PRODUCER "send <tag>"
                                                              │ stored as Message.trace
                     CONSUMER "process <pool>" (attempt n) ◀──┘ child of it, and linked to it
                                   │ traceparent header
                                   ▼ webhook

The creation context (the PRODUCER span's traceparent) is stored with the message, so every
attempt, retry and DLQ replay of it stays in the trace it was created in: a replayed
message's attempts are children of, and link to, the original creation context.

Without an SDK tracer provider nothing is recorded, and `Tracing.live` is False: the
dispatcher then skips span work entirely (the hot path pays one attribute check) and the
message keeps the producer's own traceparent, which the webhook sink forwards as is; so the
trace id still travels from the producer to the receiver.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import Token
from typing import Any

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..message import Accepted, Completion, Job, Outcome, Publish
from ..middleware import Middleware
from ..sinks.base import current_traceparent
from ..version import __version__

SYSTEM = "dispatcher"  # messaging.system
_propagator = TraceContextTextMapPropagator()


def traceparent_of(span: Span) -> str:
    sc = span.get_span_context()
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{sc.trace_flags:02x}"


def context_from(traceparent: str | None) -> otel_context.Context | None:
    """The remote context a W3C traceparent names; None if absent or invalid."""
    if not traceparent:
        return None
    ctx = _propagator.extract({"traceparent": traceparent})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def is_live(provider: TracerProvider) -> bool:
    """False for the API's default providers, which record nothing."""
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


class Tracing:
    """The tracer of one Dispatcher. `provider` defaults to the global one as it is at
    construction time (the CLI configures the SDK before building the Dispatcher)."""

    def __init__(self, provider: TracerProvider | None = None, *, enabled: bool = True) -> None:
        provider = provider or trace.get_tracer_provider()
        self.live = enabled and is_live(provider)
        self.tracer = provider.get_tracer("dispatcher", __version__)
        self.middleware = TracingMiddleware(self)

    async def traced_publish(
        self,
        publish: Callable[[Sequence[Publish]], Awaitable[list[Accepted]]],
        items: Sequence[Publish],
    ) -> list[Accepted]:
        """`publish(items)` with a PRODUCER `send <tag>` span per message, whose context
        becomes the message's creation context (Message.trace)."""
        started = [self.start_send(item) for item in items]
        try:
            results = await publish([item for _, item in started])
        except BaseException as exc:
            for span, _ in started:
                self.end_send(span, exc)
            raise
        for (span, _), accepted in zip(started, results, strict=True):
            self.end_send(span, accepted)
        return results

    def start_send(self, item: Publish) -> tuple[Span, Publish]:
        """Start the PRODUCER `send <tag>` span of `item` and answer it with `item` carrying
        the span's context as its creation context. A child of the current span (the
        request's SERVER span) if there is one, else of the producer's own traceparent (a
        Dispatcher used as a library); so call it in the context of the item's own request."""
        parent = None
        if not trace.get_current_span().get_span_context().is_valid:
            parent = context_from(item.trace)
        span = self.tracer.start_span(
            f"send {item.tag}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": item.tag,
                "messaging.message.body.size": len(item.payload),
            },
        )
        return span, msgspec.structs.replace(item, trace=traceparent_of(span))

    @staticmethod
    def end_send(span: Span, outcome: Accepted | BaseException) -> None:
        """End a span of `start_send` with what became of its message."""
        if isinstance(outcome, BaseException):
            span.set_status(Status(StatusCode.ERROR, type(outcome).__name__))
            span.set_attribute("error.type", getattr(outcome, "reason", type(outcome).__name__))
        else:
            span.set_attribute("messaging.message.id", outcome.id)
            if outcome.duplicate:
                span.set_attribute("dispatcher.duplicate", True)
        span.end()


class _Attempt:
    __slots__ = ("context_token", "span", "traceparent_token")

    def __init__(self, span: Span, context_token: object, traceparent_token: Token[str | None]):
        self.span = span
        self.context_token = context_token
        self.traceparent_token = traceparent_token


class TracingMiddleware(Middleware):
    """A CONSUMER `process <pool>` span around each attempt, current while the sink runs
    (so a python handler's spans and logs belong to it), and its traceparent handed to the
    webhook sink through `current_traceparent`."""

    def __init__(self, tracing: Tracing) -> None:
        self._tracing = tracing

    def before_attempt(self, job: Job, attempt: int) -> object:
        if not self._tracing.live:
            return None
        message = job.message
        parent = context_from(message.trace)
        links = None
        if parent is not None:
            links = [Link(trace.get_current_span(parent).get_span_context())]
        span = self._tracing.tracer.start_span(
            f"process {job.pool}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": job.pool,
                "messaging.consumer.group.name": job.pool,
                "messaging.message.id": message.id,
                "messaging.message.body.size": len(message.payload),
                "dispatcher.tag": message.tag,
                "dispatcher.attempt": attempt,
            },
        )
        traceparent_token = current_traceparent.set(traceparent_of(span))
        context_token = otel_context.attach(trace.set_span_in_context(span))
        return _Attempt(span, context_token, traceparent_token)

    def after_attempt(self, completion: Completion, state: object) -> None:
        if not isinstance(state, _Attempt):
            return
        try:
            span = state.span
            attempt = completion.attempt
            span.set_attribute("dispatcher.outcome", attempt.outcome.value)
            if attempt.outcome is not Outcome.SUCCESS:
                span.set_attribute("error.type", attempt.outcome.value)
                span.set_status(Status(StatusCode.ERROR, attempt.error))
                if completion.dead is not None:
                    span.set_attribute("dispatcher.dead_reason", completion.dead.value)
                elif completion.retry_at is not None:
                    span.set_attribute("dispatcher.retry_at", completion.retry_at)
            span.end()
        finally:
            otel_context.detach(state.context_token)  # type: ignore[arg-type]
            current_traceparent.reset(state.traceparent_token)


def configure_sdk(env: Mapping[str, str]) -> Callable[[], None] | None:
    """With the `otel` extra installed and an OTEL_* exporter setting present, install an
    SDK tracer provider exporting over OTLP (configured by the standard OTEL_* variables:
    endpoint, headers, service name, sampler). Answers the shutdown (flush) function, or
    None when tracing stays API-only. The SDK is imported only here, at run time."""
    provider = sdk_provider(env)
    if provider is None:
        return None
    trace.set_tracer_provider(provider)
    shutdown: Callable[[], None] = provider.shutdown
    return shutdown


def sdk_provider(env: Mapping[str, str]) -> Any:
    """The SDK tracer provider `configure_sdk` installs (None: tracing stays API-only)."""
    log = logging.getLogger("dispatcher.tracing")
    wanted = env.get("OTEL_TRACES_EXPORTER", "otlp" if _otlp_configured(env) else "none")
    exporters = {name.strip().lower() for name in wanted.split(",")} - {"", "none"}
    if not exporters or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if exporters != {"otlp"}:
        log.warning(
            "OTEL_TRACES_EXPORTER=%s: the dispatcher exports over OTLP only%s",
            wanted,
            "" if "otlp" in exporters else "; traces stay off",
        )
        if "otlp" not in exporters:
            return None
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol.strip().lower() != "http/protobuf":
        log.warning(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%s: the dispatcher sends OTLP over HTTP "
            "(http/protobuf) only; point the endpoint at the collector's HTTP receiver "
            "(port 4318 by default)",
            protocol,
        )
    try:
        sdk_trace = importlib.import_module("opentelemetry.sdk.trace")
        export = importlib.import_module("opentelemetry.sdk.trace.export")
        otlp = importlib.import_module("dispatcher.observe.otlp")  # imports the exporter
    except ImportError:
        log.warning(
            "OTEL_* tracing is configured but the `otel` extra is not installed: "
            "pip install 'dispatcher[otel]'; traces stay off"
        )
        return None
    provider = sdk_trace.TracerProvider()  # resource and sampler from OTEL_* variables
    provider.add_span_processor(export.BatchSpanProcessor(otlp.exporter()))
    return provider


def _otlp_configured(env: Mapping[str, str]) -> bool:
    return any(
        key in env for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
