#!/usr/bin/env python3
"""Generates the Grafana dashboards (and the Kubernetes PrometheusRule) from one description.

The dashboards are described as plain data, one module per dashboard (overview.py, pools.py,
runtime.py): rows of panels, each panel a title, a unit and PromQL targets (model.py) written
against the metric contract (DESIGN.md, Part 2, "Metrics") and the recording rules in
deploy/prometheus/rules/dispatcher.rules.yml. Running this script writes

- dashboards/grafana/dispatcher-{overview,pools,runtime}.json  (classic Grafana JSON model,
  by render.py)
- deploy/kubernetes/prometheusrule.yaml  (the same rules for prometheus-operator users, by
  prometheusrule.py)

and `--check` exits 1 when a committed file differs from what it would write (tests run the
same comparison). `--markdown` prints the layout table that README.md shows.

Every panel uses the `datasource` variable; every query filters on `job` and `instance`, and
per-pool queries on `pool`, so one dashboard serves any number of deployments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if str(ROOT) not in sys.path:
    # `python dashboards/generate.py` puts dashboards/ on the path, not the root that holds
    # the `dashboards` package (the tests, which load this file by path, have it already).
    sys.path.insert(0, str(ROOT))

from dashboards import overview, pools, prometheusrule, render, runtime  # noqa: E402

DASHBOARD_DIR = ROOT / "dashboards" / "grafana"
RULES_FILE = ROOT / "deploy" / "prometheus" / "rules" / "dispatcher.rules.yml"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "prometheusrule.yaml"

DASHBOARDS = (overview.OVERVIEW, pools.POOLS, runtime.RUNTIME)


def outputs() -> dict[Path, str]:
    """Every generated file and its content."""
    files = {DASHBOARD_DIR / f"{d.uid}.json": render.dashboard_json(d) for d in DASHBOARDS}
    files[PROMETHEUS_RULE] = prometheusrule.prometheus_rule(RULES_FILE.read_text(encoding="utf-8"))
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
