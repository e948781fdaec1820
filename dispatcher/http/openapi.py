"""The OpenAPI 3.1 document of the HTTP API, rendered from the route table (routes.py).

A `Route` is one operation: what aiohttp routes (method, path, handler), the scope the auth
middleware checks, and what the document says of it (summary, parameters, request and
response types, the problems it may answer). Schemas are derived from those msgspec types
with msgspec's JSON Schema support, so a limit is written once: a `Meta` constraint that
decoding enforces and the schema shows, or a constant that a check reads and a schema-only
`Meta` shows (ingest.py says why some checks are not constraints).

tests/test_api_openapi.py checks that every route is documented, and fuzzes the server
from this document with schemathesis.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Literal

import msgspec
import msgspec.inspect as mi
from aiohttp import web

from ..auth import requires
from ..config import Scope
from ..message import PoolInfo
from .ingest import MessageIn
from .operations import FilterIn, PurgeIn, ReplayIn
from .problem import CONTENT_TYPE as PROBLEM
from .problem import Problem
from .views import AcceptedView, AttemptView, JobView, MessageView

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REF = "#/components/schemas/"
_PATH_PARAM = re.compile(r"{(\w+)}")

# Component names are the API's (clients generate code from them); these classes are named
# for the code instead, or are the Dispatcher's values.
_NAMES: dict[type, str] = {
    MessageIn: "Message",
    AcceptedView: "Accepted",
    AttemptView: "Attempt",
    JobView: "JobStatus",
    MessageView: "MessageStatus",
    PoolInfo: "Pool",
    FilterIn: "DlqFilter",
    PurgeIn: "DlqPurge",
    ReplayIn: "DlqReplay",
}

_PROBLEMS = {
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
# Every authenticated operation reads or writes the store, which may be down: 503.
_AUTH_PROBLEMS = (401, 403, 503)


@dataclass(frozen=True)
class Param:
    """A parameter (query, header, path) or a response header; `type` gives its schema."""

    name: str
    where: Literal["query", "header", "path"]
    type: Any = str
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Reply:
    """A response other than a problem: `content` maps media types to body types (None: a
    body the document does not describe)."""

    description: str
    content: Mapping[str, Any] = field(default_factory=dict)
    headers: tuple[Param, ...] = ()


@dataclass(frozen=True)
class Route:
    """One operation of the API. Path parameters (`{id}`) are strings, documented from the
    path; `errors` are the problem statuses beyond those of authentication."""

    method: str
    path: str
    handler: Handler
    scope: Scope | None  # None: public
    summary: str
    _: KW_ONLY
    request: Mapping[str, Any] = field(default_factory=dict)  # media type -> body type
    params: tuple[Param, ...] = ()
    replies: Mapping[int, Reply]
    errors: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # The auth middleware reads the scope off the handler, one getattr per request;
        # marking it from here keeps the table the one place a route's scope is written.
        requires(self.scope)(self.handler)


def document(routes: Sequence[Route]) -> dict[str, Any]:
    types = [Problem, *(t for route in routes for t in _types(route))]
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF + "{name}")
    schema = dict(zip(types, schemas, strict=True)).__getitem__
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schema)
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "dispatcher",
            "version": "1",
            "description": "Errors are application/problem+json (RFC 9457).",
        },
        "paths": paths,
        "components": {
            "schemas": _named(components, _structs(types)),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
    _rename_refs(doc, {cls.__name__: name for cls, name in _NAMES.items()})
    return doc


def _types(route: Route) -> Iterable[Any]:
    yield from route.request.values()
    for reply in route.replies.values():
        yield from (t for t in reply.content.values() if t is not None)
        yield from (p.type for p in reply.headers)
    yield from (p.type for p in route.params)
    yield str  # path parameters


def _operation(route: Route, schema: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    responses = {str(code): _reply(reply, schema) for code, reply in route.replies.items()}
    problem = {PROBLEM: {"schema": schema(Problem)}}
    for code in sorted({*route.errors, *(_AUTH_PROBLEMS if route.scope else ())}):
        responses[str(code)] = {"description": _PROBLEMS[code], "content": problem}
    op: dict[str, Any] = {
        "summary": route.summary,
        "responses": responses,
        "security": [{"bearer": []}] if route.scope else [],
    }
    if route.scope:
        op["x-scope"] = route.scope
    in_path = [Param(name, "path", required=True) for name in _PATH_PARAM.findall(route.path)]
    if params := [*in_path, *route.params]:
        op["parameters"] = [
            {"name": p.name, "in": p.where, "required": p.required, **_described(p, schema)}
            for p in params
        ]
    if route.request:
        content = {media: {"schema": schema(t)} for media, t in route.request.items()}
        op["requestBody"] = {"required": True, "content": content}
    return op


def _reply(reply: Reply, schema: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"description": reply.description}
    if reply.headers:
        out["headers"] = {h.name: _described(h, schema) for h in reply.headers}
    if reply.content:
        out["content"] = {
            media: {} if t is None else {"schema": schema(t)} for media, t in reply.content.items()
        }
    return out


def _described(param: Param, schema: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    described = {"description": param.description} if param.description else {}
    return {**described, "schema": schema(param.type)}


def _structs(types: Iterable[Any]) -> dict[str, type]:
    """Every Struct class the types use, by the name msgspec gives its schema."""
    found: dict[str, type] = {}
    visited: set[type] = set()

    def visit(node: object) -> None:
        if isinstance(node, mi.StructType):
            known = found.setdefault(node.cls.__name__, node.cls)
            if known is not node.cls:  # msgspec would name both by their module paths
                raise TypeError(f"two schema types are named {known.__name__}")
            if node.cls in visited:
                return
            visited.add(node.cls)
        if isinstance(node, mi.Type | mi.Field):
            for name in node.__struct_fields__:
                visit(getattr(node, name))
        elif isinstance(node, tuple):
            for item in node:
                visit(item)

    visit(mi.multi_type_info(types))
    return found


def _named(components: dict[str, Any], structs: Mapping[str, type]) -> dict[str, Any]:
    """The components under the API's names, each with the rules its struct's fields cannot
    state (a struct's `SCHEMA_EXTRA`)."""
    out = {}
    for name, component in components.items():
        cls = structs.get(name)
        if cls is not None:
            name = component["title"] = _NAMES.get(cls, name)
            component.update(getattr(cls, "SCHEMA_EXTRA", {}))
        out[name] = component
    return out


def _rename_refs(node: object, names: Mapping[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.removeprefix(_REF) in names:
            node["$ref"] = _REF + names[ref.removeprefix(_REF)]
        for value in node.values():
            _rename_refs(value, names)
    elif isinstance(node, list):
        for item in node:
            _rename_refs(item, names)
