"""The HTTP API: the route table (`routes`) and the OpenAPI document rendered from it
(`openapi`), handlers (`api`, `operations`), request parsing (`ingest`, `cloudevent`),
response bodies (`views`), the one middleware for auth and errors, problem+json, and the
HTTP side of observability (`/metrics`, request metrics and spans, `/debug/tasks`).

It calls the Dispatcher's public methods only, like the console, and never imports it.
"""
