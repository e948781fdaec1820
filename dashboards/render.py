"""The Grafana renderer: a Dashboard value to Grafana's classic JSON model (schemaVersion 39,
Grafana 10+).

Every dashboard gets the same variables (`datasource`, `job`, `instance`, `pool`), the same
annotations and the same dropdown of links to its siblings (tag `dispatcher`). Panels fill the
24-column grid left to right, wrapping when a line is full; each row starts a new line.
"""

from __future__ import annotations

import json
from typing import Any

from .model import Dashboard, Panel

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


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
    if panel.mappings:
        options = {
            str(value): {"text": text, "color": color, "index": i}
            for i, (value, text, color) in enumerate(panel.mappings)
        }
        defaults["mappings"] = [{"type": "value", "options": options}]
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
