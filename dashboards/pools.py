"""The Pools dashboard: per pool, saturation, throttle and pause next to their effect, the
receiver protection (circuit breaker, concurrency in force), queue waits and delivery
time."""

from __future__ import annotations

from .model import RATE, Dashboard, Panel, Row, T, quantile, sel

POOLS = Dashboard(
    uid="dispatcher-pools",
    title="Dispatcher / Pools",
    description="Per pool: saturation, throttle and pause next to their effect, receiver "
    "protection, waits, delivery time.",
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
            "Receiver protection",
            (
                Panel(
                    "Circuit state",
                    "none",
                    (T(f"max by (pool) (dispatcher_pool_circuit_state{sel()})", "{{pool}}"),),
                    "Each pool's circuit breaker, worst instance: closed, half-open (probing) "
                    "or open (no attempts; messages wait without spending attempts). "
                    "DispatcherCircuitOpen fires when it stays out of closed for 5 minutes.",
                    kind="state-timeline",
                    mappings=(
                        (0, "closed", "green"),
                        (1, "half-open", "orange"),
                        (2, "open", "red"),
                    ),
                ),
                Panel(
                    "Circuit openings",
                    "short",
                    (
                        T(
                            "sum by (pool) (increase(dispatcher_circuit_opened_total"
                            f"{sel()}[{RATE}]))",
                            "{{pool}}",
                        ),
                    ),
                    "Times a circuit opened (a failed probe opens it again), all instances.",
                ),
                Panel(
                    "Concurrency in force",
                    "short",
                    (
                        T(
                            f"max by (pool, instance) (dispatcher_pool_concurrency_limit{sel()})",
                            "{{pool}} {{instance}}",
                        ),
                    ),
                    "The effective concurrency of each process: the configured one, or with "
                    "adaptive concurrency the limit found between min_concurrency and "
                    "concurrency; it falls on 429s, 503s, timeouts and slow answers.",
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
