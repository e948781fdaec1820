#!/usr/bin/env python3
"""Generates the Grafana dashboards (and the Kubernetes PrometheusRule) from one description.

The dashboards are described below as plain data: rows of panels, each panel a title, a unit
and PromQL targets written against the metric contract (DESIGN.md, Part 2, "Metrics") and the
recording rules in deploy/prometheus/rules/dispatcher.rules.yml. Running this script writes

- dashboards/grafana/dispatcher-{overview,pools,runtime}.json  (classic Grafana JSON model)
- deploy/kubernetes/prometheusrule.yaml  (the same rules for prometheus-operator users)

and `--check` exits 1 when a committed file differs from what it would write (tests run the
same comparison). `--markdown` prints the layout table that README.md shows.

Every panel uses the `datasource` variable; every query filters on `job` and `instance`, and
per-pool queries on `pool`, so one dashboard serves any number of deployments.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "dashboards" / "grafana"
RULES_FILE = ROOT / "deploy" / "prometheus" / "rules" / "dispatcher.rules.yml"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "prometheusrule.yaml"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
#: The oldest-message-age objective (seconds) drawn on the overview; the alert uses the same.
AGE_SLO = 300


def sel(*, pool: bool = True, extra: str = "") -> str:
    """The label selector every query uses: the dashboard's variables, plus `extra`."""
    matchers = ['job=~"$job"', 'instance=~"$instance"']
    if pool:
        matchers.append('pool=~"$pool"')
    if extra:
        matchers.append(extra)
    return "{" + ",".join(matchers) + "}"


def quantile(q: float, metric: str, by: str = "", *, pool: bool = True) -> str:
    """p-quantile of a histogram over the rate window, grouped by `by` (plus le)."""
    group = f"{by}, le" if by else "le"
    return (
        f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{sel(pool=pool)}[{RATE}])))"
    )


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str
    heatmap: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    targets: tuple[Target, ...]
    description: str
    kind: str = "timeseries"  # timeseries, stat, heatmap, state-timeline
    width: int = 8
    height: int = 8
    stack: bool = False
    thresholds: tuple[float, ...] = ()  # drawn as dashed lines on a time series
    show_name: bool = False  # a stat panel whose series name (legend) is the information


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    tags: tuple[str, ...] = field(default=("dispatcher",))


def T(expr: str, legend: str = "", *, heatmap: bool = False) -> Target:
    return Target(expr, legend, heatmap)


# --- the description ----------------------------------------------------------------------

OVERVIEW = Dashboard(
    uid="dispatcher-overview",
    title="Dispatcher / Overview",
    description="Is work flowing? Ingest, deliveries, latency, backlog, failures and the DLQ.",
    rows=(
        Row(
            "At a glance",
            (
                Panel(
                    "Instances up",
                    "short",
                    (T('sum(up{job=~"$job",instance=~"$instance"})', "up"),),
                    "Scrape targets of the selected job that answered the last scrape.",
                    kind="stat",
                    width=4,
                    height=4,
                ),
                Panel(
                    "Ingest rate",
                    "mps",
                    (
                        T(
                            f"sum(rate(dispatcher_messages_enqueued_total{sel()}[{RATE}]))",
                            "enqueued",
                        ),
                    ),
                    "Messages accepted per second, counted per pool after fan-out.",
                    kind="stat",
                    width=4,
                    height=4,
                ),
                Panel(
                    "Backlog",
                    "short",
                    (T(f"sum(max by (pool, state) (dispatcher_backlog_messages{sel()}))", "all"),),
                    "Undelivered messages in every state (ready, scheduled, in flight).",
                    kind="stat",
                    width=4,
                    height=4,
                ),
                Panel(
                    "Oldest message",
                    "s",
                    (T(f"max(dispatcher_oldest_message_age_seconds{sel()})", "oldest"),),
                    f"Age of the oldest undelivered message in any pool; the SLO is {AGE_SLO}s.",
                    kind="stat",
                    width=4,
                    height=4,
                    thresholds=(AGE_SLO,),
                ),
                Panel(
                    "Dead letters",
                    "short",
                    (T(f"sum(max by (pool) (dispatcher_dlq_messages{sel()}))", "dlq"),),
                    "Messages parked in the dead-letter queue, all selected pools.",
                    kind="stat",
                    width=4,
                    height=4,
                ),
                Panel(
                    "Worst failure ratio",
                    "percentunit",
                    (
                        T(
                            f"max(instance_pool:dispatcher_deliveries_failed:ratio_rate5m{sel()})",
                            "failure ratio",
                        ),
                    ),
                    "Share of attempts that failed or timed out over 5m, worst pool "
                    "(recording rule).",
                    kind="stat",
                    width=4,
                    height=4,
                ),
            ),
        ),
        Row(
            "Traffic",
            (
                Panel(
                    "Ingest rate by pool",
                    "mps",
                    (
                        T(
                            "sum by (pool) (rate(dispatcher_messages_enqueued_total"
                            f"{sel()}[{RATE}]))",
                            "{{pool}}",
                        ),
                    ),
                    "Accepted messages per second, per pool after fan-out.",
                    width=6,
                ),
                Panel(
                    "Rejections by reason",
                    "mps",
                    (
                        T(
                            "sum by (reason) (rate(dispatcher_messages_rejected_total"
                            f"{sel(pool=False)}[{RATE}]))",
                            "{{reason}}",
                        ),
                    ),
                    "Ingest refusals per second: invalid, unroutable, too_large, backlog_full, "
                    "unavailable, unauthorized, duplicate.",
                    width=6,
                ),
                Panel(
                    "Deliveries by outcome",
                    "mps",
                    (
                        T(
                            f"sum by (outcome) (rate(dispatcher_deliveries_total{sel()}[{RATE}]))",
                            "{{outcome}}",
                        ),
                    ),
                    "Delivery attempts per second: success, failure, timeout.",
                    width=6,
                    stack=True,
                ),
                Panel(
                    "Retries by pool",
                    "mps",
                    (
                        T(
                            f"sum by (pool) (rate(dispatcher_retries_total{sel()}[{RATE}]))",
                            "{{pool}}",
                        ),
                    ),
                    "Attempts rescheduled with backoff per second.",
                    width=6,
                ),
            ),
        ),
        Row(
            "Latency and backlog",
            (
                Panel(
                    "End-to-end latency",
                    "s",
                    tuple(
                        T(quantile(q, "dispatcher_end_to_end_seconds"), f"p{round(q * 100)}")
                        for q in (0.5, 0.95, 0.99)
                    ),
                    "Accepted → delivered, all selected pools: p50, p95, p99.",
                ),
                Panel(
                    "Backlog by state",
                    "short",
                    (
                        T(
                            f"sum by (state) (max by (pool, state) "
                            f"(dispatcher_backlog_messages{sel()}))",
                            "{{state}}",
                        ),
                    ),
                    "Undelivered messages: ready, scheduled (waiting for a retry), in flight. "
                    "Store-derived, so max across instances sharing one store.",
                    stack=True,
                ),
                Panel(
                    "Oldest message age by pool",
                    "s",
                    (
                        T(
                            f"max by (pool) (dispatcher_oldest_message_age_seconds{sel()})",
                            "{{pool}}",
                        ),
                    ),
                    f"Age of the oldest undelivered message per pool; the dashed line is the "
                    f"{AGE_SLO}s objective the DispatcherOldestMessageTooOld alert uses.",
                    thresholds=(AGE_SLO,),
                ),
            ),
        ),
        Row(
            "Failures and dead letters",
            (
                Panel(
                    "Failure ratio by pool",
                    "percentunit",
                    (
                        T(
                            "max by (pool) (instance_pool:dispatcher_deliveries_failed:"
                            f"ratio_rate5m{sel()})",
                            "{{pool}}",
                        ),
                    ),
                    "Failed or timed-out share of attempts over 5m (recording rule; worst "
                    "instance). The DispatcherHighFailureRatio alert fires above 10%.",
                    width=6,
                    thresholds=(0.1,),
                ),
                Panel(
                    "DLQ size",
                    "short",
                    (T(f"max by (pool) (dispatcher_dlq_messages{sel()})", "{{pool}}"),),
                    "Messages parked in the dead-letter queue per pool.",
                    width=6,
                ),
                Panel(
                    "DLQ inflow",
                    "mps",
                    (
                        T(
                            "sum by (pool, reason) (rate(dispatcher_dead_lettered_total"
                            f"{sel()}[{RATE}]))",
                            "{{pool}} {{reason}}",
                        ),
                    ),
                    "Messages dead-lettered per second: max_attempts or permanent.",
                    width=6,
                ),
                Panel(
                    "DLQ replays and purges",
                    "mps",
                    (
                        T(
                            f"sum by (pool) (rate(dispatcher_dlq_replayed_total{sel()}[{RATE}]))",
                            "{{pool}} replayed",
                        ),
                        T(
                            f"sum by (pool) (rate(dispatcher_dlq_purged_total{sel()}[{RATE}]))",
                            "{{pool}} purged",
                        ),
                    ),
                    "Operator actions on the DLQ (console or API), per second.",
                    width=6,
                ),
            ),
        ),
    ),
)

POOLS = Dashboard(
    uid="dispatcher-pools",
    title="Dispatcher / Pools",
    description="Per pool: saturation, throttle and pause next to their effect, waits, "
    "delivery time.",
    rows=(
        Row(
            "Saturation",
            (
                Panel(
                    "Saturation (busy / limit)",
                    "percentunit",
                    (
                        T(
                            "max by (pool) (instance_pool:dispatcher_pool_saturation:ratio"
                            f"{sel()})",
                            "{{pool}}",
                        ),
                    ),
                    "Busy workers over the concurrency limit (recording rule; worst instance). "
                    "DispatcherPoolSaturated fires when it stays above 90%.",
                    width=12,
                    thresholds=(0.9,),
                ),
                Panel(
                    "Busy workers and limit",
                    "short",
                    (
                        T(f"sum by (pool) (dispatcher_pool_busy_workers{sel()})", "{{pool}} busy"),
                        T(
                            f"sum by (pool) (dispatcher_pool_concurrency_limit{sel()})",
                            "{{pool}} limit",
                        ),
                    ),
                    "Deliveries in flight against the concurrency limit.",
                    width=12,
                ),
            ),
        ),
        Row(
            "Throttle and pause",
            (
                Panel(
                    "Rate limit and attempt rate",
                    "mps",
                    (
                        T(f"max by (pool) (dispatcher_pool_rate_limit{sel()})", "{{pool}} limit"),
                        T(
                            f"sum by (pool) (rate(dispatcher_deliveries_total{sel()}[{RATE}]))",
                            "{{pool}} attempts",
                        ),
                    ),
                    "The token-bucket rate (0 = unlimited) next to the attempts it allows, so "
                    "a throttle from the console shows beside its effect.",
                ),
                Panel(
                    "Paused",
                    "bool_yes_no",
                    (T(f"max by (pool) (dispatcher_pool_paused{sel()})", "{{pool}}"),),
                    "Whether the pool is paused (console or PATCH /v1/pools/{name}).",
                    kind="state-timeline",
                ),
                Panel(
                    "Rate-limit wait",
                    "percentunit",
                    (
                        T(
                            "max by (pool) (instance_pool:dispatcher_rate_limit_wait:"
                            f"ratio_rate5m{sel()})",
                            "{{pool}}",
                        ),
                    ),
                    "Share of worker time spent waiting for rate tokens over 5m (recording "
                    "rule): high means the throttle, not the sink, sets the pace.",
                ),
            ),
        ),
        Row(
            "Waiting and delivery",
            (
                Panel(
                    "Queue wait",
                    "s",
                    tuple(
                        T(quantile(q, "dispatcher_queue_wait_seconds", "pool"), f"{{{{pool}}}} {p}")
                        for q, p in ((0.5, "p50"), (0.99, "p99"))
                    ),
                    "Ready → attempt start, per pool: p50 and p99.",
                ),
                Panel(
                    "Delivery duration by outcome",
                    "s",
                    (
                        T(
                            quantile(0.95, "dispatcher_delivery_duration_seconds", "pool, outcome"),
                            "{{pool}} {{outcome}} p95",
                        ),
                    ),
                    "One attempt, p95, per pool and outcome.",
                ),
                Panel(
                    "Delivery duration heatmap",
                    "s",
                    (
                        T(
                            "sum by (le) (rate(dispatcher_delivery_duration_seconds_bucket"
                            f"{sel()}[{RATE}]))",
                            "{{le}}",
                            heatmap=True,
                        ),
                    ),
                    "Distribution of attempt durations over time, all selected pools.",
                    kind="heatmap",
                ),
            ),
        ),
    ),
)

RUNTIME = Dashboard(
    uid="dispatcher-runtime",
    title="Dispatcher / Runtime",
    description="Is the process healthy? Tasks, event-loop lag, threads, CPU, memory, store "
    "and HTTP.",
    rows=(
        Row(
            "Event loop",
            (
                Panel(
                    "asyncio tasks",
                    "short",
                    (
                        T(
                            f"sum by (instance) (dispatcher_asyncio_tasks{sel(pool=False)})",
                            "{{instance}}",
                        ),
                    ),
                    "Live asyncio tasks (the goroutine count); a steady climb is a task leak.",
                ),
                Panel(
                    "Event-loop lag",
                    "s",
                    tuple(
                        T(
                            quantile(
                                q, "dispatcher_event_loop_lag_seconds", "instance", pool=False
                            ),
                            f"{{{{instance}}}} {p}",
                        )
                        for q, p in ((0.5, "p50"), (0.99, "p99"))
                    ),
                    "How late the loop runs timers: p50 and p99. Above 100 ms something blocks "
                    "the loop (DispatcherEventLoopLag).",
                    thresholds=(0.1,),
                ),
                Panel(
                    "Threads",
                    "short",
                    (
                        T(
                            f"sum by (instance) (dispatcher_threads{sel(pool=False)})",
                            "{{instance}}",
                        ),
                    ),
                    "Python threads (the store's writer thread, executors).",
                ),
            ),
        ),
        Row(
            "Process",
            (
                Panel(
                    "CPU",
                    "percentunit",
                    (
                        T(
                            f"rate(process_cpu_seconds_total{sel(pool=False)}[{RATE}])",
                            "{{instance}}",
                        ),
                    ),
                    "CPU time per second; one event loop saturates at 100% of one core.",
                ),
                Panel(
                    "Resident memory",
                    "bytes",
                    (T(f"process_resident_memory_bytes{sel(pool=False)}", "{{instance}}"),),
                    "RSS; the backlog lives in the store, so this should stay flat under load.",
                ),
                Panel(
                    "Build",
                    "short",
                    (
                        T(
                            f"count by (version, store) (dispatcher_build_info{sel(pool=False)})",
                            "{{version}} ({{store}})",
                        ),
                    ),
                    "Instances per version and store backend.",
                    kind="stat",
                    show_name=True,
                ),
            ),
        ),
        Row(
            "Store",
            (
                Panel(
                    "Store operation latency",
                    "s",
                    (
                        T(
                            quantile(
                                0.99,
                                "dispatcher_store_operation_duration_seconds",
                                "operation",
                                pool=False,
                            ),
                            "{{operation}} p99",
                        ),
                    ),
                    "p99 per store operation (commit, claim, ack, ...).",
                    width=12,
                ),
                Panel(
                    "Store operations",
                    "ops",
                    (
                        T(
                            "sum by (operation) (rate(dispatcher_store_operation_duration_seconds"
                            f"_count{sel(pool=False)}[{RATE}]))",
                            "{{operation}}",
                        ),
                    ),
                    "Store operations per second; one commit carries a whole group of messages.",
                    width=12,
                ),
            ),
        ),
        Row(
            "HTTP",
            (
                Panel(
                    "Requests by handler",
                    "reqps",
                    (
                        T(
                            "sum by (handler, method) (rate(dispatcher_http_requests_total"
                            f"{sel(pool=False)}[{RATE}]))",
                            "{{method}} {{handler}}",
                        ),
                    ),
                    "API, console and scrape traffic per route.",
                    width=12,
                ),
                Panel(
                    "Requests by code",
                    "reqps",
                    (
                        T(
                            "sum by (code) (rate(dispatcher_http_requests_total"
                            f"{sel(pool=False)}[{RATE}]))",
                            "{{code}}",
                        ),
                    ),
                    "Responses per status code: 202 accepted, 4xx refused input, 503 draining "
                    "or store unavailable.",
                    width=12,
                    stack=True,
                ),
            ),
        ),
    ),
)

DASHBOARDS = (OVERVIEW, POOLS, RUNTIME)


# --- rendering ----------------------------------------------------------------------------


def _variables() -> list[dict[str, Any]]:
    def query(name: str, label: str, expr: str, *, multi: bool) -> dict[str, Any]:
        variable: dict[str, Any] = {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "query": expr,
            "definition": expr,
            "refresh": 2,  # on time range change
            "sort": 1,
            "hide": 0,
            "regex": "",
            "current": {},
            "options": [],
            "multi": multi,
            "includeAll": multi,
        }
        if multi:
            variable["allValue"] = ".+"  # a short regex, not every value OR-ed together
        return variable

    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "refresh": 1,
            "regex": "",
            "hide": 0,
            "current": {},
            "options": [],
        },
        query("job", "Job", "label_values(dispatcher_build_info, job)", multi=False),
        query(
            "instance",
            "Instance",
            'label_values(dispatcher_build_info{job=~"$job"}, instance)',
            multi=True,
        ),
        query(
            "pool",
            "Pool",
            'label_values(dispatcher_pool_concurrency_limit{job=~"$job",instance=~"$instance"}, '
            "pool)",
            multi=True,
        ),
    ]


def _field_config(panel: Panel) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    steps += [{"color": "red", "value": t} for t in panel.thresholds]
    defaults: dict[str, Any] = {
        "unit": panel.unit,
        "thresholds": {"mode": "absolute", "steps": steps},
        "color": {"mode": "palette-classic"},
    }
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if panel.stack else 0,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
            "thresholdsStyle": {"mode": "dashed" if panel.thresholds else "off"},
        }
        if panel.unit == "percentunit":
            defaults["min"] = 0
    elif panel.kind == "stat":
        defaults["color"] = {"mode": "thresholds"}
    elif panel.kind == "state-timeline":
        defaults["color"] = {"mode": "thresholds"}
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": "green", "value": None}, {"color": "orange", "value": 1}],
        }
    return {"defaults": defaults, "overrides": []}


def _options(panel: Panel) -> dict[str, Any]:
    if panel.kind == "stat":
        return {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "value_and_name" if panel.show_name else "auto",
        }
    if panel.kind == "heatmap":
        return {
            "calculate": False,
            "yAxis": {"unit": panel.unit, "axisPlacement": "left"},
            "cellValues": {"unit": "ops"},
            "color": {"mode": "scheme", "scheme": "Oranges", "exponent": 0.5, "steps": 64},
            "rowsFrame": {"layout": "auto"},
            "tooltip": {"show": True, "yHistogram": True},
            "legend": {"show": True},
        }
    if panel.kind == "state-timeline":
        return {
            "showValue": "auto",
            "mergeValues": True,
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "none"},
        }
    return {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }


def render(dashboard: Dashboard) -> dict[str, Any]:
    """The classic Grafana JSON model of one dashboard (schemaVersion 39, Grafana 10+)."""
    panels: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for row in dashboard.rows:
        panels.append(
            {
                "type": "row",
                "id": next_id,
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x = 0
        row_height = 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, row_height = 0, y + row_height, 0
            targets = [
                {
                    "datasource": DATASOURCE,
                    "expr": t.expr,
                    "legendFormat": t.legend,
                    "refId": chr(ord("A") + i),
                    "range": True,
                    "instant": False,
                    **({"format": "heatmap"} if t.heatmap else {}),
                }
                for i, t in enumerate(panel.targets)
            ]
            panels.append(
                {
                    "type": panel.kind,
                    "id": next_id,
                    "title": panel.title,
                    "description": panel.description,
                    "datasource": DATASOURCE,
                    "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
                    "targets": targets,
                    "fieldConfig": _field_config(panel),
                    "options": _options(panel),
                }
            )
            next_id += 1
            x += panel.width
            row_height = max(row_height, panel.height)
        y += row_height
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": list(dashboard.tags),
        "editable": True,
        "graphTooltip": 1,  # shared crosshair
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "title": "Dispatcher",
                "type": "dashboards",
                "tags": ["dispatcher"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {"list": _variables()},
        "panels": panels,
    }


def dashboard_json(dashboard: Dashboard) -> str:
    return json.dumps(render(dashboard), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def prometheus_rule(rules_text: str) -> str:
    """deploy/prometheus/rules/dispatcher.rules.yml wrapped as a prometheus-operator CRD."""
    groups = yaml.safe_load(rules_text)["groups"]
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "dispatcher",
            "labels": {
                "app.kubernetes.io/name": "dispatcher",
                "app.kubernetes.io/component": "monitoring",
            },
        },
        "spec": {"groups": groups},
    }
    header = (
        "# GENERATED by dashboards/generate.py from deploy/prometheus/rules/dispatcher.rules.yml;"
        " do not edit.\n"
        "# Add the label your Prometheus's ruleSelector matches (e.g. release: prometheus).\n"
    )
    return header + yaml.dump(resource, Dumper=_BlockDumper, sort_keys=False, width=100)


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (PromQL) as literal blocks, the way the rules file has them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def outputs() -> dict[Path, str]:
    """Every generated file and its content."""
    files = {DASHBOARD_DIR / f"{d.uid}.json": dashboard_json(d) for d in DASHBOARDS}
    files[PROMETHEUS_RULE] = prometheus_rule(RULES_FILE.read_text(encoding="utf-8"))
    return files


def markdown() -> str:
    """The layout table README.md shows (screenshots need a Grafana; this needs nothing)."""
    lines = ["| dashboard | row | panels |", "|---|---|---|"]
    for d in DASHBOARDS:
        for row in d.rows:
            titles = ", ".join(p.title for p in row.panels)
            lines.append(f"| {d.title} (`{d.uid}`) | {row.title} | {titles} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is out of date")
    parser.add_argument("--markdown", action="store_true", help="print the README layout table")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(), end="")
        return 0
    stale = []
    for path, content in outputs().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == content:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
    for path in stale:
        verb = "out of date" if args.check else "wrote"
        print(f"{verb}: {path.relative_to(ROOT)}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
