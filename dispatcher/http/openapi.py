"""The OpenAPI 3.1 document of the HTTP API, served at `/openapi.json`.

Written by hand next to the handlers (tests/test_api_openapi.py checks that every route of
the app is here and nothing else is, and schemathesis fuzzes the server from it). Schemas
follow the structs in ingest.py, cloudevent.py and api_ops.py.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from ..auth import requires
from .ingest import MAX_BATCH

JSON = "application/json"
PROBLEM = "application/problem+json"
_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _content(schema: dict[str, Any], media: str = JSON) -> dict[str, Any]:
    return {media: {"schema": schema}}


def _problems(*codes: int) -> dict[str, Any]:
    text = {
        400: "Unparseable body or parameter",
        401: "No or bad token",
        403: "The token lacks the scope",
        404: "Not found",
        408: "The body arrived too slowly",
        413: "Body too large",
        422: "Valid JSON that breaks the schema, or a tag no route matches",
        429: "A pool's backlog is full (Retry-After)",
        503: "Store unavailable, disk nearly full or draining (Retry-After)",
    }
    problem = _content(_ref("Problem"), PROBLEM)
    return {str(c): {"description": text[c], "content": problem} for c in codes}


def _op(
    summary: str,
    scope: str | None,
    ok: dict[str, Any],
    errors: tuple[int, ...] = (),
    **extra: Any,
) -> dict[str, Any]:
    # Every authenticated operation reads or writes the store, which may be down: 503.
    problems = sorted({*errors, *((401, 403, 503) if scope else ())})
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {**ok, **_problems(*problems)},
        "security": [{"bearer": []}] if scope else [],
    }
    if scope:
        op["x-scope"] = scope
    op.update(extra)
    return op


def _ok(code: int, schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {str(code): {"description": description, "content": _content(schema)}}


def _body(*schemas: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {"required": True, "content": {m: {"schema": s} for m, s in schemas}}


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", **schema},
    }


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


_STR = {"type": "string"}
_NSTR = {"type": ["string", "null"]}
_TIME = {"type": "string", "format": "date-time"}
_NTIME = {"type": ["string", "null"], "format": "date-time"}
_INGEST_ERRORS = (400, 408, 413, 422, 429, 503)

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": _STR,
            "title": _STR,
            "status": {"type": "integer"},
            "detail": _STR,
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"detail": _STR, "pointer": _STR},
                },
            },
        },
    },
    "Message": {
        "type": "object",
        "required": ["tag", "payload"],
        "additionalProperties": False,
        "properties": {
            "tag": {
                "type": "string",
                "maxLength": 255,
                "pattern": r"^[A-Za-z0-9_:-]+(\.[A-Za-z0-9_:-]+)*$",
            },
            "payload": {"description": "any JSON value; delivered as these bytes"},
            "id": {"type": "string", "pattern": r"^[A-Za-z0-9._:~@+=-]{1,128}$"},
            "priority": {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
            "delay": {"type": "number", "minimum": 0, "maximum": 366 * 86400},
            "headers": {"type": "object", "additionalProperties": _STR, "maxProperties": 64},
        },
    },
    "CloudEvent": {
        "type": "object",
        "required": ["specversion", "id", "source", "type"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": _STR,
            "source": _STR,
            "type": _STR,
            "datacontenttype": _STR,
            "data": {},
            "data_base64": _STR,
        },
        "additionalProperties": {"type": ["string", "integer", "boolean"]},
    },
    "Accepted": {
        "type": "object",
        "required": ["id", "tag", "pools", "status", "duplicate"],
        "properties": {
            "id": _STR,
            "tag": _STR,
            "pools": {"type": "array", "items": _STR},
            "status": {"const": "queued"},
            "duplicate": {"type": "boolean"},
        },
    },
    "BatchAccepted": {
        "type": "object",
        "required": ["results"],
        "properties": {"results": {"type": "array", "items": _ref("Accepted")}},
    },
    "Attempt": {
        "type": "object",
        "required": ["n", "started_at", "duration", "outcome", "error"],
        "properties": {
            "n": {"type": "integer"},
            "started_at": _TIME,
            "duration": {"type": "number"},
            "outcome": {"enum": ["success", "failure", "timeout"]},
            "error": _NSTR,
        },
    },
    "MessageStatus": {
        "type": "object",
        "required": ["id", "tag", "created_at", "pools"],
        "properties": {
            "id": _STR,
            "tag": _STR,
            "created_at": _TIME,
            "priority": {"type": "integer"},
            "headers": {"type": "object", "additionalProperties": _STR},
            "payload": {},
            "pools": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["status", "next_attempt_at", "attempts"],
                    "properties": {
                        "status": {
                            "enum": ["queued", "scheduled", "in_flight", "delivered", "dead"]
                        },
                        "next_attempt_at": _NTIME,
                        "attempts": {"type": "array", "items": _ref("Attempt")},
                        "history": {
                            "type": "array",
                            "items": {"type": "array", "items": _ref("Attempt")},
                        },
                        "finished_at": _NTIME,
                        "dead_reason": _NSTR,
                    },
                },
            },
        },
    },
    "Pool": {
        "type": "object",
        "required": [
            "name",
            "paused",
            "rate",
            "burst",
            "concurrency",
            "backlog",
            "in_flight",
            "scheduled",
            "dlq",
            "oldest_age_seconds",
        ],
        "properties": {
            "name": _STR,
            "paused": {"type": "boolean"},
            "rate": {"type": ["number", "null"]},
            "burst": {"type": "integer"},
            "concurrency": {"type": "integer"},
            "backlog": {"type": "integer"},
            "in_flight": {"type": "integer"},
            "scheduled": {"type": "integer"},
            "dlq": {"type": "integer"},
            "oldest_age_seconds": {"type": "number"},
            "max_backlog": {"type": "integer"},
            "timeout": {"type": "number"},
            "sink": _STR,
            "overrides": {"type": "object"},
        },
    },
    "PoolList": {
        "type": "object",
        "required": ["pools"],
        "properties": {"pools": {"type": "array", "items": _ref("Pool")}},
    },
    "PoolPatch": {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            "rate": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1e9},
            "burst": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000},
            "concurrency": {"type": "integer", "minimum": 1, "maximum": 10000},
            "paused": {"type": "boolean"},
        },
    },
    "DlqItem": {
        "type": "object",
        "required": ["id", "pool", "tag", "attempts", "error", "failed_at", "payload"],
        "properties": {
            "id": _STR,
            "pool": _STR,
            "tag": _STR,
            "attempts": {"type": "integer"},
            "error": _NSTR,
            "failed_at": _TIME,
            "payload": {},
            "reason": {"enum": ["max_attempts", "permanent"]},
            "created_at": _TIME,
        },
    },
    "DlqPage": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": _ref("DlqItem")},
            "next_cursor": _NSTR,
        },
    },
    "DlqFilter": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "pool": _NSTR,
            "tag": _NSTR,
            "error": _NSTR,
            "since": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "DlqPurge": {
        "type": "object",
        "additionalProperties": False,
        "description": "exactly one of ids and filter",
        "properties": {
            "ids": {"type": "array", "items": _STR, "minItems": 1, "maxItems": 10000},
            "filter": _ref("DlqFilter"),
            "dry_run": {"type": "boolean"},
        },
    },
    "DlqReplay": {
        "type": "object",
        "additionalProperties": False,
        "description": "exactly one of ids and filter; rate: messages per second",
        "properties": {
            "ids": {"type": "array", "items": _STR, "minItems": 1, "maxItems": 10000},
            "filter": _ref("DlqFilter"),
            "dry_run": {"type": "boolean"},
            "rate": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1e9},
        },
    },
    "Count": {
        "type": "object",
        "required": ["count", "dry_run"],
        "properties": {"count": {"type": "integer"}, "dry_run": {"type": "boolean"}},
    },
    "AuditPage": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["at", "actor", "action", "target", "detail", "count"],
                    "properties": {
                        "at": _TIME,
                        "actor": _STR,
                        "action": _STR,
                        "target": _STR,
                        "detail": {"type": "object"},
                        "count": {"type": ["integer", "null"]},
                    },
                },
            },
            "next_cursor": _NSTR,
        },
    },
    "Status": {"type": "object", "properties": {"status": _STR, "reason": _STR}},
}

_LOCATION = {"Location": {"schema": _STR, "description": "the message's status URL"}}
_LIMIT = _query("limit", "page size, 1 to 1000 (default 50)", pattern=r"^[0-9]{1,4}$")
_CURSOR = _query("cursor", "next_cursor of the previous page")

PATHS: dict[str, Any] = {
    "/v1/messages": {
        "post": _op(
            "Publish one message (or one CloudEvent, structured or binary mode)",
            "produce",
            {
                "202": {
                    "description": "Committed",
                    "headers": _LOCATION,
                    "content": _content(_ref("Accepted")),
                },
                "200": {
                    "description": "A duplicate of a message within the dedup window",
                    "headers": _LOCATION,
                    "content": _content(_ref("Accepted")),
                },
            },
            _INGEST_ERRORS,
            requestBody=_body(
                (JSON, _ref("Message")), ("application/cloudevents+json", _ref("CloudEvent"))
            ),
            parameters=[
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "maxLength": 255},
                },
            ],
        )
    },
    "/v1/messages/batch": {
        "post": _op(
            f"Publish up to {MAX_BATCH} messages, all or nothing, in one commit",
            "produce",
            _ok(202, _ref("BatchAccepted"), "Committed (duplicates flagged per item)"),
            _INGEST_ERRORS,
            requestBody=_body(
                (JSON, {"type": "array", "items": _ref("Message"), "maxItems": MAX_BATCH}),
                (
                    "application/cloudevents-batch+json",
                    {"type": "array", "items": _ref("CloudEvent"), "maxItems": MAX_BATCH},
                ),
            ),
        )
    },
    "/v1/messages/{id}": {
        "get": _op(
            "A message's status in every pool, with every attempt",
            "read",
            _ok(200, _ref("MessageStatus")),
            (404,),
            parameters=[_path("id")],
        )
    },
    "/v1/pools": {
        "get": _op("Every pool's settings and live stats", "read", _ok(200, _ref("PoolList")))
    },
    "/v1/pools/{name}": {
        "get": _op("One pool", "read", _ok(200, _ref("Pool")), (404,), parameters=[_path("name")]),
        "patch": _op(
            "Throttle, resize, pause or resume a pool (at once, persisted, audited)",
            "operate",
            _ok(200, _ref("Pool")),
            (400, 404, 408, 413, 422),
            parameters=[_path("name")],
            requestBody=_body((JSON, _ref("PoolPatch"))),
        ),
    },
    "/v1/dlq": {
        "get": _op(
            "Dead-lettered messages, newest failure first",
            "read",
            _ok(200, _ref("DlqPage")),
            (400,),
            parameters=[
                _query("pool", "pool name"),
                _query("tag", "exact tag"),
                _query("error", "substring of the last error, case-insensitive"),
                _query("since", "failed at or after this RFC 3339 time", format="date-time"),
                _CURSOR,
                _LIMIT,
            ],
        )
    },
    "/v1/dlq/replay": {
        "post": _op(
            "Send dead messages back to their pools with fresh attempts (audited)",
            "operate",
            _ok(200, _ref("Count")),
            (400, 408, 413, 422),
            requestBody=_body((JSON, _ref("DlqReplay"))),
        )
    },
    "/v1/dlq/purge": {
        "post": _op(
            "Delete dead messages (audited)",
            "operate",
            _ok(200, _ref("Count")),
            (400, 408, 413, 422),
            requestBody=_body((JSON, _ref("DlqPurge"))),
        )
    },
    "/v1/audit": {
        "get": _op(
            "Operator actions, newest first",
            "read",
            _ok(200, _ref("AuditPage")),
            (400,),
            parameters=[_CURSOR, _LIMIT],
        )
    },
    "/v1/subscribe": {
        "get": _op(
            "WebSocket: receive messages routed to websocket pools; ack each by id",
            "read",
            {"101": {"description": "Switching to WebSocket"}},
            (400,),
            parameters=[
                {**_query("tag", "route pattern: * one token, > the rest"), "required": True}
            ],
        )
    },
    "/metrics": {
        "get": _op(
            "Prometheus metrics",
            None,
            {"200": {"description": "Prometheus text", "content": {"text/plain": {}}}},
        )
    },
    "/healthz": {"get": _op("Liveness", None, _ok(200, _ref("Status")))},
    "/readyz": {
        "get": _op(
            "Readiness: store reachable and not draining",
            None,
            {**_ok(200, _ref("Status")), **_ok(503, _ref("Status"), "Not ready")},
        )
    },
    "/debug/tasks": {
        "get": _op(
            "Live asyncio tasks with their stacks",
            "admin",
            {
                "200": {
                    "description": "text, or JSON with ?format=json",
                    "content": {"text/plain": {}, JSON: {"schema": {"type": "object"}}},
                }
            },
            parameters=[_query("format", "json for JSON", enum=["text", "json"])],
        )
    },
    "/openapi.json": {"get": _op("This document", None, _ok(200, {"type": "object"}))},
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "dispatcher",
        "version": "1",
        "description": "Errors are application/problem+json (RFC 9457).",
    },
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}],
}

_BODY = msgspec.json.encode(DOCUMENT)


@requires(None)
async def handler(request: web.Request) -> web.Response:
    return web.Response(body=_BODY, content_type=JSON)
