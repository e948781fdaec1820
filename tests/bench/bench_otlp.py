"""The OpenTelemetry SDK's share of a traced request, span by span. Prints numbers; asserts
nothing. Needs the `otel` extra.

    python -m tests.bench.bench_otlp [--spans 20000]

Spans of the two shapes traced ingest makes (the SERVER span of a request and the PRODUCER
span of its message, with their attributes), made through the SDK as the dispatcher makes
them; CPU time a span of:
- creating and ending it (the SDK, on the event loop's thread);
- encoding it for OTLP: the SDK's encoder, then ours (dispatcher/observe/otlp.py), on the
  batch processor's thread, which holds the GIL the loop needs while it works.
"""

from __future__ import annotations

import argparse
import time

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from dispatcher.observe.otlp import Encoder

BATCH = 512  # the batch span processor's default export batch


def _make(n: int) -> tuple[list[ReadableSpan], float]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("dispatcher", "1")
    started = time.process_time()
    for i in range(n // 2):
        server = tracer.start_span(
            "POST /v1/messages",
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "POST",
                "http.route": "/v1/messages",
                "url.path": "/v1/messages",
                "url.scheme": "http",
            },
        )
        send = tracer.start_span(
            "send bench.click",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "dispatcher",
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": "bench.click",
                "messaging.message.body.size": 55,
            },
        )
        send.set_attribute("messaging.message.id", f"msg-{i}")
        send.end()
        server.set_attribute("http.response.status_code", 202)
        server.end()
    took = time.process_time() - started
    return list(memory.get_finished_spans()), took / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spans", type=int, default=20_000)
    args = parser.parse_args()
    spans, made = _make(args.spans)
    print(f"{len(spans):,} spans, 5 attributes each on average; CPU µs a span:")
    print(f"  create and end (SDK, the loop's thread):  {made * 1e6:6.1f}")
    encoder = Encoder()
    for name, encode in (
        ("SDK's encoder", lambda batch: encode_spans(batch).SerializePartialToString()),
        ("ours", encoder.encode),
    ):
        started = time.process_time()
        for i in range(0, len(spans), BATCH):
            encode(spans[i : i + BATCH])
        took = (time.process_time() - started) / len(spans)
        print(f"  encode for OTLP, {name + ':':26} {took * 1e6:6.1f}")


if __name__ == "__main__":
    main()
