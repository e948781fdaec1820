"""Observability of the engine: Prometheus metrics (`metrics`, the scrape-time `collector`
and its fast `exposition`), OpenTelemetry spans (`tracing`) and structured logs (`logs`).

They watch deliveries without costing each attempt a call where they can: metrics count
the batches of outcomes the acker wrote, and log records read the job a worker attempts
from a context variable set once per worker; only tracing (and the exemplars it makes)
wraps each attempt as middleware, and only while traces record. They read the engine
through small Protocols, never the Dispatcher itself, so the engine can import them without
a cycle.
"""
