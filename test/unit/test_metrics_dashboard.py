"""The Grafana dashboard (k8s/grafana/checkout-dashboard.json) and the README speak of the
metrics the code defines, and every metric the code defines is on the dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from common.observability import metrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "k8s" / "grafana" / "checkout-dashboard.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
PROMQL_WORDS = {"sum", "by", "rate", "increase", "histogram_quantile", "le"}


def defined() -> dict[str, MetricWrapperBase]:
    return {m._name: m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}


def exposed_names() -> set[str]:
    return {
        name + suffix
        for name, metric in defined().items()
        for suffix in SUFFIXES[str(metric._type)]
    }


def expressions() -> list[str]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def names_in(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', "", expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    words = set(re.findall(r"[a-z_][a-z0-9_]*", without_ranges))
    labels = {label for m in defined().values() for label in m._labelnames}
    return words - PROMQL_WORDS - labels


def test_dashboard_queries_only_defined_metrics() -> None:
    exposed = exposed_names()
    for expr in expressions():
        unknown = names_in(expr) - exposed
        assert not unknown, (expr, unknown)


def test_every_metric_is_on_the_dashboard() -> None:
    used = set().union(*(names_in(expr) for expr in expressions()))
    for name, metric in defined().items():
        assert any(name + suffix in used for suffix in SUFFIXES[str(metric._type)]), name


def test_every_metric_is_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name, metric in defined().items():
        shown = name + SUFFIXES[str(metric._type)][0] if metric._type == "counter" else name
        assert f"`{shown}" in readme, shown
