"""Settings: the YAML file of DESIGN.md, as frozen typed values, validated once at start.

msgspec does the structural work (types, ranges, unknown keys) and reports the path of a bad
key; `_check` adds the rules that span keys (routes name known pools, burst needs rate...).
Every error becomes a ConfigError whose text starts with the dotted path of the key:
``pools.email.retry.max_attempts: expected int, got str``.

Environment variables ``DISPATCHER_<SECTION>__<KEY>`` (more ``__`` for deeper keys) override
file values; their text is read as a YAML scalar so ``DISPATCHER_SERVER__PORT=9000`` is an int.
Nothing here runs at import time. A pool's own settings (its sink, limits, retry policy and
receiver protection) are in poolconfig.py; this module re-exports them.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from .errors import ConfigError, field_problem
from .poolconfig import AdaptiveConfig as AdaptiveConfig
from .poolconfig import CircuitConfig as CircuitConfig
from .poolconfig import Count, PositiveSeconds, Seconds
from .poolconfig import DemoSinkConfig as DemoSinkConfig
from .poolconfig import LogSinkConfig as LogSinkConfig
from .poolconfig import PoolConfig as PoolConfig
from .poolconfig import PythonSinkConfig as PythonSinkConfig
from .poolconfig import RetryConfig as RetryConfig
from .poolconfig import Section as _Section
from .poolconfig import SinkConfig as SinkConfig
from .poolconfig import WebhookSinkConfig as WebhookSinkConfig
from .poolconfig import WebsocketSinkConfig as WebsocketSinkConfig
from .tags import validate_pattern

POOL_NAME = re.compile(r"^[a-z0-9_-]{1,64}$")
Scope = Literal["produce", "read", "operate", "admin"]
SCOPES: tuple[Scope, ...] = ("produce", "read", "operate", "admin")


class ServerConfig(_Section, frozen=True):
    """The HTTP listener: the API, the console and /metrics on one port."""

    host: str = "127.0.0.1"
    """Address to listen on; loopback by default, so only this machine can connect."""
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    """TCP port; 0 picks a free one."""
    max_body_bytes: Count = 1_048_576
    """Largest request body accepted; a larger one is answered 413."""
    grace_period: Seconds = 30.0
    """Seconds that SIGTERM or SIGINT lets running attempts finish before the process exits."""
    request_timeout: PositiveSeconds = 15.0
    """Seconds a client has to send its request headers (else the connection is closed) or
    its body (else 408)."""


class StoreConfig(_Section, frozen=True):
    """Where messages are kept."""

    url: str = "sqlite:///./dispatcher-data/dispatcher.db"
    """sqlite:///relative/path.db or sqlite:////absolute/path.db (embedded, the default);
    redis://host:6379/0 or rediss://... (several processes share one Redis); or memory://
    (nothing survives a restart; for tests)."""
    min_free_bytes: Annotated[int, msgspec.Meta(ge=0)] = 67_108_864
    """Ingest answers 503 while the store's disk has less free space than this."""
    lease: PositiveSeconds = 30.0
    """Redis: seconds after which a job claimed by a process that died or stalled is
    claimed again by another; must exceed every pool's timeout."""
    prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_:.-]{1,64}$")] = "dispatcher"
    """Redis: the prefix of every key, so that several deployments (or tests) share one
    server."""
    synchronous: Literal["full", "normal"] = "full"
    """SQLite durability. full: every commit is fsynced before its 2xx, so a power cut loses
    nothing acknowledged. normal: fsync at WAL checkpoints only; a crash of the process loses
    nothing, a power cut may lose the last commits."""
    retention: Seconds = 3600.0
    """Seconds a delivered message stays readable at GET /v1/messages/{id}."""
    dedup_window: Seconds = 86_400.0
    """Seconds during which a repeated message id or Idempotency-Key is answered as a
    duplicate (200) and enqueues nothing."""


class TokenConfig(_Section, frozen=True):
    """One API token: give token or token_env, not both."""

    name: str
    """Who holds the token; the audit log names this as the actor."""
    token: str | None = None
    """The token itself, inline."""
    token_env: str | None = None
    """The name of an environment variable that holds the token (set when the process
    starts)."""
    scopes: tuple[Scope, ...] = ("produce", "read")
    """What the token may do: produce (send), read (look), operate (pause, throttle, replay,
    purge), admin (everything, /debug/tasks too)."""


class AuthConfig(_Section, frozen=True):
    """Who may call the API and log in to the console."""

    tokens: tuple[TokenConfig, ...] = ()
    """Bearer tokens. With none, an admin token is generated at start and printed (it lasts
    until the process exits)."""
    disabled: bool = False
    """Turn authentication off: every request acts as admin. Allowed only when server.host is
    a loopback address."""


class RouteConfig(_Section, frozen=True):
    """Sends the messages whose tag matches to some pools."""

    match: str
    """Tag pattern: dot-separated tokens; * matches exactly one token, a final > one or
    more."""
    pools: tuple[str, ...]
    """The pools that get the matching messages."""


class SecurityConfig(_Section, frozen=True):
    """Which webhook targets are allowed (the guard against server-side request forgery)."""

    webhook_allow_private: bool = False
    """Allow webhook targets on private, loopback and link-local addresses."""
    webhook_allow_cidrs: tuple[str, ...] = ()
    """Allow just these networks, e.g. [127.0.0.1/32, 10.1.0.0/16]."""


class DemoConfig(_Section, frozen=True):
    """The built-in demo."""

    traffic: Seconds = 0.0
    """Demo messages per second generated in the process (0: none; the built-in demo: 5)."""


class ConsoleConfig(_Section, frozen=True):
    """The web console at /console."""

    trace_url: str | None = None
    """A link from a message to its trace, {trace_id} replaced, e.g.
    https://tempo.example/trace/{trace_id}; null: no link."""


class Settings(_Section, frozen=True):
    """The whole configuration."""

    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    auth: AuthConfig = AuthConfig()
    pools: dict[str, PoolConfig] = {}
    """The worker pools, by name: 1 to 64 of [a-z0-9_-]; at most 1024 pools."""
    routes: tuple[RouteConfig, ...] = ()
    """Which pools get a message: those of every route that matches its tag (fan-out)."""
    security: SecurityConfig = SecurityConfig()
    demo: DemoConfig = DemoConfig()
    console: ConsoleConfig = ConsoleConfig()


# --- loading ------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice instead of keeping the last one."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise ConfigError(str(key), f"given twice (line {key_node.start_mark.line + 1})")
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    base: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Read `path` (or start from `base`, or empty), apply env overrides, then `overrides`
    (command-line flags, by section), and validate the result."""
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("", f"cannot read {path}: {exc.strerror}") from None
        try:
            raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise ConfigError("", f"{path} is not valid YAML: {exc}") from None
        raw = {} if raw is None else raw
    else:
        raw = _deep_copy(base or {})
    if not isinstance(raw, dict):
        raise ConfigError("", "the top level must be a mapping")
    _apply_env(raw, os.environ if env is None else env)
    for section, values in (overrides or {}).items():
        node = raw.setdefault(section, {})
        if isinstance(node, dict):
            node.update(values)
    return settings_from_dict(raw, env=os.environ if env is None else env)


def settings_from_dict(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    # Pools are converted one by one: msgspec shows a dict key as `[...]` in its error path,
    # and the pool's name is exactly what the user needs to see.
    pools: dict[str, PoolConfig] = {}
    raw_pools = raw.get("pools")
    if isinstance(raw_pools, dict):
        for name, value in raw_pools.items():
            if not isinstance(name, str):
                raise ConfigError(f"pools.{name}", "pool names are strings")
            try:
                pools[name] = msgspec.convert(value, PoolConfig, strict=True)
            except msgspec.ValidationError as exc:
                raise _from_msgspec(exc, f"pools.{name}") from None
        raw = {**raw, "pools": {}}
    try:
        settings = msgspec.convert(raw, Settings, strict=True)
    except msgspec.ValidationError as exc:
        raise _from_msgspec(exc) from None
    if pools:
        settings = msgspec.structs.replace(settings, pools=pools)
    _check(settings, os.environ if env is None else env)
    return settings


def _from_msgspec(exc: msgspec.ValidationError, prefix: str = "") -> ConfigError:
    found = field_problem(exc)
    path = ".".join(filter(None, (prefix, *found.path)))
    if found.kind == "unknown":
        return ConfigError(path, "unknown key")
    if found.kind == "missing":
        return ConfigError(path, "required")
    return ConfigError(path, found.problem[:1].lower() + found.problem[1:])


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for name in sorted(env):
        if not name.startswith("DISPATCHER_") or "__" not in name:
            continue
        keys = [k.lower() for k in name[len("DISPATCHER_") :].split("__")]
        if not all(keys):
            raise ConfigError(name, "malformed override name")
        node = raw
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(keys), f"{name} overrides a value that is not a map")
            node = child
        try:
            node[keys[-1]] = yaml.safe_load(env[name])
        except yaml.YAMLError:
            node[keys[-1]] = env[name]


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_deep_copy(v) for v in value]
    return value


REDIS_SCHEMES = ("redis://", "rediss://")
MAX_POOLS = 1024  # the SQLite store numbers a message's jobs within a range of this size


def _check(settings: Settings, env: Mapping[str, str]) -> None:
    if len(settings.pools) > MAX_POOLS:
        raise ConfigError("pools", f"at most {MAX_POOLS} pools")
    for name, pool in settings.pools.items():
        where = f"pools.{name}"
        if not POOL_NAME.match(name):
            raise ConfigError(where, "pool names are 1 to 64 of [a-z0-9_-]")
        if pool.burst is not None and pool.rate is None:
            raise ConfigError(f"{where}.burst", "needs a rate")
        if pool.retry.max_backoff < pool.retry.initial_backoff:
            raise ConfigError(f"{where}.retry.max_backoff", "is below initial_backoff")
        if settings.store.url.startswith(REDIS_SCHEMES) and pool.timeout >= settings.store.lease:
            # Else a slow but live attempt's job would be claimed again by another process.
            raise ConfigError(f"{where}.timeout", "must be below store.lease")
        if pool.circuit.max_cooldown < pool.circuit.cooldown:
            raise ConfigError(f"{where}.circuit.max_cooldown", "is below cooldown")
        if pool.adaptive.min_concurrency > pool.concurrency:
            raise ConfigError(f"{where}.adaptive.min_concurrency", "is above concurrency")
        sink = pool.sink
        if isinstance(sink, WebhookSinkConfig):
            _check_webhook_url(f"{where}.sink.url", sink.url, settings.security)
        if isinstance(sink, PythonSinkConfig) and not re.match(
            r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", sink.handler
        ):
            raise ConfigError(f"{where}.sink.handler", "expected 'package.module:function'")
    for i, route in enumerate(settings.routes):
        try:
            validate_pattern(route.match)
        except ValueError as exc:
            raise ConfigError(f"routes.{i}.match", str(exc)) from None
        if not route.pools:
            raise ConfigError(f"routes.{i}.pools", "names no pool")
        for pool_name in route.pools:
            if pool_name not in settings.pools:
                raise ConfigError(f"routes.{i}.pools", f"unknown pool {pool_name!r}")
    for i, cidr in enumerate(settings.security.webhook_allow_cidrs):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"security.webhook_allow_cidrs.{i}", "not a CIDR") from None
    names: set[str] = set()
    for i, token in enumerate(settings.auth.tokens):
        where = f"auth.tokens.{i}"
        if token.name in names:
            raise ConfigError(f"{where}.name", f"{token.name!r} is used twice")
        names.add(token.name)
        if (token.token is None) == (token.token_env is None):
            raise ConfigError(where, "give exactly one of token and token_env")
        if token.token_env is not None and not env.get(token.token_env):
            raise ConfigError(f"{where}.token_env", f"${token.token_env} is not set")
        if not token.scopes:
            raise ConfigError(f"{where}.scopes", "names no scope")
    if settings.auth.disabled and not is_loopback_host(settings.server.host):
        raise ConfigError("auth.disabled", "allowed only when server.host is a loopback address")
    if not re.match(r"^(sqlite|redis|rediss|memory)://", settings.store.url):
        raise ConfigError("store.url", "expected sqlite:///path, redis://host:port/db or memory://")


def _check_webhook_url(path: str, url: str, security: SecurityConfig) -> None:
    from .ssrf import AddressGuard, literal_host  # the guard lives with the sinks' I/O

    match = re.match(r"^https?://[^/\s]+", url)
    if not match:
        raise ConfigError(path, "expected an http:// or https:// URL")
    host = literal_host(url)
    guard = AddressGuard(security.webhook_allow_private, security.webhook_allow_cidrs)
    if host is not None and not guard.allows(host):
        raise ConfigError(
            path,
            f"{host} is a private or loopback address; set security.webhook_allow_private "
            "or list it in security.webhook_allow_cidrs",
        )


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_value(token: TokenConfig, env: Mapping[str, str]) -> str:
    """The secret of a token: inline, or read from its environment variable."""
    if token.token is not None:
        return token.token
    assert token.token_env is not None  # _check guarantees one of the two
    return env[token.token_env]


_SECRET_KEYS = frozenset({"token", "secret"})


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, every secret replaced by '***'."""

    def scrub(value: Any, key: str = "") -> Any:
        if key == "headers" and isinstance(value, dict):  # may carry Authorization
            return dict.fromkeys(value, "***")
        if isinstance(value, dict):
            return {k: scrub(v, k) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [scrub(v) for v in value]
        if key in _SECRET_KEYS and value is not None:
            return "***"
        if key == "url" and isinstance(value, str):
            return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", value)
        return value

    result: dict[str, Any] = scrub(msgspec.to_builtins(settings))
    return result
