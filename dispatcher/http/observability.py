"""The HTTP side of observability: the `/metrics` handler and an aiohttp middleware
(`/debug/tasks` is in debug.py; both are routed by the table in routes.py).

`setup(app)` is the one call `create_app` makes. It puts `observe_request` outermost, so it
sees the final status of every request (after the error and auth middleware answered):
it counts `dispatcher_http_requests_total{handler,method,code}`, where `handler` is the
route's canonical path (`/v1/messages/{id}`, never the raw path: bounded), and, when a
tracer provider records, runs the request in a SERVER span continuing the caller's
`traceparent`. The error middleware calls `count_rejection` while a refused message is
still an exception that says why (`Rejected.reason`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.exposition import choose_encoder

from ..errors import Rejected
from ..observe.metrics import Metrics
from ..observe.tracing import Tracing, context_from
from ..state import DISPATCHER

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the handler label of requests no route matched (404, 405)


def setup(app: web.Application) -> None:
    dispatcher = app[DISPATCHER]
    app.middlewares.insert(0, _observe_request(dispatcher.metrics, dispatcher.tracing))


async def metrics_handler(request: web.Request) -> web.StreamResponse:
    # The collector reads a snapshot: take it here, asynchronously, then render on the
    # loop without I/O. prometheus_client negotiates the format (OpenMetrics when the
    # scraper asks, which carries exemplars) and renders the few standard families; the
    # per-pool ones take the fast path (exposition.py). `name[]` filters: the slow path.
    metrics = request.app[DISPATCHER].metrics
    await metrics.refresh()
    if "name[]" in request.query:
        return await make_aiohttp_handler(metrics.registry)(request)
    encoder, content_type = choose_encoder(",".join(request.headers.getall("Accept", [])))
    openmetrics = content_type.startswith("application/openmetrics-text")
    head = encoder(metrics.base)
    tail = metrics.collector.render(openmetrics).encode()
    # OpenMetrics: one "# EOF", at the very end.
    body = head.removesuffix(b"# EOF\n") + tail + b"# EOF\n" if openmetrics else head + tail
    response = web.Response(body=body, headers={"Content-Type": content_type})
    response.enable_compression()
    return response


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def _observe_request(metrics: Metrics, tracing: Tracing) -> Middleware:
    requests = metrics.http_requests
    # Children by (route, method, code): bounded by the route table, and a dict hit is far
    # cheaper than prometheus_client's locked .labels() on every request.
    children: dict[tuple[str, str, int], Counter] = {}

    @web.middleware
    async def observe_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = route_of(request)
        method = request.method if request.method in METHODS else "other"
        code = 500
        try:
            if tracing.live:
                response = await _traced(tracing, request, handler, route, method)
            else:
                response = await handler(request)
            code = response.status
            return response
        except web.HTTPException as exc:
            code = exc.status
            raise
        finally:
            key = (route, method, code)
            child = children.get(key)
            if child is None:
                child = children[key] = requests.labels(route, method, str(code))
            child.inc()
            if code in (401, 403) and _scope(request) == "produce":
                metrics.reject("unauthorized")

    return observe_request


async def _traced(
    tracing: Tracing, request: web.Request, handler: Handler, route: str, method: str
) -> web.StreamResponse:
    # start_span and attach by hand: what start_as_current_span does (exceptions recorded
    # as use_span records them), without the two generator-based context managers.
    span = tracing.tracer.start_span(
        f"{method} {route}",
        context=context_from(request.headers.get("traceparent")),
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": method,
            "http.route": route,
            "url.path": request.path,
            "url.scheme": request.scheme,
        },
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        response = await handler(request)
    except Exception as exc:  # as use_span records it (not BaseException: cancellation)
        if isinstance(exc, web.HTTPException):
            span.set_attribute("http.response.status_code", exc.status)
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    else:
        span.set_attribute("http.response.status_code", response.status)
        if response.status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        return response
    finally:
        otel_context.detach(token)
        span.end()


def _scope(request: web.Request) -> str | None:
    scope: str | None = getattr(request.match_info.handler, "__scope__", None)
    return scope


def count_rejection(metrics: Metrics, exc: Exception) -> None:
    """Count `exc`, raised by an ingest handler, in dispatcher_messages_rejected_total."""
    if isinstance(exc, Rejected):
        metrics.reject(exc.reason)
    elif isinstance(exc, web.HTTPRequestEntityTooLarge):
        metrics.reject("too_large")
