"""The webhook sink against a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import socket
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from dispatcher.config import SecurityConfig, WebhookSinkConfig
from dispatcher.errors import ConfigError, Overloaded, Permanent, Retry
from dispatcher.signing import Signer
from dispatcher.sinks import SinkContext, build_sink
from dispatcher.sinks.base import current_traceparent
from dispatcher.sinks.webhook import WebhookSink, parse_retry_after

from . import factories

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
LOOPBACK = SecurityConfig(webhook_allow_cidrs=("127.0.0.1/32",))
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]


RECORDER = web.AppKey("recorder", Recorder)


async def _handler(request: web.Request) -> web.StreamResponse:
    recorder: Recorder = request.app[RECORDER]
    body = await request.read()
    recorder.requests.append(
        {
            "path": request.path,
            "body": body,
            "headers": dict(request.headers),
            "peer": request.transport.get_extra_info("peername") if request.transport else None,
        }
    )
    path = request.path
    if path.startswith("/status/"):
        status = int(path.rsplit("/", 1)[1])
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        text = request.query.get("body", f"answer {status}")
        return web.Response(status=status, text=text, headers=headers)
    if path == "/big-error":
        return web.Response(status=400, body=b"x" * 200_000)
    if path == "/slow-ok":  # the body comes after the headers, in pieces
        response = web.StreamResponse(status=200)
        response.content_length = 3 * 10_000
        await response.prepare(request)
        for _ in range(3):
            await asyncio.sleep(0.02)
            await response.write(b"y" * 10_000)
        await response.write_eof()
        return response
    if path == "/redirect":
        raise web.HTTPFound("/target")
    return web.Response(status=200, text="ok")


@pytest.fixture
async def server(aiohttp_server: Callable[..., Any]) -> TestServer:
    app = web.Application()
    app[RECORDER] = Recorder()
    app.router.add_route("*", "/{tail:.*}", _handler)
    srv: TestServer = await aiohttp_server(app, host="127.0.0.1")
    return srv


@pytest.fixture
async def ctx() -> AsyncIterator[SinkContext]:
    context = SinkContext(LOOPBACK)
    yield context
    await context.close()


def recorder(server: TestServer) -> Recorder:
    rec: Recorder = server.app[RECORDER]
    return rec


make_job = partial(
    factories.job,
    "msg-0001",
    pool="email",
    tag="orders.created",
    payload=b'{"b": 2,  "a":1,"s":"caf\\u00e9 \xc3\xa9"}',
    trace=TRACE,
)


def sink(
    server: TestServer,
    ctx: SinkContext,
    path: str = "/hook",
    *,
    host: str = "127.0.0.1",
    **config: Any,
) -> WebhookSink:
    url = f"http://{host}:{server.port}{path}"
    built = build_sink("email", WebhookSinkConfig(url=url, **config), ctx)
    assert isinstance(built, WebhookSink)
    return built


# --- the request ----------------------------------------------------------------------------


async def test_body_and_contract_headers(server: TestServer, ctx: SinkContext) -> None:
    job = make_job(
        headers={
            "ce-source": "/shop",
            "CE-Type": "order.created",
            "x-internal": "not forwarded",
            "webhook-id": "forged-id",
            "webhook-signature": "v1,forged",
        }
    )
    hook = sink(
        server,
        ctx,
        secret=SECRET,
        headers={"Authorization": "Bearer abc", "Webhook-Timestamp": "1", "dispatcher-tag": "x"},
    )
    before = int(time.time())
    await hook.deliver(job, 3)
    after = int(time.time())

    [req] = recorder(server).requests
    assert req["body"] == job.message.payload  # byte for byte, never re-encoded
    h = req["headers"]
    assert h["webhook-id"] == "msg-0001"
    assert before <= int(h["webhook-timestamp"]) <= after
    assert h["dispatcher-tag"] == "orders.created"
    assert h["dispatcher-attempt"] == "3"
    assert h["traceparent"] == TRACE
    assert h["Content-Type"] == "application/json"
    assert h["Authorization"] == "Bearer abc"
    assert h["ce-source"] == "/shop"
    assert h["ce-type"] == "order.created"
    assert "x-internal" not in {k.lower() for k in h}
    assert h["User-Agent"] == "dispatcher/0.1"
    assert h["webhook-signature"].startswith("v1,")
    # The independent oracle: the standardwebhooks package verifies our signature.
    Webhook(SECRET).verify(req["body"], h, json_parse=False)


async def test_same_webhook_id_on_every_attempt(server: TestServer, ctx: SinkContext) -> None:
    hook = sink(server, ctx, secret=SECRET)
    job = make_job()
    await hook.deliver(job, 1)
    await hook.deliver(job, 2)
    first, second = recorder(server).requests
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"] == "msg-0001"
    assert [first["headers"]["dispatcher-attempt"], second["headers"]["dispatcher-attempt"]] == [
        "1",
        "2",
    ]
    for req in (first, second):
        Webhook(SECRET).verify(req["body"], req["headers"], json_parse=False)


async def test_raw_secret_is_used_as_utf8_bytes(server: TestServer, ctx: SinkContext) -> None:
    await sink(server, ctx, secret="plain-secret-é").deliver(make_job(), 1)
    [req] = recorder(server).requests
    Webhook("plain-secret-é".encode()).verify(req["body"], req["headers"], json_parse=False)


async def test_no_secret_no_signature_and_no_trace(server: TestServer, ctx: SinkContext) -> None:
    await sink(server, ctx).deliver(make_job(trace=None), 1)
    [req] = recorder(server).requests
    names = {k.lower() for k in req["headers"]}
    assert "webhook-signature" not in names
    assert "traceparent" not in names
    assert "webhook-id" in names


async def test_message_content_type_and_live_traceparent(
    server: TestServer, ctx: SinkContext
) -> None:
    live = "00-11111111111111111111111111111111-2222222222222222-01"
    token = current_traceparent.set(live)
    try:
        job = make_job(payload=b"plain text", headers={"content-type": "text/plain"})
        await sink(server, ctx).deliver(job, 1)
    finally:
        current_traceparent.reset(token)
    [req] = recorder(server).requests
    assert req["headers"]["Content-Type"] == "text/plain"
    assert req["headers"]["traceparent"] == live
    assert req["body"] == b"plain text"


def test_bad_secret_is_a_config_error() -> None:
    config = WebhookSinkConfig(url="https://example.com/hook", secret="whsec_not*base64")
    with pytest.raises(ConfigError) as info:
        WebhookSink("email", config, SinkContext(SecurityConfig()))
    assert info.value.path == "pools.email.sink.secret"
    assert "not*base64" not in str(info.value)  # never echo a secret


def test_signer_matches_oracle_and_hides_key() -> None:
    unpadded = SECRET.rstrip("=")
    signer = Signer(unpadded)
    ts = int(time.time())
    headers = {
        "webhook-id": "id-1",
        "webhook-timestamp": str(ts),
        "webhook-signature": signer.sign("id-1", ts, b'{"x":1}'),
    }
    Webhook(SECRET).verify(b'{"x":1}', headers, json_parse=False)
    assert signer.sign("id-1", ts, b'{"x":1}') == Signer(SECRET).sign("id-1", ts, b'{"x":1}')
    assert signer.sign("id-1", ts, b'{"x":2}') != signer.sign("id-1", ts, b'{"x":1}')
    assert "MDEy" not in repr(signer)
    with pytest.raises(ValueError, match="empty"):
        Signer("whsec_")


# --- classification --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_2xx_is_success(server: TestServer, ctx: SinkContext, status: int) -> None:
    await sink(server, ctx, f"/status/{status}").deliver(make_job(), 1)
    assert recorder(server).paths() == [f"/status/{status}"]


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
async def test_retryable_statuses(server: TestServer, ctx: SinkContext, status: int) -> None:
    with pytest.raises(Retry) as info:
        await sink(server, ctx, f"/status/{status}?retry_after=7").deliver(make_job(), 1)
    assert not isinstance(info.value, Permanent)
    assert info.value.retry_after == 7.0
    assert str(info.value) == f"HTTP {status}: answer {status}"
    # 429 and 503: the receiver is overloaded, which the pool acts on as a whole.
    assert isinstance(info.value, Overloaded) == (status in (429, 503))


async def test_retry_after_http_date(server: TestServer, ctx: SinkContext) -> None:
    now = 1_700_000_000.0
    when = email.utils.formatdate(now + 120, usegmt=True)
    url = f"http://127.0.0.1:{server.port}/status/503?retry_after={when}"
    hook = WebhookSink("email", WebhookSinkConfig(url=url), ctx, clock=lambda: now)
    with pytest.raises(Retry) as info:
        await hook.deliver(make_job(), 1)
    assert info.value.retry_after == 120.0


async def test_retry_without_or_with_garbage_retry_after(
    server: TestServer, ctx: SinkContext
) -> None:
    with pytest.raises(Retry) as info:
        await sink(server, ctx, "/status/503").deliver(make_job(), 1)
    assert info.value.retry_after is None
    with pytest.raises(Retry) as info:
        await sink(server, ctx, "/status/503?retry_after=soon").deliver(make_job(), 1)
    assert info.value.retry_after is None


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("30", now) == 30.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after("-5", now) == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 60, usegmt=True), now) == 60.0
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 0.0
    for garbage in (None, "", "soon", "nan", "inf", "Wed, 99 Foo 2015", "2015-10-21"):
        assert parse_retry_after(garbage, now) is None, garbage


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
async def test_other_4xx_is_permanent(server: TestServer, ctx: SinkContext, status: int) -> None:
    with pytest.raises(Permanent) as info:
        await sink(server, ctx, f"/status/{status}?body=nope+{status}").deliver(make_job(), 1)
    assert str(info.value) == f"HTTP {status}: nope {status}"


async def test_error_text_is_bounded(server: TestServer, ctx: SinkContext) -> None:
    with pytest.raises(Permanent) as info:
        await sink(server, ctx, "/big-error").deliver(make_job(), 1)
    assert str(info.value) == "HTTP 400: " + "x" * 200


async def test_redirect_is_not_followed(server: TestServer, ctx: SinkContext) -> None:
    with pytest.raises(Permanent) as info:
        await sink(server, ctx, "/redirect").deliver(make_job(), 1)
    assert str(info.value) == "HTTP 302: redirect not followed (3xx)"
    assert recorder(server).paths() == ["/redirect"]  # /target never hit


async def test_connection_refused_is_retried(ctx: SinkContext) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = WebhookSinkConfig(url=f"http://127.0.0.1:{port}/hook")
    with pytest.raises(Retry) as info:
        await WebhookSink("email", config, ctx).deliver(make_job(), 1)
    assert not isinstance(info.value, Permanent)
    assert "connection failed" in str(info.value)


async def test_unknown_host_is_retried(ctx: SinkContext) -> None:
    config = WebhookSinkConfig(url="http://no-such-host.invalid/hook")
    with pytest.raises(Retry) as info:
        await WebhookSink("email", config, ctx).deliver(make_job(), 1)
    assert not isinstance(info.value, Permanent)


# --- SSRF --------------------------------------------------------------------------------


async def test_ssrf_refuses_loopback_literal(server: TestServer) -> None:
    ctx = SinkContext(SecurityConfig())
    try:
        with pytest.raises(Permanent, match="private or loopback"):
            await sink(server, ctx).deliver(make_job(), 1)
        with pytest.raises(Permanent, match="private or loopback"):
            await sink(server, ctx, host="[::ffff:127.0.0.1]").deliver(make_job(), 1)
    finally:
        await ctx.close()
    assert recorder(server).requests == []


async def test_ssrf_refuses_name_resolving_to_loopback(server: TestServer) -> None:
    # 'localhost' is not an IP literal: it is refused by the guarded resolver at connect
    # time, the path that also stops DNS rebinding.
    ctx = SinkContext(SecurityConfig())
    try:
        with pytest.raises(Permanent, match=r"localhost .*private or loopback"):
            await sink(server, ctx, host="localhost").deliver(make_job(), 1)
    finally:
        await ctx.close()
    assert recorder(server).requests == []


async def test_allowlisted_name_resolving_to_loopback_is_delivered(
    server: TestServer, ctx: SinkContext
) -> None:
    await sink(server, ctx, host="localhost").deliver(make_job(), 1)
    assert recorder(server).paths() == ["/hook"]


async def test_allow_private_allows_loopback(server: TestServer) -> None:
    ctx = SinkContext(SecurityConfig(webhook_allow_private=True))
    try:
        await sink(server, ctx).deliver(make_job(), 1)
    finally:
        await ctx.close()
    assert recorder(server).paths() == ["/hook"]


# --- the shared session ----------------------------------------------------------------------


async def test_one_session_shared_and_connections_reused(
    server: TestServer, ctx: SinkContext
) -> None:
    # A 2xx body is read to its end (up to 64 KiB) so its connection can be reused.
    first = sink(server, ctx, "/slow-ok", secret=SECRET)
    second = sink(server, ctx, "/b")
    for _ in range(3):
        await first.deliver(make_job(), 1)
        await second.deliver(make_job(), 1)
    assert ctx.session() is ctx.session()
    # Sequential deliveries of both sinks ran over one kept-alive connection.
    peers = {r["peer"] for r in recorder(server).requests}
    assert len(recorder(server).requests) == 6
    assert len(peers) == 1


async def test_close_closes_the_session(server: TestServer) -> None:
    ctx = SinkContext(LOOPBACK)
    await sink(server, ctx).deliver(make_job(), 1)
    session = ctx.session()
    await ctx.close()
    assert session.closed
    with pytest.raises(RuntimeError, match="closed"):
        ctx.session()
    await ctx.close()  # idempotent
