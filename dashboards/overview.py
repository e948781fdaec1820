"""The Overview dashboard: is work flowing? Ingest, deliveries, latency, backlog, failures
and the DLQ, across the selected pools."""

from __future__ import annotations

from .model import RATE, Dashboard, Panel, Row, T, quantile, sel

#: The oldest-message-age objective (seconds) drawn on the overview; the alert uses the same.
AGE_SLO = 300

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
