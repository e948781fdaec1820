"""Observability of the engine: Prometheus metrics (`metrics`, the scrape-time `collector`
and its fast `exposition`), OpenTelemetry spans (`tracing`) and structured logs (`logs`).

Each wraps a delivery as middleware; they read the engine through small Protocols, never
the Dispatcher itself, so the engine can import them without a cycle.
"""
