"""Grafana dashboards: valid JSON, provisioned, up to date, and querying only metrics that exist.

The exported metric names come from the registry the services use: importing the metrics
module and building a FastStream broker registers every family a Krypton process can export.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import krypton.telemetry.metrics  # noqa: F401  (registers the krypton_* families)
from krypton.bus.connect import make_broker

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
# Series Prometheus itself makes for every scrape target.
PROMETHEUS_BUILTIN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created", ""),
    "gauge": ("",),
    "info": ("_info",),
}
# PromQL words that look like metric names but are functions, keywords or label names.
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_dashboards", GRAFANA / "build_dashboards.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def exported_series() -> set[str]:
    """Every series name a Krypton process can export."""
    make_broker("nats://127.0.0.1:4222", "probe")  # registers the faststream_* families
    names: set[str] = set()
    for family in REGISTRY.collect():
        for suffix in _SUFFIXES[family.type]:
            names.add(family.name + suffix)
    return names


def referenced_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers not followed by `(`, outside braces,
    `by (...)` lists and `[...]` ranges."""
    stripped = re.sub(r"\{[^}]*\}", "", expr)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    stripped = re.sub(r"\b(by|without)\s*\([^)]*\)", "", stripped)
    names = set()
    for match in _IDENT.finditer(stripped):
        rest = stripped[match.end() :].lstrip()
        if rest.startswith("("):
            continue  # a function
        names.add(match.group())
    return names


def _targets(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def test_the_four_dashboards_exist_and_are_up_to_date() -> None:
    rendered = _builder().render()
    assert sorted(rendered) == ["ingest.json", "overview.json", "retrieval.json", "service.json"]
    for name, text in rendered.items():
        assert (GRAFANA / "dashboards" / name).read_text() == text, (
            f"{name} is stale: run python deploy/grafana/build_dashboards.py"
        )


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboards_are_valid_and_query_only_exported_metrics(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"].startswith("krypton-")
    assert dashboard["panels"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exported = exported_series() | PROMETHEUS_BUILTIN
    for expr in _targets(dashboard):
        referenced = referenced_metrics(expr)
        assert referenced, expr
        unknown = referenced - exported
        assert not unknown, f"{path.name}: {expr!r} uses metrics nobody exports: {unknown}"


def test_the_metric_name_extraction_sees_through_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{method="GET", x=~"y.*"}[5m])))'
        " / sum(rate(b_total[$__rate_interval]))"
    )
    assert referenced_metrics(expr) == {"a_bucket", "b_total"}


def test_grafana_provisions_the_dashboards_that_compose_mounts() -> None:
    (provider,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "krypton.yaml").read_text()
    )["providers"]
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    volumes = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in volumes
    assert provider["type"] == "file"
