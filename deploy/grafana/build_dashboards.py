"""Write the Grafana dashboards of Krypton (deploy/grafana/dashboards/*.json).

Run `python deploy/grafana/build_dashboards.py` after changing a panel; the JSON files are
committed, provisioned by Grafana from files, and checked by tests/deploy/test_dashboards.py
(valid JSON, every metric referenced is one the services export, files up to date).

Written by hand rather than with grafanalib (not a dependency): a panel is a title, a unit and
PromQL expressions, laid out two per row. Every service is a Prometheus job named after it
(`gateway`, `ingest`, ...), as deploy/prometheus/prometheus.yml scrapes them.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards"
PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}


@dataclass(frozen=True)
class Panel:
    """One time-series (or stat) panel."""

    title: str
    exprs: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""


def _q(expr: str, legend: str) -> tuple[str, str]:
    return (expr, legend)


def _p95(metric: str, by: str, where: str = "") -> str:
    return f"histogram_quantile(0.95, sum by (le, {by}) (rate({metric}_bucket{{{where}}}[$__rate_interval])))"


def _panel_json(panel: Panel, panel_id: int) -> dict[str, Any]:
    width = 12 if panel.kind == "timeseries" else 6
    per_row = 24 // width
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": PROMETHEUS,
        "gridPos": {
            "h": 8,
            "w": width,
            "x": ((panel_id - 1) % per_row) * width,
            "y": ((panel_id - 1) // per_row) * 8,
        },
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": PROMETHEUS, "expr": e, "legendFormat": leg}
            for i, (e, leg) in enumerate(panel.exprs)
        ],
    }


def dashboard(
    uid: str, title: str, panels: list[Panel], *, job_variable: bool = False
) -> dict[str, Any]:
    """A Grafana dashboard model (schema version 39) with `panels`."""
    variables: list[dict[str, Any]] = []
    if job_variable:
        variables.append(
            {
                "name": "job",
                "label": "service",
                "type": "query",
                "datasource": PROMETHEUS,
                "query": {"query": "label_values(process_cpu_seconds_total, job)", "refId": "jobs"},
                "definition": "label_values(process_cpu_seconds_total, job)",
                "refresh": 2,
                "includeAll": False,
                "multi": False,
            }
        )
    return {
        "uid": uid,
        "title": title,
        "tags": ["krypton"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [
            {"type": "dashboards", "tags": ["krypton"], "asDropdown": True, "title": "Krypton"}
        ],
        "panels": [_panel_json(p, i + 1) for i, p in enumerate(panels)],
    }


def overview() -> dict[str, Any]:
    """Platform overview: traffic, errors, latency, throughput and lag of every service."""
    return dashboard(
        "krypton-overview",
        "Krypton / Platform overview",
        [
            Panel(
                "HTTP requests by status",
                (
                    _q(
                        "sum by (status) (rate(krypton_http_requests_total[$__rate_interval]))",
                        "{{status}}",
                    ),
                ),
                "reqps",
            ),
            Panel(
                "HTTP server errors (5xx ratio)",
                (
                    _q(
                        'sum(rate(krypton_http_requests_total{status=~"5.."}[$__rate_interval]))'
                        " / sum(rate(krypton_http_requests_total[$__rate_interval]))",
                        "5xx",
                    ),
                ),
                "percentunit",
            ),
            Panel(
                "HTTP latency p95 by route",
                (_q(_p95("krypton_http_request_duration_seconds", "route"), "{{route}}"),),
                "s",
            ),
            Panel(
                "Ingested instances per second",
                (
                    _q(
                        "sum by (outcome) (rate(krypton_ingest_instances_total[$__rate_interval]))",
                        "{{outcome}}",
                    ),
                ),
                "ops",
            ),
            Panel(
                "JetStream consumer lag (pending messages)",
                (
                    _q(
                        "max by (stream, consumer) (krypton_jetstream_consumer_pending)",
                        "{{consumer}}",
                    ),
                ),
                description="Messages not yet delivered to each durable consumer: KEDA scales on it.",
            ),
            Panel(
                "Messages handled per second",
                (
                    _q(
                        "sum by (consumer, outcome) (rate(krypton_messages_total[$__rate_interval]))",
                        "{{consumer}} {{outcome}}",
                    ),
                    _q(
                        "sum by (app_name, status) (rate(faststream_received_processed_messages_total[$__rate_interval]))",
                        "{{app_name}} {{status}}",
                    ),
                ),
                "ops",
            ),
            Panel(
                "Service requests over NATS, p95 by subject",
                (_q(_p95("krypton_nats_request_duration_seconds", "subject"), "{{subject}}"),),
                "s",
            ),
            Panel(
                "Processes up",
                (_q("sum by (job) (up)", "{{job}}"),),
                kind="timeseries",
            ),
        ],
    )


def ingest() -> dict[str, Any]:
    """Ingest pipeline: STOW → INGEST stream → ingest → INSTANCES stream → index / render."""
    return dashboard(
        "krypton-ingest",
        "Krypton / Ingest pipeline",
        [
            Panel(
                "STOW-RS requests by status",
                (
                    _q(
                        'sum by (status) (rate(krypton_http_requests_total{method="POST", route=~"/dicomweb/studies.*"}[$__rate_interval]))',
                        "{{status}}",
                    ),
                ),
                "reqps",
            ),
            Panel(
                "STOW-RS latency",
                (
                    _q(
                        _p95(
                            "krypton_http_request_duration_seconds",
                            "route",
                            'method="POST", route=~"/dicomweb/studies.*"',
                        ),
                        "p95 {{route}}",
                    ),
                ),
                "s",
            ),
            Panel(
                "Instances per second by outcome",
                (
                    _q(
                        "sum by (outcome) (rate(krypton_ingest_instances_total[$__rate_interval]))",
                        "{{outcome}}",
                    ),
                ),
                "ops",
            ),
            Panel(
                "JetStream publish latency p95 (ack from the stream)",
                (
                    _q(
                        _p95(
                            "krypton_nats_request_duration_seconds",
                            "subject",
                            'subject=~"krypton.v1.(ingest|instance).*"',
                        ),
                        "{{subject}}",
                    ),
                ),
                "s",
            ),
            Panel(
                "Consumer lag",
                (_q("max by (consumer) (krypton_jetstream_consumer_pending)", "{{consumer}}"),),
            ),
            Panel(
                "Unacknowledged and redelivered messages",
                (
                    _q(
                        "max by (consumer) (krypton_jetstream_consumer_ack_pending)",
                        "ack pending {{consumer}}",
                    ),
                    _q(
                        "max by (consumer) (krypton_jetstream_consumer_redelivered)",
                        "redelivered {{consumer}}",
                    ),
                ),
            ),
            Panel(
                "Messages nak'ed or terminated",
                (
                    _q(
                        'sum by (consumer, outcome) (rate(krypton_messages_total{outcome=~"nak|term"}[$__rate_interval]))',
                        "{{consumer}} {{outcome}}",
                    ),
                ),
                "ops",
            ),
            Panel(
                "Batch duration p95 by consumer",
                (_q(_p95("krypton_message_batch_duration_seconds", "consumer"), "{{consumer}}"),),
                "s",
            ),
        ],
    )


def retrieval() -> dict[str, Any]:
    """Retrieval latency: QIDO-RS, WADO-RS, rendered images, and the services behind them."""
    reads = 'method="GET", route=~"/dicomweb/.*"'
    return dashboard(
        "krypton-retrieval",
        "Krypton / Retrieval latency",
        [
            Panel(
                "Read requests per second by route",
                (
                    _q(
                        f"sum by (route) (rate(krypton_http_requests_total{{{reads}}}[$__rate_interval]))",
                        "{{route}}",
                    ),
                ),
                "reqps",
            ),
            Panel(
                "Read latency p95 by route",
                (_q(_p95("krypton_http_request_duration_seconds", "route", reads), "{{route}}"),),
                "s",
            ),
            Panel(
                "QIDO-RS latency percentiles",
                tuple(
                    _q(
                        f"histogram_quantile({q}, sum by (le) (rate(krypton_http_request_duration_seconds_bucket"
                        f'{{method="GET", route=~"/dicomweb/(studies|series|instances)"}}[$__rate_interval])))',
                        f"p{round(q * 100)}",
                    )
                    for q in (0.5, 0.95, 0.99)
                ),
                "s",
            ),
            Panel(
                "Read errors by status",
                (
                    _q(
                        f'sum by (status) (rate(krypton_http_requests_total{{{reads}, status=~"[45].."}}[$__rate_interval]))',
                        "{{status}}",
                    ),
                ),
                "reqps",
            ),
            Panel(
                "Gateway → service request latency p95",
                (
                    _q(
                        _p95(
                            "krypton_nats_request_duration_seconds",
                            "subject",
                            'subject=~"krypton.v1.svc.*"',
                        ),
                        "{{subject}}",
                    ),
                ),
                "s",
            ),
            Panel(
                "Service handler latency p95",
                (
                    _q(
                        _p95(
                            "faststream_received_processed_messages_duration_seconds",
                            "app_name, handler",
                        ),
                        "{{app_name}} {{handler}}",
                    ),
                ),
                "s",
            ),
            Panel(
                "Cache hit ratio",
                (
                    _q(
                        'sum by (cache) (rate(krypton_cache_lookups_total{result="hit"}[$__rate_interval]))'
                        " / sum by (cache) (rate(krypton_cache_lookups_total[$__rate_interval]))",
                        "{{cache}}",
                    ),
                ),
                "percentunit",
            ),
            Panel(
                "Service request timeouts and errors",
                (
                    _q(
                        'sum by (subject, outcome) (rate(krypton_nats_requests_total{outcome!="ok"}[$__rate_interval]))',
                        "{{subject}} {{outcome}}",
                    ),
                ),
                "ops",
            ),
        ],
    )


def per_service() -> dict[str, Any]:
    """One service at a time (variable `job`): resources, traffic, errors."""
    job = 'job="$job"'
    return dashboard(
        "krypton-service",
        "Krypton / Per service",
        [
            Panel(
                "CPU",
                (
                    _q(
                        f"sum by (instance) (rate(process_cpu_seconds_total{{{job}}}[$__rate_interval]))",
                        "{{instance}}",
                    ),
                ),
                "percentunit",
            ),
            Panel(
                "Resident memory",
                (_q(f"process_resident_memory_bytes{{{job}}}", "{{instance}}"),),
                "bytes",
            ),
            Panel(
                "HTTP requests by status",
                (
                    _q(
                        f"sum by (status) (rate(krypton_http_requests_total{{{job}}}[$__rate_interval]))",
                        "{{status}}",
                    ),
                ),
                "reqps",
            ),
            Panel(
                "Messages handled by outcome",
                (
                    _q(
                        f"sum by (consumer, outcome) (rate(krypton_messages_total{{{job}}}[$__rate_interval]))",
                        "{{consumer}} {{outcome}}",
                    ),
                    _q(
                        f"sum by (handler, status) (rate(faststream_received_processed_messages_total{{{job}}}[$__rate_interval]))",
                        "{{handler}} {{status}}",
                    ),
                    _q(
                        f"sum by (subject, status) (rate(krypton_nats_served_total{{{job}}}[$__rate_interval]))",
                        "{{subject}} {{status}}",
                    ),
                ),
                "ops",
            ),
            Panel(
                "Requests served p95 (index searches and locates)",
                (_q(_p95("krypton_nats_serve_duration_seconds", "subject", job), "{{subject}}"),),
                "s",
            ),
            Panel(
                "Handler exceptions",
                (
                    _q(
                        f"sum by (handler, exception_type) (rate(faststream_received_processed_messages_exceptions_total{{{job}}}[$__rate_interval]))",
                        "{{handler}} {{exception_type}}",
                    ),
                ),
                "ops",
            ),
            Panel(
                "Outgoing NATS requests p95",
                (_q(_p95("krypton_nats_request_duration_seconds", "subject", job), "{{subject}}"),),
                "s",
            ),
            Panel(
                "Messages being processed",
                (
                    _q(
                        f"sum by (handler) (faststream_received_messages_in_process{{{job}}})",
                        "{{handler}}",
                    ),
                ),
            ),
            Panel(
                "Garbage collections",
                (
                    _q(
                        f"sum by (generation) (rate(python_gc_collections_total{{{job}}}[$__rate_interval]))",
                        "gen {{generation}}",
                    ),
                ),
                "ops",
            ),
        ],
        job_variable=True,
    )


DASHBOARDS = {
    "overview.json": overview,
    "ingest.json": ingest,
    "retrieval.json": retrieval,
    "service.json": per_service,
}


def render() -> dict[str, str]:
    """Each dashboard file's name and JSON text."""
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main() -> int:
    """Write every dashboard file."""
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        sys.stdout.write(f"wrote {OUT / name}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
