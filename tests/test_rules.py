"""The Prometheus rules and scrape config: `promtool check rules`, `promtool test rules` (one
case per alert, in deploy/prometheus/tests/), `promtool check config`; and what every alert
carries for the person it wakes: a severity, a summary, a description and a runbook that
exists."""

from __future__ import annotations

import re

import pytest

from .kit.monitoring import PROMETHEUS_CONFIG, ROOT, RULE_TESTS, RULES, promtool, rules

RUNBOOKS = ROOT / "deploy" / "prometheus" / "runbooks.md"
#: What issue 6 asks the alerts to cover, by alert name.
REQUIRED_ALERTS = {
    "DispatcherOldestMessageTooOld",  # oldest message age above the SLO
    "DispatcherBacklogGrowing",
    "DispatcherDeadLetters",  # DLQ inflow
    "DispatcherHighFailureRatio",
    "DispatcherPoolSaturated",
    "DispatcherEventLoopLag",
    "DispatcherStoreUnavailable",  # store errors: ingest refused with 503
    "DispatcherInstanceDown",
}


def test_promtool_check_rules() -> None:
    assert "SUCCESS" in promtool("check", "rules", RULES)


def test_promtool_test_rules() -> None:
    assert "SUCCESS" in promtool("test", "rules", RULE_TESTS)


def test_promtool_check_config() -> None:
    """The compose Prometheus config, with the rule files it loads (relative paths)."""
    out = promtool("check", "config", PROMETHEUS_CONFIG)
    assert "1 rule files found" in out


def test_every_alert_has_severity_annotations_and_a_runbook() -> None:
    anchors = {
        re.sub(r"[^a-z0-9-]", "", line[3:].strip().lower().replace(" ", "-"))
        for line in RUNBOOKS.read_text(encoding="utf-8").splitlines()
        if line.startswith("## ")
    }
    alerts = [r for r in rules() if "alert" in r]
    assert {a["alert"] for a in alerts} >= REQUIRED_ALERTS
    for alert in alerts:
        name = alert["alert"]
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        annotations = alert["annotations"]
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        url = annotations["runbook_url"]
        assert url.startswith("https://"), name
        assert url.endswith("runbooks.md#" + name.lower()), name
        assert name.lower() in anchors, f"{name}: no section in {RUNBOOKS.name}"
        assert "for" in alert, f"{name}: fires on a single evaluation"


def test_every_alert_has_a_promtool_case() -> None:
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text(encoding="utf-8")))
    assert {r["alert"] for r in rules() if "alert" in r} <= tested


@pytest.mark.parametrize("record", sorted({r["record"] for r in rules() if "record" in r}))
def test_recording_rules_follow_the_naming_convention(record: str) -> None:
    """level:metric:operations (prometheus.io/docs/practices/rules), keeping the labels the
    dashboards filter on."""
    level, metric, _ops = record.split(":")
    assert metric.startswith("dispatcher_")
    assert level in {"instance", "instance_pool", "instance_operation"}
