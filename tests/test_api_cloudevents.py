"""CloudEvents 1.0 over HTTP, with events built by the official `cloudevents` SDK as the
oracle: structured, binary and batched modes; type -> tag, source+id -> dedup key, data ->
payload, other attributes -> ce-* headers on the webhook, traceparent -> trace."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cloudevents.core.bindings.http import (
    HTTPMessage,
    from_binary_event,
    to_binary_event,
    to_structured_event,
)
from cloudevents.core.v1.event import CloudEvent

from dispatcher.http.cloudevent import message_id
from dispatcher.state import DISPATCHER

from .kit.api import PRODUCE, READ

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
Client = Any


def event(data: Any = None, **attrs: Any) -> CloudEvent:
    base = {
        "specversion": "1.0",
        "type": "com.example.order.created",
        "source": "https://shop.example/orders",
        "id": "evt-1",
        "datacontenttype": "application/json",
        **attrs,
    }
    return CloudEvent(base, {"order": 7} if data is None else data)


async def stored(client: Client, message: str) -> Any:
    status = await client.app[DISPATCHER].get_message(message)
    assert status is not None
    return status.message


async def post(client: Client, http: HTTPMessage, path: str = "/v1/messages") -> Any:
    return await client.post(path, data=http.body, headers={**PRODUCE, **http.headers})


@pytest.mark.parametrize("mode", ["structured", "binary"])
async def test_event_maps_onto_a_message(client: Client, mode: str) -> None:
    ce = event(traceparent=TRACE, subject="order 7", region="eu west")
    http = to_structured_event(ce) if mode == "structured" else to_binary_event(ce)
    resp = await post(client, http)
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert body["tag"] == "com.example.order.created"
    assert body["id"] == message_id("https://shop.example/orders", "evt-1")
    m = await stored(client, body["id"])
    assert json.loads(m.payload) == {"order": 7}
    assert m.trace == TRACE
    assert m.headers["content-type"] == "application/json"
    # The stored headers are a binary-mode CloudEvent the SDK reads back as the same event.
    back = from_binary_event(HTTPMessage(headers=m.headers, body=m.payload))
    assert back.get_id() == "evt-1"
    assert back.get_source() == "https://shop.example/orders"
    assert back.get_type() == "com.example.order.created"
    assert back.get_subject() == "order 7"
    assert back.get_extension("region") == "eu west"
    assert back.get_data() == {"order": 7}


async def test_source_and_id_are_the_dedup_key(client: Client) -> None:
    first = await post(client, to_structured_event(event()))
    assert first.status == 202
    again = await post(client, to_binary_event(event()))
    assert again.status == 200
    assert (await again.json())["duplicate"] is True
    other_source = await post(client, to_structured_event(event(source="/elsewhere")))
    assert other_source.status == 202
    changed = await post(client, to_structured_event(event(data={"order": 8})))
    assert changed.status == 422


async def test_non_json_and_base64_data(client: Client) -> None:
    text = event("plain words", id="t1", datacontenttype="text/plain")
    resp = await post(client, to_structured_event(text))
    assert resp.status == 202
    assert (await stored(client, (await resp.json())["id"])).payload == b"plain words"
    raw = event(b"\x00\x01binary", id="b1", datacontenttype="application/octet-stream")
    for http in (to_structured_event(raw), to_binary_event(raw)):
        resp = await post(client, http)
        assert resp.status in (200, 202), await resp.text()
        assert (await stored(client, (await resp.json())["id"])).payload == b"\x00\x01binary"


async def test_batched_mode(client: Client) -> None:
    events = [json.loads(to_structured_event(event(id=f"e{i}")).body) for i in range(3)]
    resp = await client.post(
        "/v1/messages/batch",
        data=json.dumps(events),
        headers={**PRODUCE, "Content-Type": "application/cloudevents-batch+json"},
    )
    assert resp.status == 202
    results = (await resp.json())["results"]
    assert [r["id"] for r in results] == [
        message_id("https://shop.example/orders", f"e{i}") for i in range(3)
    ]
    bad = [*events, {**events[0], "id": "x", "type": "not a tag"}]
    resp = await client.post(
        "/v1/messages/batch",
        data=json.dumps(bad),
        headers={**PRODUCE, "Content-Type": "application/cloudevents-batch+json"},
    )
    assert resp.status == 422
    assert (await resp.json(content_type=None))["errors"][0]["pointer"] == "/3/type"


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"specversion": "1.0", "source": "/s", "type": "a.b"}, "/id"),
        ({"specversion": "0.3", "id": "1", "source": "/s", "type": "a.b"}, "/specversion"),
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "a b"}, "/type"),
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "nowhere.x"}, "/tag"),
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "a.b", "Bad": "x"}, "/Bad"),
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "a.b", "x": [1]}, "/x"),
        ({"specversion": "1.0", "id": "", "source": "/s", "type": "a.b"}, "/id"),
        (
            {
                "specversion": "1.0",
                "id": "1",
                "source": "/s",
                "type": "a.b",
                "data": 1,
                "data_base64": "AA==",
            },
            "/data",
        ),
    ],
)
async def test_bad_events_are_422(client: Client, body: dict[str, Any], pointer: str) -> None:
    resp = await client.post(
        "/v1/messages",
        data=json.dumps(body),
        headers={**PRODUCE, "Content-Type": "application/cloudevents+json"},
    )
    assert resp.status == 422, await resp.text()
    assert (await resp.json(content_type=None))["errors"][0]["pointer"] == pointer


async def test_binary_mode_without_required_headers(client: Client) -> None:
    resp = await client.post(
        "/v1/messages", data=b"{}", headers={**PRODUCE, "ce-specversion": "1.0", "ce-id": "1"}
    )
    assert resp.status == 422
    view = await client.get("/v1/pools/email", headers=READ)
    assert (await view.json())["backlog"] == 0
