"""What the tests share, one module per thing: `receiver` (a recording webhook receiver),
`run` (a running Dispatcher, polling), `api` (the API tests' settings and tokens), `console`
(the console tests' settings, login and DLQ filling), `metrics` (reading /metrics) and
`monitoring` (dashboards, rules and Prometheus). Values to build live in tests/factories.py."""
