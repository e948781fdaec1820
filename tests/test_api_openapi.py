"""/openapi.json: in sync with the router, real answers valid against the schemas derived
from the types, and a bounded schemathesis run against a real server on loopback that must
never answer 5xx (50 examples per operation: 25 of valid and 25 of invalid data,
derandomised)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs  # schemathesis's own validator
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from dispatcher.app import create_app
from dispatcher.http.routes import DOCUMENT

from .kit.api import ADMIN, OPERATE, PRODUCE, READ, api_settings
from .kit.run import eventually

_NOT_API = ("/console", "/static")


def _app_routes(app: Any) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method in ("HEAD", "*"):
            continue
        path = resource.canonical
        if path.startswith(_NOT_API):
            continue
        out.add((path, route.method.lower()))
    return out


async def test_document_matches_the_router(aiohttp_client: Any, tmp_path: Path) -> None:
    app = create_app(api_settings("memory", tmp_path))
    client = await aiohttp_client(app)
    served = await (await client.get("/openapi.json")).json()
    assert served["openapi"].startswith("3.1")
    documented = {(path, method) for path, ops in served["paths"].items() for method in ops}
    assert documented == _app_routes(app)
    # Every reference resolves.
    text = str(served)
    for name in served["components"]["schemas"]:
        assert f"#/components/schemas/{name}" in text or name == "Problem"


async def test_answers_match_the_document(aiohttp_client: Any, tmp_path: Path) -> None:
    """Each kind of answer, from a real server, against the schema of its route and status
    (every component resolvable from the document, as a client would)."""
    client = await aiohttp_client(create_app(api_settings("memory", tmp_path)))
    checked = []

    async def call(method: str, route: str, url: str, headers: Any, **kw: Any) -> Any:
        resp = await client.request(method, url, headers=headers, **kw)
        body = await resp.json(content_type=None)
        content = DOCUMENT["paths"][route][method.lower()]["responses"][str(resp.status)]
        schema = content["content"][resp.content_type]["schema"]
        jsonschema_rs.validate({**schema, "components": DOCUMENT["components"]}, body)
        checked.append((method, route, resp.status))
        return body

    one = {"tag": "user.a", "payload": {"n": 1}, "id": "m-1", "headers": {"x-a": "b"}}
    await call("POST", "/v1/messages", "/v1/messages", PRODUCE, json=one)
    await call("POST", "/v1/messages", "/v1/messages", PRODUCE, json=one)  # duplicate: 200
    await call("POST", "/v1/messages", "/v1/messages", PRODUCE, json={"tag": "user.a"})  # 422
    batch = [{"tag": "doom.a", "payload": "text"}, {"tag": "user.b", "payload": [1], "delay": 60}]
    await call("POST", "/v1/messages/batch", "/v1/messages/batch", PRODUCE, json=batch)

    async def dead() -> Any:
        return (await call("GET", "/v1/dlq", "/v1/dlq", READ))["items"]

    await eventually(dead)
    await call("GET", "/v1/messages/{id}", "/v1/messages/m-1", READ)
    await call("GET", "/v1/pools", "/v1/pools", READ)
    await call("PATCH", "/v1/pools/{name}", "/v1/pools/email", OPERATE, json={"rate": 5})
    await call("POST", "/v1/dlq/replay", "/v1/dlq/replay", OPERATE, json={"filter": {}})
    await call("GET", "/v1/audit", "/v1/audit", READ)
    await call("GET", "/debug/tasks", "/debug/tasks?format=json", ADMIN)
    await call("GET", "/readyz", "/readyz", None)
    await call("GET", "/v1/pools/{name}", "/v1/pools/none", READ)  # 404
    assert {status for _, _, status in checked} == {200, 202, 404, 422}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app on a loopback port, in a thread with its own event loop."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        from aiohttp import web

        app = create_app(api_settings("memory", tmp_path_factory.mktemp("fuzz"), request_timeout=2))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
        state["stop"] = asyncio.Event()
        started.set()
        await state["stop"].wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10)
    yield state["url"]
    loop.call_soon_threadsafe(state["stop"].set)
    thread.join(10)
    loop.close()


@pytest.mark.allow_blocking
@pytest.mark.timeout(120)
def test_schemathesis_finds_no_server_error(server: str) -> None:
    schema = schemathesis.openapi.from_dict(DOCUMENT)
    session = requests.Session()
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/v1/subscribe":
            continue  # a WebSocket; its plain-HTTP answer is covered in test_api_ops
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=25,
                derandomize=True,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                response = case.call(base_url=server, session=session, headers=ADMIN, timeout=10)
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.path}: {response.status_code}")
                case.validate_response(response, checks=[not_a_server_error])

            try:
                run()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing to break in this operation
    assert failures == []
