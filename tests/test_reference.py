"""README.md is the reference a user gets with the repository: every config key, every route
and every metric the code has must be in it, in backticks (`server.port`, `GET /healthz`,
`dispatcher_deliveries_total`), wherever the README puts them. The keys, routes and metrics
are read from the code itself (the config structs, the app's router, the metrics registry),
so a new one fails here until it is documented. The webhook verification snippets are run.
"""

from __future__ import annotations

import re
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from dispatcher import starter
from dispatcher.app import create_app
from dispatcher.config import Settings, settings_from_dict
from dispatcher.signing import Signer
from dispatcher.state import DISPATCHER

README = Path(__file__).parents[1] / "README.md"
SETTINGS = {"store": {"url": "memory://"}, "pools": {"email": {"sink": {"type": "log"}}}}


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _spans(text: str) -> set[str]:
    """Everything in backticks, with a table's escaped pipes unescaped."""
    return {span.replace("\\|", "|") for span in re.findall(r"`([^`\n]+)`", text)}


def _rows(text: str, span: str) -> list[str]:
    """The table rows that hold `span`."""
    return [line for line in text.splitlines() if line.startswith("|") and f"`{span}`" in line]


def _missing(wanted: set[str], text: str | None = None) -> list[str]:
    return sorted(wanted - _spans(_readme() if text is None else text))


# --- configuration ------------------------------------------------------------------------


def config_keys(cls: type[msgspec.Struct] = Settings, prefix: str = "") -> Iterator[str]:
    """Every key path of the config, read from the structs (not from starter.py, whose table
    this checks): a pool's keys under `pools.<name>`, a list item's under `[]`."""
    hints = typing.get_type_hints(cls)
    for name in cls.__struct_fields__:
        yield from _keys_of(hints[name], prefix + name)


def _keys_of(kind: Any, path: str) -> Iterator[str]:
    args = typing.get_args(kind)
    structs = [a for a in args if isinstance(a, type) and issubclass(a, msgspec.Struct)]
    if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        yield from config_keys(kind, path + ".")  # a section: its keys, not itself
    elif structs and typing.get_origin(kind) is dict:
        yield path
        yield from config_keys(structs[0], path + ".<name>.")
    elif structs and typing.get_origin(kind) in (tuple, list):
        yield path
        yield from config_keys(structs[0], path + "[].")
    elif structs:  # a tagged union: the sinks
        for struct in structs:
            yield f"{path}.{struct.__struct_config__.tag_field}"
            yield from config_keys(struct, path + ".")
    else:
        yield path


def test_every_config_key_is_in_the_readme() -> None:
    keys = set(config_keys())
    assert {"server.port", "pools.<name>.sink.url", "auth.tokens[].token_env"} <= keys
    missing = _missing(keys)
    assert not missing, f"README.md lacks these config keys: {missing}"


def test_the_readme_table_of_keys_is_generated_from_the_types() -> None:
    # Defaults and descriptions come from config.py; the table must say the same.
    table = starter.markdown()
    assert table in _readme(), (
        "README.md's table of config keys is stale: replace it with the output of\n"
        "python -c 'from dispatcher.starter import markdown; print(markdown(), end=\"\")'\n"
    )
    keys = starter.every_key()
    assert all(key.description.strip() for key in keys)
    assert {key.path for key in keys if key.default != ""} == set(config_keys())


# --- HTTP routes --------------------------------------------------------------------------


def app_routes(app: web.Application) -> dict[str, str | None]:
    """`METHOD /path` of every route the app serves (the console's too) -> its scope."""
    routes: dict[str, str | None] = {}
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method in ("HEAD", "*"):  # HEAD: aiohttp adds one per GET
            continue
        routes[f"{route.method} {resource.canonical}"] = getattr(
            route.handler,
            "__scope__",
            "admin",  # as the auth middleware reads it
        )
    return routes


async def test_every_route_is_in_the_readme_with_its_scope() -> None:
    routes = app_routes(create_app(settings_from_dict(SETTINGS)))
    assert {"POST /v1/messages", "GET /console/login", "GET /metrics"} <= set(routes)
    missing = _missing(set(routes))
    assert not missing, f"README.md lacks these routes: {missing}"
    readme = _readme()
    for route, scope in routes.items():
        if route.split()[1].startswith("/console"):
            continue  # console pages check the session's scopes themselves
        (row,) = _rows(readme, route)
        assert f"| {scope or 'none'} |" in row, f"README.md gives {route} another scope"


# --- metrics ------------------------------------------------------------------------------


async def test_every_metric_is_in_the_readme_with_its_type_and_labels() -> None:
    app = create_app(settings_from_dict(SETTINGS))
    metrics = app[DISPATCHER].metrics
    await metrics.refresh()  # process_* come from the snapshot a scrape takes first
    families = list(metrics.registry.collect())
    names = {_exposed(f.name, f.type): f for f in families}
    assert {"dispatcher_deliveries_total", "dispatcher_build_info"} <= set(names)
    missing = _missing(set(names))
    assert not missing, f"README.md lacks these metrics: {missing}"
    readme = _readme()
    for name, family in names.items():
        if not name.startswith("dispatcher_"):
            continue  # the client's standard families are listed in prose
        (row,) = _rows(readme, name)
        assert f"| {family.type} |" in row, f"README.md gives {name} another type"
        for label in {k for s in family.samples for k in s.labels} - {"le"}:
            assert f"`{label}`" in row, f"README.md does not name {name}'s label {label}"


def _exposed(name: str, kind: str) -> str:
    """The name a scrape shows: prometheus_client's families drop a counter's `_total`."""
    return f"{name}_total" if kind == "counter" else name


# --- the check itself ---------------------------------------------------------------------


def test_a_key_a_route_or_a_metric_missing_from_the_readme_is_caught() -> None:
    readme = _readme()
    for span in ("pools.<name>.retry.multiplier", "PATCH /v1/pools/{name}", "dispatcher_threads"):
        assert not _missing({span}, readme)
        assert _missing({span}, readme.replace(f"`{span}`", "")) == [span]


# --- webhook signatures -------------------------------------------------------------------


def _snippets() -> list[str]:
    """The README's Python blocks that define `verify(secret, body, headers)`."""
    blocks = re.findall(r"```python\n(.*?)```", _readme(), re.S)
    return [b for b in blocks if "def verify(secret: str, body: bytes" in b]


@pytest.mark.parametrize("secret", ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "plain-text"])
def test_the_readmes_signature_checks_accept_our_signatures_and_nothing_else(
    secret: str,
) -> None:
    snippets = _snippets()
    assert len(snippets) == 2, "the standardwebhooks one and the plain hmac one"
    body = b'{"order": 7}'
    stamp = int(time.time())
    headers = {
        "webhook-id": "msg_0001",
        "webhook-timestamp": str(stamp),
        "webhook-signature": Signer(secret).sign("msg_0001", stamp, body),
    }
    for code in snippets:
        namespace: dict[str, Any] = {}
        exec(compile(code, "README.md", "exec"), namespace)
        verify = namespace["verify"]
        assert verify(secret, body, headers)
        assert not verify(secret, body + b" ", headers)
        assert not verify(secret, body, {**headers, "webhook-id": "msg_0002"})
        old = stamp - 3600
        stale = {**headers, "webhook-timestamp": str(old)}
        stale["webhook-signature"] = Signer(secret).sign("msg_0001", old, body)
        assert not verify(secret, body, stale)
