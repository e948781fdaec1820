"""The Grafana dashboards and the Kubernetes PrometheusRule, described in Python.

`python dashboards/generate.py` writes them (grafana/*.json and
deploy/kubernetes/prometheusrule.yaml); see its docstring. Not part of the installed
distribution: a tool of this repository, like the tests.
"""
