"""The dashboards' value types and the PromQL helpers every dashboard's queries are built with.

A dashboard is rows of panels; a panel is a title, a unit, a description and PromQL targets.
These are plain frozen values (a panel's kind and unit are Grafana's ids): render.py turns
them into Grafana's JSON model, generate.py into the README's layout table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Grafana's rate window, wide enough for at least four scrapes whatever the scrape interval.
RATE = "$__rate_interval"


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
    #: value -> (text, colour): what a state-timeline shows for each value of a state gauge
    mappings: tuple[tuple[int, str, str], ...] = ()


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
    """A target, under a one-letter name because every panel lists its targets inline."""
    return Target(expr, legend, heatmap)
