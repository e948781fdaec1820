"""The Grafana dashboards: generated from dashboards/generate.py and committed unchanged; the
Grafana conventions users rely on (a datasource variable on every panel, job/instance/pool
filters, stable uids, units); every metric they read exists in /metrics, and every metric of
the contract is on a panel. tests/test_prometheus_e2e.py runs the queries themselves."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.app import create_app

from . import factories
from .kit.monitoring import (
    CONTRACT,
    ROOT,
    base_name,
    dashboards,
    generator,
    metric_names,
    panel_queries,
    panels,
    promtool,
    recorded_names,
    recorded_refs,
    rule_queries,
    substitute,
)

UIDS = {"dispatcher-overview", "dispatcher-pools", "dispatcher-runtime"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: Grafana unit ids the dashboards may use (packages/grafana-data/src/valueFormats/categories.ts).
UNITS = {"s", "ms", "mps", "ops", "reqps", "percentunit", "short", "bytes", "bool_yes_no", "none"}
#: Series that are not ours but that the Runtime dashboard reads (prometheus_client's process
#: collector, on Linux).
NOT_DISPATCHER = {"process_cpu_seconds_total", "process_resident_memory_bytes"}


def test_committed_files_are_what_the_generator_writes() -> None:
    stale = [
        str(path.relative_to(ROOT))
        for path, content in generator().outputs().items()
        if not path.exists() or path.read_text(encoding="utf-8") != content
    ]
    assert not stale, f"run `python dashboards/generate.py` and commit: {stale}"


def test_readme_shows_the_layout_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert generator().markdown() in readme, (
        "README.md's Dashboards table is stale: paste `python dashboards/generate.py --markdown`"
    )


def test_dashboards_have_stable_uids_and_the_variables() -> None:
    found = dashboards()
    assert {d["uid"] for d in found.values()} == UIDS
    assert set(found) == UIDS  # the file is named after the uid
    for uid, d in found.items():
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert list(variables)[:4] == ["datasource", "job", "instance", "pool"], uid
        ds = variables["datasource"]
        assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
        for name in ("job", "instance", "pool"):
            assert variables[name]["type"] == "query"
            assert variables[name]["datasource"] == DATASOURCE
            assert "label_values(" in variables[name]["query"]
        assert variables["instance"]["includeAll"]
        assert variables["pool"]["includeAll"]


def test_every_panel_uses_the_datasource_variable_and_has_a_unit() -> None:
    for uid, d in dashboards().items():
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{uid}: duplicate panel ids"
        for panel in panels(d):
            where = f"{uid} / {panel['title']}"
            assert panel["datasource"] == DATASOURCE, where
            assert panel["targets"], where
            assert all(t["datasource"] == DATASOURCE for t in panel["targets"]), where
            assert panel["fieldConfig"]["defaults"].get("unit") in UNITS, where
            assert panel.get("description"), where
            if panel["type"] == "heatmap":
                assert panel["options"]["yAxis"]["unit"] in UNITS, where
                assert all(t.get("format") == "heatmap" for t in panel["targets"]), where


def test_panels_do_not_overlap() -> None:
    for uid, d in dashboards().items():
        cells: Counter[tuple[int, int]] = Counter()
        for panel in d["panels"]:
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24, f"{uid} / {panel['title']}"
            cells.update(
                (x, y)
                for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])
            )
        assert max(cells.values()) == 1, f"{uid}: panels overlap"


def test_every_query_filters_on_the_variables() -> None:
    recorded = recorded_names()
    for q in panel_queries():
        for name in metric_names(q.expr) | recorded_refs(q.expr) | {"up"}:
            if name in recorded:
                needs_pool = name.startswith("instance_pool:")
            else:
                needs_pool = "pool" in CONTRACT.get(base_name(name), ("", ()))[1]
            # Every selector of the name in the query carries the filters.
            for m in re.finditer(rf"(?<![\w:]){re.escape(name)}(?![\w:])", q.expr):
                rest = q.expr[m.end() :]
                selector = rest[: rest.index("}") + 1] if rest.startswith("{") else ""
                assert 'job=~"$job"' in selector, (q.where, name)
                assert 'instance=~"$instance"' in selector, (q.where, name)
                assert needs_pool == ('pool=~"$pool"' in selector), (q.where, name)


def test_every_contract_metric_is_on_a_panel() -> None:
    on_panels = {base_name(n) for q in panel_queries() for n in metric_names(q.expr)}
    # A recording rule a panel reads counts for the metrics it is made of.
    used = {r for q in panel_queries() for r in recorded_refs(q.expr)}
    for q in rule_queries():
        if q.where.removeprefix("record ") in used:
            on_panels |= {base_name(n) for n in metric_names(q.expr)}
    missing = sorted(set(CONTRACT) - on_panels)
    assert not missing, f"contract metrics on no panel: {missing}"
    # And directly, not only through a rule, for everything but the ratio inputs.
    direct = {base_name(n) for q in panel_queries() for n in metric_names(q.expr)}
    assert set(CONTRACT) - direct <= {"dispatcher_rate_limit_wait_seconds_total"}


def test_panels_read_only_defined_recording_rules() -> None:
    defined = recorded_names()
    for q in panel_queries() + rule_queries():
        assert recorded_refs(q.expr) <= defined, q.where


def test_metric_names_are_the_contract_ones() -> None:
    for q in panel_queries() + rule_queries():
        for name in metric_names(q.expr):
            assert base_name(name) in CONTRACT or name in NOT_DISPATCHER, (q.where, name)


@pytest.fixture
def settings() -> Any:
    return factories.settings(
        auth={"tokens": [{"name": "t", "token": "tok", "scopes": ["read"]}]},
        pools={"email": {"rate": 5, "sink": {"type": "demo"}}, "sms": {"sink": {"type": "demo"}}},
        routes=[{"match": "a.>", "pools": ["email", "sms"]}],
    )


async def test_every_metric_named_in_a_dashboard_or_rule_is_in_metrics(
    aiohttp_client: Any, settings: Any
) -> None:
    """Straight after start, before any message: every series the dashboards and rules read
    is exported (labelled series known from config start at 0). HTTP series appear with the
    first request of their kind, so one request goes first."""
    client = await aiohttp_client(create_app(settings))
    assert (await client.get("/healthz")).status == 200
    response = await client.get("/metrics")
    assert response.status == 200
    text = await response.text()
    exported = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    named = {n for q in panel_queries() + rule_queries() for n in metric_names(q.expr)}
    missing = sorted(n for n in named if n not in exported)
    assert not missing, f"named in dashboards or rules, absent from /metrics: {missing}"
    # Every contract metric too, with exactly its labels.
    for family in text_string_to_metric_families(text):
        if family.name in CONTRACT or family.name + "_total" in CONTRACT:
            name = family.name if family.name in CONTRACT else family.name + "_total"
            _, labels = CONTRACT[name]
            for sample in family.samples:
                assert set(sample.labels) - {"le"} == set(labels), (name, sample)


def test_every_panel_query_parses(tmp_path: Path) -> None:
    """Each query, variables substituted as Grafana would, is valid PromQL (promtool parses
    it as a recording rule). The end-to-end test then runs them against real data."""
    grafana = {"__rate_interval": "1m", "__interval": "15s", "job": "dispatcher"}
    grafana |= {"instance": ".+", "pool": ".+", "datasource": "prometheus"}
    group = {
        "name": "panels",
        "rules": [
            {"record": f"panel:query_{i}:check", "expr": substitute(q.expr, grafana)}
            for i, q in enumerate(panel_queries())
        ],
    }
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}), encoding="utf-8")
    assert "SUCCESS" in promtool("check", "rules", path)
