"""The HTTP API: routes and handlers (`api`, `operations`), request parsing (`ingest`,
`cloudevent`), the one middleware for auth and errors, problem+json, the OpenAPI document,
and the HTTP side of observability (`/metrics`, request metrics and spans, `/debug/tasks`).

It calls the Dispatcher's public methods only, like the console, and never imports it.
"""
