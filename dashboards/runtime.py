"""The Runtime dashboard: is the process healthy? asyncio tasks, event-loop lag, threads, CPU,
memory, the store's operations and HTTP traffic."""

from __future__ import annotations

from .model import RATE, Dashboard, Panel, Row, T, quantile, sel

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
