"""Reading /metrics in tests: every sample by (name, labels), parsed by prometheus_client."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def scrape(client: TestClient[Any, Any]) -> tuple[str, Samples]:
    response = await client.get("/metrics")
    assert response.status == 200
    text = await response.text()
    return text, parse(text)
