"""What the dashboard, rule and Prometheus tests share: the generated dashboards and the rules
as data, the PromQL they hold, the metric names in it, and Grafana's variable substitution."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from tests.conftest import require_service

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards" / "grafana"
RULES = ROOT / "deploy" / "prometheus" / "rules" / "dispatcher.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests" / "dispatcher.rules.test.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"

#: DESIGN.md Part 2 "Metrics", name -> (type, labels). Copied here on purpose: the contract is
#: what users' dashboards depend on, so a rename must break this test, not follow silently.
CONTRACT: dict[str, tuple[str, tuple[str, ...]]] = {
    "dispatcher_build_info": ("gauge", ("version", "store")),
    "dispatcher_messages_enqueued_total": ("counter", ("pool",)),
    "dispatcher_messages_rejected_total": ("counter", ("reason",)),
    "dispatcher_deliveries_total": ("counter", ("pool", "outcome")),
    "dispatcher_retries_total": ("counter", ("pool",)),
    "dispatcher_dead_lettered_total": ("counter", ("pool", "reason")),
    "dispatcher_dlq_replayed_total": ("counter", ("pool",)),
    "dispatcher_dlq_purged_total": ("counter", ("pool",)),
    "dispatcher_backlog_messages": ("gauge", ("pool", "state")),
    "dispatcher_oldest_message_age_seconds": ("gauge", ("pool",)),
    "dispatcher_dlq_messages": ("gauge", ("pool",)),
    "dispatcher_queue_wait_seconds": ("histogram", ("pool",)),
    "dispatcher_delivery_duration_seconds": ("histogram", ("pool", "outcome")),
    "dispatcher_end_to_end_seconds": ("histogram", ("pool",)),
    "dispatcher_pool_concurrency_limit": ("gauge", ("pool",)),
    "dispatcher_pool_busy_workers": ("gauge", ("pool",)),
    "dispatcher_pool_rate_limit": ("gauge", ("pool",)),
    "dispatcher_pool_paused": ("gauge", ("pool",)),
    "dispatcher_rate_limit_wait_seconds_total": ("counter", ("pool",)),
    "dispatcher_asyncio_tasks": ("gauge", ()),
    "dispatcher_event_loop_lag_seconds": ("histogram", ()),
    "dispatcher_threads": ("gauge", ()),
    "dispatcher_store_operation_duration_seconds": ("histogram", ("operation",)),
    "dispatcher_pool_circuit_state": ("gauge", ("pool",)),
    "dispatcher_circuit_opened_total": ("counter", ("pool",)),
    "dispatcher_http_requests_total": ("counter", ("handler", "method", "code")),
}

# A metric name in PromQL: not part of a recording rule's name (those have colons), not a
# label name inside braces (label names here never start with these prefixes).
_METRIC = re.compile(r"(?<![\w:])((?:dispatcher|process)_[a-z0-9_]+)(?![\w:])")
_RECORDED = re.compile(r"(?<![\w:])([a-z_]+:[a-z0-9_]+:[a-z0-9_]+)(?![\w:])")
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")


@dataclass(frozen=True)
class Query:
    where: str  # "<dashboard uid> / <panel title> [refId]", "record <name>", "alert <name> #i"
    expr: str


@functools.cache
def generator() -> ModuleType:
    """dashboards/generate.py, imported by path (dashboards/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "dashboards_generate", ROOT / "dashboards/generate.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))
    }


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every non-row panel, including panels nested in collapsed rows."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_queries() -> list[Query]:
    return [
        Query(f"{uid} / {p['title']} [{t['refId']}]", t["expr"])
        for uid, d in dashboards().items()
        for p in panels(d)
        for t in p["targets"]
    ]


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def rule_queries() -> list[Query]:
    out = []
    for i, rule in enumerate(rules()):
        where = f"record {rule['record']}" if "record" in rule else f"alert {rule['alert']} #{i}"
        out.append(Query(where, rule["expr"]))
    return out


def recorded_names() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def metric_names(expr: str) -> set[str]:
    """Raw metric names (dispatcher_*, process_*) a PromQL expression reads."""
    return set(_METRIC.findall(expr))


def recorded_refs(expr: str) -> set[str]:
    return set(_RECORDED.findall(expr))


def base_name(sample_name: str) -> str:
    """dispatcher_x_seconds_bucket -> dispatcher_x_seconds when that is a contract histogram."""
    base = _HISTOGRAM_SUFFIX.sub("", sample_name)
    if base != sample_name and CONTRACT.get(base, ("",))[0] == "histogram":
        return base
    return sample_name


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Grafana's variable interpolation: `$name` and `${name}` (longest names first)."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    assert "$" not in expr, f"an unsubstituted variable in {expr!r}"
    return expr


def promtool(*args: str | Path) -> str:
    exe = shutil.which("promtool")
    if exe is None:
        require_service("promtool", "Debian package prometheus (.ci/run installs it)")
        raise AssertionError("unreachable")
    done = subprocess.run(
        [exe, *map(str, args)], capture_output=True, text=True, timeout=30, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(?!\s*bool\b)")


def with_bool(expr: str) -> str:
    """An alert expression with every comparison turned into a `bool` comparison.

    `x > 300` filters to nothing on a healthy system; `x > bool 300` keeps every series that
    `x` selects (as 0 or 1), so a non-empty answer proves the alert reads live series with
    the labels it groups by, without having to make the system unhealthy first. Label
    matchers (`{a!="b"}`) and strings are left alone."""
    out: list[str] = []
    depth = 0
    quote: str | None = None
    i = 0
    while i < len(expr):
        c = expr[i]
        if quote:
            out.append(c)
            if c == "\\":
                out.append(expr[i + 1])
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
            out.append(c)
        elif c == "{":
            depth += 1
            out.append(c)
        elif c == "}":
            depth -= 1
            out.append(c)
        elif depth == 0 and (m := _COMPARISON.match(expr, i)):
            out.append(m.group(1) + " bool")
            i += len(m.group(1))
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)
