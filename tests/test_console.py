"""The console over real HTTP (aiohttp_client): sessions, CSRF and Origin checks, roles,
security headers, and every action's effect seen through the Dispatcher."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from dispatcher import Publish
from dispatcher.app import create_app
from dispatcher.message import DlqFilter
from dispatcher.state import DISPATCHER
from tests.kit.console import ADMIN, OPERATE, PRODUCE, READ, console_settings, csrf_of, dead_letters
from tests.kit.receiver import Receiver, receiver
from tests.kit.run import eventually

Client = TestClient[web.Request, web.Application]

PAGES = [
    "/console/",
    "/console/live.json",
    "/console/pools/email",
    "/console/dlq",
    "/console/dlq?pool=email&error=boom",
    "/console/dlq/email/some-id",
    "/console/messages",
    "/console/messages/some-id",
    "/console/audit",
    "/console/debug/tasks",
]
POSTS = [
    "/console/pools/email/pause",
    "/console/pools/email/resume",
    "/console/pools/email/throttle",
    "/console/pools/email/reset",
    "/console/pools/email/circuit",
    "/console/dlq/preview",
    "/console/dlq/act",
    "/console/dlq/edit",
    "/console/logout",
]


@pytest.fixture
async def rec() -> AsyncIterator[Receiver]:
    async with receiver() as r:
        yield r


@pytest.fixture
async def client(aiohttp_client: Any, rec: Receiver) -> Client:
    app = create_app(
        console_settings(rec.url, console={"trace_url": "https://t.example/{trace_id}"})
    )
    c: Client = await aiohttp_client(app)
    return c


def origin(client: Client) -> str:
    url = client.make_url("/")
    return f"{url.scheme}://{url.host}:{url.port}"


async def login(client: Client, token: str = OPERATE) -> str:
    """Log in and return the session's CSRF token."""
    response = await client.post(
        "/console/login",
        data={"token": token},
        headers={"Origin": origin(client)},
        allow_redirects=False,
    )
    assert response.status == 303, await response.text()
    page = await client.get("/console/")
    assert page.status == 200
    return csrf_of(await page.text())


async def post(
    client: Client, path: str, data: dict[str, Any], *, csrf: str | None, source: str | None = ""
) -> Any:
    headers = {}
    if source is not None:
        headers["Origin"] = source or origin(client)
    body = dict(data)
    if csrf is not None:
        body["csrf_token"] = csrf
    return await client.post(path, data=body, headers=headers, allow_redirects=False)


def dispatcher_of(client: Client) -> Any:
    return client.app[DISPATCHER]


# --- sessions --------------------------------------------------------------------------------


async def test_every_page_needs_a_session(client: Client) -> None:
    for path in PAGES:
        response = await client.get(path, allow_redirects=False)
        if path.endswith(".json"):
            assert response.status == 401, path
        else:
            assert response.status == 303, path
            assert response.headers["Location"].startswith("/console/login?next="), path
    for path in POSTS:
        response = await post(client, path, {"op": "replay"}, csrf="forged")
        assert response.status == 403, path
    assert not (await dispatcher_of(client).pool_info("email")).paused
    bare = await client.get("/console", allow_redirects=False)
    assert bare.headers["Location"] == "/console/"


async def test_login_page_has_the_token_field_and_security_headers(client: Client) -> None:
    response = await client.get("/console/login")
    html = await response.text()
    assert response.status == 200
    assert 'name="token"' in html
    csp = response.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in csp
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert "<script>" not in html
    assert "style=" not in html


async def test_login_cookie_is_hardened_and_rotated(client: Client) -> None:
    await login(client)
    first = client.session.cookie_jar.filter_cookies(client.make_url("/console/"))
    old = first["dispatcher_console"].value
    response = await client.post(
        "/console/login",
        data={"token": OPERATE},
        headers={"Origin": origin(client)},
        allow_redirects=False,
    )
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/console" in cookie
    assert "Secure" not in cookie  # plain http on loopback; request.secure sets it behind TLS
    new = response.cookies["dispatcher_console"].value
    assert new != old
    # The old id is dead: a client presenting it is sent to the login page.
    client.session.cookie_jar.clear()
    for session_id, status in ((old, 303), (new, 200)):
        response = await client.get(
            "/console/",
            headers={"Cookie": f"dispatcher_console={session_id}"},
            allow_redirects=False,
        )
        assert response.status == status


async def test_bad_tokens_are_refused_then_rate_limited(client: Client) -> None:
    for _ in range(5):
        response = await post(client, "/console/login", {"token": "nope"}, csrf=None)
        assert response.status == 401
    locked = await post(client, "/console/login", {"token": OPERATE}, csrf=None)
    assert locked.status == 429
    assert int(locked.headers["Retry-After"]) > 0


async def test_a_token_without_read_cannot_log_in(client: Client) -> None:
    response = await post(client, "/console/login", {"token": PRODUCE}, csrf=None)
    assert response.status == 403


async def test_login_from_a_foreign_origin_is_refused(client: Client) -> None:
    response = await post(
        client, "/console/login", {"token": OPERATE}, csrf=None, source="https://evil.example"
    )
    assert response.status == 403
    assert "dispatcher_console" not in response.cookies


async def test_logout_ends_the_session(client: Client) -> None:
    csrf = await login(client)
    response = await post(client, "/console/logout", {}, csrf=csrf)
    assert response.status == 303
    after = await client.get("/console/", allow_redirects=False)
    assert after.status == 303


# --- CSRF, Origin and roles -----------------------------------------------------------------


async def test_state_changes_need_csrf_and_our_origin(client: Client) -> None:
    csrf = await login(client)
    dispatcher = dispatcher_of(client)
    refused = [
        await post(client, "/console/pools/email/pause", {}, csrf=None),
        await post(client, "/console/pools/email/pause", {}, csrf="not-the-token"),
        await post(
            client, "/console/pools/email/pause", {}, csrf=csrf, source="https://evil.example"
        ),
        await post(client, "/console/pools/email/pause", {}, csrf=csrf, source="null"),
        await post(client, "/console/pools/email/pause", {}, csrf=csrf, source=None),
    ]
    assert [r.status for r in refused] == [403] * 5
    assert not (await dispatcher.pool_info("email")).paused
    assert (await dispatcher.audit_list())[0] == []
    ok = await post(client, "/console/pools/email/pause", {}, csrf=csrf)
    assert ok.status == 303
    assert (await dispatcher.pool_info("email")).paused


async def test_a_read_token_cannot_pause_replay_or_purge(client: Client, rec: Receiver) -> None:
    dispatcher = dispatcher_of(client)
    rec.script = refuse
    await dead_letters(dispatcher, [("user.signup", b'{"n": 1}')])
    csrf = await login(client, READ)
    overview = await (await client.get("/console/")).text()
    assert 'data-action="pause"' not in overview
    selection = {"scope": "filter", "pool": "email"}
    for path, data in [
        ("/console/pools/email/pause", {}),
        ("/console/pools/email/throttle", {"rate": "1"}),
        ("/console/pools/email/reset", {}),
        ("/console/dlq/preview", {"op": "replay", **selection}),
        ("/console/dlq/act", {"op": "replay", **selection}),
        ("/console/dlq/act", {"op": "purge", **selection}),
    ]:
        response = await post(client, path, data, csrf=csrf)
        assert response.status == 403, path
    info = await dispatcher.pool_info("email")
    assert not info.paused
    assert info.rate is None
    assert await dispatcher.dlq_count(DlqFilter()) == 1
    assert (await dispatcher.audit_list())[0] == []


def refuse(name: str, n: int) -> int:
    return 400  # a permanent failure: straight to the DLQ


async def test_admin_sees_tasks_and_operate_does_not(client: Client) -> None:
    await login(client, OPERATE)
    page = await (await client.get("/console/")).text()
    assert "/console/debug/tasks" not in page
    assert (await client.get("/console/debug/tasks")).status == 403
    await login(client, ADMIN)
    page = await (await client.get("/console/")).text()
    assert "/console/debug/tasks" in page
    tasks = await client.get("/console/debug/tasks")
    assert tasks.status == 200
    assert "console:sampler" in await tasks.text()


# --- pools ---------------------------------------------------------------------------------


async def test_pause_throttle_and_reset_apply_at_once_and_show_who(client: Client) -> None:
    csrf = await login(client)
    dispatcher = dispatcher_of(client)
    await post(client, "/console/pools/sms/pause", {}, csrf=csrf)
    assert (await dispatcher.pool_info("sms")).paused
    response = await post(
        client,
        "/console/pools/sms/throttle",
        {"rate": "2.5", "burst": "3", "concurrency": "2"},
        csrf=csrf,
    )
    assert response.headers["Location"] == "/console/pools/sms"
    info = await dispatcher.pool_info("sms")
    assert (info.rate, info.burst, info.concurrency) == (2.5, 3, 2)
    page = await (await client.get("/console/pools/sms")).text()
    assert 'data-pool="sms"' in page
    assert "alice" in page
    assert "throttle" in page
    overview = await (await client.get("/console/")).text()
    assert "paused" in overview
    assert 'data-pool="sms"' in overview
    await post(client, "/console/pools/sms/reset", {}, csrf=csrf)
    info = await dispatcher.pool_info("sms")
    assert (info.paused, info.rate, info.burst, info.concurrency) == (False, 50, 10, 8)
    actions = [e.action for e in (await dispatcher.audit_list())[0]]
    assert actions == ["pool.reset", "pool.update", "pool.update"]


async def test_bad_throttle_values_change_nothing(client: Client) -> None:
    csrf = await login(client)
    dispatcher = dispatcher_of(client)
    for data in ({"rate": "-1"}, {"rate": "nan"}, {"concurrency": "0"}, {"burst": "1.5"}, {}):
        response = await post(client, "/console/pools/sms/throttle", data, csrf=csrf)
        assert response.status == 303
    info = await dispatcher.pool_info("sms")
    assert (info.rate, info.concurrency) == (50, 8)
    page = await (await client.get("/console/pools/sms")).text()
    assert "flash error" in page


async def test_an_operator_opens_and_closes_the_circuit_and_every_view_shows_it(
    client: Client, rec: Receiver
) -> None:
    csrf = await login(client)
    dispatcher = dispatcher_of(client)
    page = await (await client.get("/console/pools/sms")).text()
    assert 'data-action="open-circuit" data-pool="sms"' in page
    response = await post(client, "/console/pools/sms/circuit", {"state": "open"}, csrf=csrf)
    assert response.headers["Location"] == "/console/pools/sms"
    info = await dispatcher.pool_info("sms")
    assert (info.circuit, info.circuit_reason) == ("open", "opened by alice")
    await dispatcher.publish([Publish("sms.x", b"{}")])
    page = await (await client.get("/console/pools/sms")).text()
    assert 'data-circuit="open"' in page
    assert "opened by alice" in page
    assert 'data-action="close-circuit" data-pool="sms"' in page
    overview = await (await client.get("/console/")).text()
    row = re.search(r'<tr data-pool="sms">.*?</tr>', overview, re.S)
    assert row is not None
    assert "circuit opened by alice, until closed by hand" in row[0]

    async def sampled() -> Any:  # live.json answers from the sampler's latest sample
        live = await (await client.get("/console/live.json")).json()
        (sms,) = [p for p in live["pools"] if p["name"] == "sms"]
        return sms if sms["circuit"] == "open" else None

    sms = await eventually(sampled)
    assert sms["protection"] == "circuit opened by alice, until closed by hand"
    assert sms["busy"] == "0 / 8"
    assert rec.requests == []
    await post(client, "/console/pools/sms/circuit", {"state": "closed"}, csrf=csrf)
    assert (await dispatcher.pool_info("sms")).circuit == "closed"
    await rec.wait_for(1)
    response = await post(client, "/console/pools/sms/circuit", {"state": "ajar"}, csrf=csrf)
    assert response.status == 303
    details = [e.detail for e in (await dispatcher.audit_list())[0]]
    assert details == [{"circuit": "closed"}, {"circuit": "open"}]


async def test_unknown_pool_is_a_404_page(client: Client) -> None:
    csrf = await login(client)
    assert (await client.get("/console/pools/nope")).status == 404
    assert (await post(client, "/console/pools/nope/pause", {}, csrf=csrf)).status == 404


async def test_live_json_reports_every_pool_with_rates(client: Client, rec: Receiver) -> None:
    await login(client)
    dispatcher = dispatcher_of(client)
    await dead_letters(dispatcher, [])
    data = await (await client.get("/console/live.json")).json()
    assert [p["name"] for p in data["pools"]] == ["email", "sms"]
    assert {"state", "backlog", "busy", "throughput", "failure", "spark_delivered"} <= set(
        data["pools"][0]
    )


# --- DLQ -----------------------------------------------------------------------------------


async def test_dlq_filter_groups_dry_run_then_purge(client: Client, rec: Receiver) -> None:
    dispatcher = dispatcher_of(client)
    rec.script = refuse
    await dead_letters(dispatcher, [("user.signup", b'{"n": %d}' % i) for i in range(3)])
    await dead_letters(dispatcher, [("sms.sent", b"{}")], pool="sms")
    csrf = await login(client)
    page = await (await client.get("/console/dlq?pool=email")).text()
    assert "3 matching" in page
    groups = await (await client.get("/console/dlq?pool=email&view=groups")).text()
    assert "HTTP 400" in groups  # one fingerprint group for the 400s
    assert "All 3 matching entries" in groups
    counted = await (await client.get("/console/dlq/count.json?tag=user.signup")).json()
    assert counted["count"] == 3
    preview = await post(
        client,
        "/console/dlq/preview",
        {"op": "purge", "scope": "filter", "pool": "email"},
        csrf=csrf,
    )
    confirm = await preview.text()
    assert preview.status == 200
    assert 'data-dry-run-count="3"' in confirm
    assert 'data-action="purge"' in confirm
    assert await dispatcher.dlq_count(DlqFilter()) == 4  # a dry run changes nothing
    done = await post(
        client, "/console/dlq/act", {"op": "purge", "scope": "filter", "pool": "email"}, csrf=csrf
    )
    assert done.status == 303
    assert done.headers["Location"] == "/console/dlq?pool=email"
    assert await dispatcher.dlq_count(DlqFilter(pool="email")) == 0
    assert await dispatcher.dlq_count(DlqFilter(pool="sms")) == 1
    (entry, *_), _ = await dispatcher.audit_list()
    assert (entry.actor, entry.action, entry.count) == ("alice", "dlq.purge", 3)
    flash = await (await client.get("/console/dlq?pool=email")).text()
    assert "Purged 3 messages" in flash


async def test_replay_selected_reaches_the_sink(client: Client, rec: Receiver) -> None:
    dispatcher = dispatcher_of(client)
    rec.script = refuse
    ids = await dead_letters(dispatcher, [("user.a", b'{"a": 1}'), ("user.b", b'{"b": 2}')])
    rec.script = None  # the downstream recovered
    csrf = await login(client)
    selection = {"op": "replay", "scope": "selected", "sel": f"email:{ids[0]}"}
    confirm = await (await post(client, "/console/dlq/preview", selection, csrf=csrf)).text()
    assert 'data-dry-run-count="1"' in confirm
    await post(client, "/console/dlq/act", {**selection, "rate": "100"}, csrf=csrf)
    await rec.wait_for(3)
    assert rec.requests[-1].body == b'{"a": 1}'
    assert rec.requests[-1].headers["webhook-id"] == ids[0]
    assert await dispatcher.dlq_count(DlqFilter()) == 1
    timeline = await (await client.get(f"/console/messages/{ids[0]}")).text()
    assert "Replayed by an operator" in timeline
    assert "Delivered" in timeline
    assert "HTTP 400" in timeline or "400" in timeline


async def test_bad_replay_rate_replays_nothing(client: Client, rec: Receiver) -> None:
    dispatcher = dispatcher_of(client)
    rec.script = refuse
    await dead_letters(dispatcher, [("user.a", b"{}")])
    csrf = await login(client)
    for rate in ("0", "-3", "fast"):
        data = {"op": "replay", "scope": "filter", "rate": rate}
        assert (await post(client, "/console/dlq/act", data, csrf=csrf)).status == 303
    assert await dispatcher.dlq_count(DlqFilter()) == 1


async def edit_form(client: Client, rec: Receiver, payload: bytes) -> tuple[dict[str, str], str]:
    """One dead letter with `payload` in `email`, an operator logged in: the edit form's
    fields and the CSRF token."""
    rec.script = refuse
    (old,) = await dead_letters(dispatcher_of(client), [("user.a", payload)])
    rec.script = None
    return {"pool": "email", "id": old}, await login(client)


async def test_edit_payload_then_replay(client: Client, rec: Receiver) -> None:
    dispatcher = dispatcher_of(client)
    form, csrf = await edit_form(client, rec, b'{"email": "bad@"}')
    old = form["id"]
    for bad in ('{"a": 1', '{"a": 1, "a": 2}', '{"a": NaN}', ""):
        response = await post(client, "/console/dlq/edit", {**form, "payload": bad}, csrf=csrf)
        assert response.headers["Location"] == f"/console/dlq/email/{old}"
    assert await dispatcher.dlq_count(DlqFilter()) == 1
    fixed = '{"email": "ok@example.com"}'
    response = await post(client, "/console/dlq/edit", {**form, "payload": fixed}, csrf=csrf)
    new_id = response.headers["Location"].rsplit("/", 1)[1]
    assert new_id != old
    await rec.wait_for(2)
    assert rec.requests[-1].body == fixed.encode()
    assert await dispatcher.dlq_count(DlqFilter()) == 0
    status = await dispatcher.get_message(new_id)
    assert status.message.headers["dispatcher-replay-of"] == old
    page = await (await client.get(f"/console/messages/{new_id}")).text()
    assert "Replay of" in page
    assert old in page
    (entry, *_), _ = await dispatcher.audit_list()
    assert (entry.action, entry.detail) == ("dlq.edit_replay", {"new_id": new_id})
    registry = dispatcher.metrics.registry
    labels = {"pool": "email"}
    assert registry.get_sample_value("dispatcher_dlq_replayed_total", labels) == 1
    assert registry.get_sample_value("dispatcher_dlq_purged_total", labels) == 0


# The same payloads, refused by ingest and by the console's edited replay for the same reason:
# the console checks an edited payload with ingest's rule (strictjson.check_payload).
REFUSED_BY_BOTH = {
    "nested too deep": "[" * 64 + "]" * 64,  # 65 levels with the message around it
    "a 5,000-digit number": "[1." + "0" * 5000 + "]",
    "a duplicate key": '{"a": 1, "a": 2}',
    "NaN": "[NaN]",
}
TAKEN_BY_BOTH = "[" * 63 + "]" * 63  # 64 levels with the message around it: the limit


async def test_the_console_refuses_what_the_api_refuses(client: Client, rec: Receiver) -> None:
    dispatcher = dispatcher_of(client)
    form, csrf = await edit_form(client, rec, b"{}")
    old = form["id"]
    bearer = {"Authorization": f"Bearer {ADMIN}"}
    api_prefix, console_prefix = "the body is not valid JSON: ", "the payload is not valid JSON: "
    for what, payload in REFUSED_BY_BOTH.items():
        body = f'{{"tag": "user.b", "payload": {payload}}}'
        api = await client.post("/v1/messages", data=body, headers=bearer)
        assert api.status == 400, what
        reason = (await api.json())["detail"].removeprefix(api_prefix)
        edit = await post(client, "/console/dlq/edit", {**form, "payload": payload}, csrf=csrf)
        assert edit.headers["Location"] == f"/console/dlq/email/{old}", what
        page = await (await client.get(edit.headers["Location"])).text()
        flash = re.search(r"Not replayed: (.*?)</div>", page)
        assert flash, what
        # where a byte offset is named, the message around the payload shifts it
        assert _unplaced(html.unescape(flash[1])) == _unplaced(console_prefix + reason), what
    assert await dispatcher.dlq_count(DlqFilter()) == 1  # nothing was replayed

    body = f'{{"tag": "user.b", "payload": {TAKEN_BY_BOTH}}}'
    api = await client.post("/v1/messages", data=body, headers=bearer)
    assert api.status == 202
    edit = await post(client, "/console/dlq/edit", {**form, "payload": TAKEN_BY_BOTH}, csrf=csrf)
    assert edit.headers["Location"].startswith("/console/messages/")
    await rec.wait_for(3)  # the failed one, the API's and the replayed one
    assert rec.requests[-1].body == rec.requests[-2].body == TAKEN_BY_BOTH.encode()


def _unplaced(reason: str) -> str:
    return re.sub(r" \(byte \d+\)", "", reason)


async def test_payload_markup_is_only_text(client: Client, rec: Receiver) -> None:
    dispatcher = dispatcher_of(client)
    rec.script = refuse
    evil = b'{"x": "<script>alert(1)</script><img src=x onerror=alert(2)>"}'
    (mid,) = await dead_letters(dispatcher, [("user.evil", evil)])
    await login(client)
    for path in (f"/console/dlq/email/{mid}", "/console/dlq", f"/console/messages/{mid}"):
        html = await (await client.get(path)).text()
        assert "<script>alert" not in html, path
        assert "<img src=x" not in html, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path


async def test_message_search_and_trace_link(client: Client, rec: Receiver) -> None:
    dispatcher = dispatcher_of(client)
    rec.script = refuse
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    accepted = await dispatcher.publish([Publish(tag="user.t", payload=b"{}", trace=trace)])
    await eventually(lambda: dispatcher.dlq_count(DlqFilter()))
    await login(client)
    found = await client.get(f"/console/messages?id={accepted[0].id}", allow_redirects=False)
    assert found.headers["Location"] == f"/console/messages/{accepted[0].id}"
    page = await (await client.get(found.headers["Location"])).text()
    assert "https://t.example/0af7651916cd43dd8448eb211c80319c" in page
    assert "Dead-lettered" in page
    assert "Attempt 1" in page
    missing = await client.get("/console/messages/nope")
    assert missing.status == 404
    assert "No message with id" in await missing.text()


async def test_pages_render_for_a_read_token(client: Client, rec: Receiver) -> None:
    dispatcher = dispatcher_of(client)
    rec.script = refuse
    (mid,) = await dead_letters(dispatcher, [("user.a", b"not json <b>")])
    await login(client, READ)
    for path in (
        "/console/",
        "/console/pools/email",
        "/console/dlq",
        "/console/dlq?window=1h&error=400",
        f"/console/dlq/email/{mid}",
        f"/console/messages/{mid}",
        "/console/messages",
        "/console/audit",
    ):
        response = await client.get(path)
        assert response.status == 200, path
        html = await response.text()
        assert 'data-action="replay"' not in html
        assert 'data-action="purge"' not in html
        assert response.headers["X-Frame-Options"] == "DENY"
