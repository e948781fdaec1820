"""The console in a real browser: Debian's Chromium driven by Playwright against a real server
on loopback, delivering to a real loopback webhook receiver.

One browser and one server per module (a fresh browser context, so fresh cookies, per
test). Each test leaves the pools as it found them. Screenshots of every page land in
tests/artifacts/ for a person to look at.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from dispatcher.app import create_app
from dispatcher.dispatcher import Dispatcher
from dispatcher.message import DlqFilter
from dispatcher.state import DISPATCHER
from tests.conftest import require_service
from tests.kit.console import OPERATE, console_settings, dead_letters
from tests.kit.receiver import Receiver, receiver
from tests.kit.run import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",  # the tests may run as root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium phones home, and the network is closed in CI.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "artifacts"


@dataclass
class Site:
    url: str
    rec: Receiver
    dispatcher: Dispatcher


def refuse(name: str, n: int) -> int:
    return 400  # a permanent failure: straight to the DLQ


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Any]:
    if shutil.which(CHROMIUM) is None:
        require_service("chromium", f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        require_service("playwright", "pip install playwright (the Python package only)")
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def site() -> AsyncIterator[Site]:
    async with receiver() as rec:
        app = create_app(console_settings(rec.url))
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        tcp = web.TCPSite(runner, "127.0.0.1", 0)
        await tcp.start()
        host, port = runner.addresses[0][:2]
        try:
            yield Site(f"http://{host}:{port}", rec, app[DISPATCHER])
        finally:
            await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Any, site: Site) -> AsyncIterator[Any]:
    site.rec.script = None
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    tab = await context.new_page()
    tab.set_default_timeout(10_000)
    yield tab
    await context.close()


async def log_in(page: Any, site: Site, token: str = OPERATE, then: str = "/console/") -> None:
    await page.goto(f"{site.url}{then}")
    await page.wait_for_url("**/console/login**")
    await page.fill("input[name=token]", token)
    await page.click("form[data-action=login] button[type=submit]")
    await page.wait_for_url(f"**{then}")


async def shot(page: Any, name: str) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=True)


async def test_log_in_and_see_every_pool(page: Any, site: Site) -> None:
    await page.goto(f"{site.url}/console/")
    await page.wait_for_url("**/console/login**")
    await shot(page, "login")
    await page.fill("input[name=token]", "wrong")
    await page.click("form[data-action=login] button[type=submit]")
    assert "not valid" in await page.inner_text(".flash.error")
    await page.fill("input[name=token]", OPERATE)
    await page.click("form[data-action=login] button[type=submit]")
    await page.wait_for_url("**/console/")
    for name in ("email", "sms"):
        row = page.locator(f'tr[data-pool="{name}"]')
        assert await row.count() == 1
        assert await row.locator("[data-field=state]").text_content() in ("running", "throttled")
    await shot(page, "overview")


async def test_pause_a_pool_and_the_api_reports_it(page: Any, site: Site) -> None:
    await log_in(page, site, then="/console/pools/email")
    await page.click('form[data-action=pause][data-pool="email"] button')
    await page.wait_for_selector('form[data-action=resume][data-pool="email"]')
    assert (await site.dispatcher.pool_info("email")).paused
    assert "paused" in await page.text_content("h1 .badge")
    assert "alice" in await page.inner_text("table")  # who paused it
    await shot(page, "pool-paused")
    await page.click('form[data-action=resume][data-pool="email"] button')
    await page.wait_for_selector('form[data-action=pause][data-pool="email"]')
    assert not (await site.dispatcher.pool_info("email")).paused


async def test_change_a_rate(page: Any, site: Site) -> None:
    await log_in(page, site, then="/console/pools/sms")
    form = page.locator('form[data-action=throttle][data-pool="sms"]')
    await form.locator("input[name=rate]").fill("7.5")
    await form.locator("input[name=concurrency]").fill("3")
    await form.locator("button[type=submit]").click()
    await page.wait_for_selector(".flash.ok")
    info = await site.dispatcher.pool_info("sms")
    assert (info.rate, info.concurrency) == (7.5, 3)
    assert "throttled" in await page.text_content("h1 .badge")
    await shot(page, "pool-throttled")
    await page.click('form[data-action=reset][data-pool="sms"] button')
    await page.wait_for_selector(".flash.ok")
    info = await site.dispatcher.pool_info("sms")
    assert (info.rate, info.concurrency) == (50, 8)


async def test_open_and_close_the_circuit_by_hand(page: Any, site: Site) -> None:
    await log_in(page, site, then="/console/pools/sms")
    await page.click('form[data-action=open-circuit][data-pool="sms"] button')
    await page.wait_for_selector('form[data-action=close-circuit][data-pool="sms"]')
    assert (await site.dispatcher.pool_info("sms")).circuit == "open"
    card = page.locator('[data-circuit="open"]')
    assert "opened by alice" in await card.inner_text()
    await shot(page, "pool-circuit-open")
    await page.goto(f"{site.url}/console/")
    cell = page.locator('tr[data-pool="sms"] [data-field=protection]')
    assert await cell.text_content() == "circuit opened by alice, until closed by hand"
    await shot(page, "overview-circuit-open")
    await page.goto(f"{site.url}/console/pools/sms")
    await page.click('form[data-action=close-circuit][data-pool="sms"] button')
    await page.wait_for_selector('form[data-action=open-circuit][data-pool="sms"]')
    assert (await site.dispatcher.pool_info("sms")).circuit == "closed"


async def test_replay_a_dead_message_and_the_sink_gets_it(page: Any, site: Site) -> None:
    site.rec.script = refuse
    (mid,) = await dead_letters(site.dispatcher, [("user.replay", b'{"order": 42}')])
    site.rec.script = None  # the downstream is back
    before = len(site.rec.requests)
    await log_in(page, site, then="/console/dlq?tag=user.replay")
    await shot(page, "dlq")
    await page.click(f'tr[data-id="{mid}"] a[href*="/dlq/email/"]')
    await page.wait_for_url(f"**/console/dlq/email/{mid}")
    await shot(page, "dlq-entry")
    await page.click("form[data-action=dry-run][data-op=replay] button")
    count = page.locator("[data-dry-run-count]")
    assert await count.get_attribute("data-dry-run-count") == "1"
    await shot(page, "confirm-replay")
    await page.click("form[data-action=replay] button[type=submit]")
    await page.wait_for_selector(".flash.ok")
    await site.rec.wait_for(before + 1)
    assert site.rec.requests[-1].body == b'{"order": 42}'
    assert site.rec.requests[-1].headers["webhook-id"] == mid
    await page.goto(f"{site.url}/console/messages/{mid}")
    await eventually(lambda: page.locator("ol.timeline li.delivered").count())
    await shot(page, "message-timeline")


async def test_purge_by_filter_after_a_dry_run(page: Any, site: Site) -> None:
    site.rec.script = refuse
    await dead_letters(site.dispatcher, [("sms.purge", b"{}")] * 3, pool="sms")
    await dead_letters(site.dispatcher, [("user.keep", b"{}")])
    await log_in(page, site, then="/console/dlq")
    await page.select_option("form[data-action=filter] select[name=pool]", "sms")
    await page.fill("form[data-action=filter] input[name=tag]", "sms.purge")
    await page.click("form[data-action=filter] button[type=submit]")
    await page.wait_for_url("**/console/dlq?pool=sms&tag=sms.purge**")
    await page.click("form[data-action=dry-run][data-op=purge][data-scope=filter] button")
    count = page.locator("[data-dry-run-count]")
    assert await count.get_attribute("data-dry-run-count") == "3"
    assert await site.dispatcher.dlq_count(DlqFilter(tag="sms.purge")) == 3
    await shot(page, "confirm-purge")
    await page.click("form[data-action=purge] button[type=submit]")
    await page.wait_for_selector(".flash.ok")
    assert "Purged 3 messages" in await page.inner_text(".flash.ok")
    assert await site.dispatcher.dlq_count(DlqFilter(tag="sms.purge")) == 0
    assert await site.dispatcher.dlq_count(DlqFilter(tag="user.keep")) == 1
    await page.goto(f"{site.url}/console/audit")
    assert "dlq.purge" in await page.text_content("table")
    await shot(page, "audit")


async def test_payload_markup_is_shown_as_text_and_runs_nothing(page: Any, site: Site) -> None:
    site.rec.script = refuse
    markup = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
    payload = json.dumps({"html": markup}).encode()
    (mid,) = await dead_letters(site.dispatcher, [("user.xss", payload)])
    await log_in(page, site, then="/console/dlq?tag=user.xss")
    for path in (
        "/console/dlq?tag=user.xss",
        f"/console/dlq/email/{mid}",
        f"/console/messages/{mid}",
    ):
        await page.goto(f"{site.url}{path}")
        await page.wait_for_load_state("load")
        assert await page.evaluate("window.__pwned") is None, path
        assert await page.locator("img[src=x]").count() == 0, path
        assert await page.locator("body script:not([src])").count() == 0, path
    text = await page.inner_text("pre[data-payload]")
    assert "<script>window.__pwned = 1</script>" in text
    assert 'onerror=\\"window.__pwned = 2\\"' in text
    await shot(page, "payload-as-text")


async def test_the_overview_updates_without_a_reload(page: Any, site: Site) -> None:
    await log_in(page, site)
    await page.evaluate("window.__same_page = true")
    state = page.locator('tr[data-pool="sms"] [data-field=state]')
    assert await state.text_content() != "paused"
    await site.dispatcher.update_pool("sms", actor="elsewhere", paused=True)
    try:
        await page.wait_for_function(
            """() => document.querySelector('tr[data-pool="sms"] [data-field=state]')
                       .textContent === 'paused'""",
            timeout=15_000,
        )
        assert await page.evaluate("window.__same_page") is True
        assert await page.locator('tr[data-pool="sms"] form[data-action=resume]').is_visible()
    finally:
        await site.dispatcher.update_pool("sms", actor="elsewhere", paused=False)
