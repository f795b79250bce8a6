"""End to end: one request, one connected trace across processes; metrics on every service.

The platform runs as real processes exporting spans over OTLP/HTTP (the standard `OTEL_*`
variables) to a receiver started by the test, and serving Prometheus metrics on free ports.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from krypton.cli.platform import Platform, PlatformConfig
from krypton.dicom.testfiles import pydicom_test_files
from krypton.testing.otlp import OtlpReceiver, ReceivedSpan

from .conftest import Running
from .helpers import stow, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.nats, pytest.mark.postgres]

STRUCTURE = "330781196"
STUDY = "1.2.826.0.1.3680043.8.498.770001"
PATIENT_ID = "TRACE-PATIENT-77"  # must never appear in a span


@pytest.fixture(scope="module")
def receiver() -> AsyncIterator[OtlpReceiver]:
    otlp = OtlpReceiver()
    yield otlp  # type: ignore[misc]
    otlp.close()


@pytest.fixture(scope="module")
async def traced(
    tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver
) -> AsyncIterator[Running]:
    state: Path = tmp_path_factory.mktemp("traced")
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # milliseconds: spans arrive while the test waits
    }
    p = Platform(
        PlatformConfig(
            state_dir=state, http_port=0, nats_port=0, issuer_port=0, extra_env=env, metrics="free"
        ),
        colour=False,
    )
    async with p.running(timeout=90):
        yield Running(p)


def _instance() -> bytes:
    path = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, STUDY + ".1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = STUDY + ".1.1"
    ds.PatientID = PATIENT_ID
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _root(receiver: OtlpReceiver, name: str) -> ReceivedSpan | None:
    roots = [s for s in receiver.snapshot() if s.service == "krypton-gateway" and s.name == name]
    return roots[-1] if roots else None


async def _wait_trace(
    receiver: OtlpReceiver,
    name: str,
    complete: Callable[[list[ReceivedSpan]], bool],
    timeout: float = 60.0,
) -> list[ReceivedSpan]:
    """The trace of the gateway's last `name` span, once it is whole and `complete` holds.

    Whole: every parent arrived (a parent span ends, and is exported, after its children).
    """
    deadline = time.monotonic() + timeout
    spans: list[ReceivedSpan] = []
    while time.monotonic() < deadline:
        root = _root(receiver, name)
        if root is not None:
            spans = receiver.trace(root.trace_id)
            ids = {s.span_id for s in spans}
            if complete(spans) and all(not s.parent_id or s.parent_id in ids for s in spans):
                return spans
        await asyncio.sleep(0.2)
    ids = {s.span_id for s in spans}
    names = sorted(
        {f"{s.service}: {s.name}{'' if s.parent_id in ids else ' (orphan)'}" for s in spans}
    )
    pytest.fail(f"trace of {name!r} incomplete after {timeout} s: {names}")


def _ancestry(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[str]:
    """Services from `span` up to its root, following parent ids."""
    chain = [span.service]
    while span.parent_id:
        span = by_id[span.parent_id]
        chain.append(span.service)
    return chain


def _assert_connected(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if not s.parent_id]
    orphans = [s.name for s in spans if s.parent_id and s.parent_id not in by_id]
    assert orphans == [], f"spans whose parent is not in the trace: {orphans}"
    assert len(roots) == 1, [r.name for r in roots]
    assert roots[0].service == "krypton-gateway"
    return by_id


def _has_sql(service: str) -> Callable[[list[ReceivedSpan]], bool]:
    return lambda spans: any(
        s.service == service and s.attributes.get("db.system.name") == "postgresql" for s in spans
    )


async def test_stow_and_qido_each_make_one_connected_trace(
    traced: Running, receiver: OtlpReceiver
) -> None:
    async with httpx.AsyncClient(timeout=60.0) as http:
        response = await stow(http, traced.url, traced.producer(STRUCTURE), [_instance()])
        assert response.status_code == 200, response.text

        def stow_complete(spans: list[ReceivedSpan]) -> bool:
            return _has_sql("krypton-ingest")(spans) and _has_sql("krypton-index")(spans)

        spans = await _wait_trace(receiver, "POST /dicomweb/studies", stow_complete)
        by_id = _assert_connected(spans)
        # gateway → NATS → ingest → PostgreSQL, and on through instance.stored → index → SQL.
        index_sql = next(
            s for s in spans if s.service == "krypton-index" and "db.system.name" in s.attributes
        )
        chain = _ancestry(index_sql, by_id)
        assert chain[0] == "krypton-index"
        assert "krypton-ingest" in chain
        assert chain[-1] == "krypton-gateway"
        assert any(
            s.service == "krypton-ingest" and s.name.startswith("object_store") for s in spans
        )
        assert any(s.attributes.get("messaging.system") == "nats" for s in spans)

        admin = traced.admin()
        found = await wait_for(
            http, traced.url, "studies", admin, 1, StudyInstanceUID=STUDY, PatientID=PATIENT_ID
        )
        assert len(found) == 1
        spans = await _wait_trace(receiver, "GET /dicomweb/studies", _has_sql("krypton-index"))
        by_id = _assert_connected(spans)
        qido_sql = next(
            s for s in spans if s.service == "krypton-index" and "db.system.name" in s.attributes
        )
        assert _ancestry(qido_sql, by_id)[-1] == "krypton-gateway"

    # QIDO parameters hold patient identifiers: they never reach the trace store.
    for span in receiver.snapshot():
        assert PATIENT_ID not in span.name
        assert all(PATIENT_ID not in str(v) for v in span.attributes.values()), span.name


async def _scrape(http: httpx.AsyncClient, port: int) -> dict[str, float]:
    """Every sample of one process's /metrics, summed over labels, by sample name."""
    response = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


async def test_every_service_serves_prometheus_metrics(traced: Running) -> None:
    ports = traced.platform.metrics_ports
    assert set(ports) == {"gateway", "ingest", "index", "authorize", "render", "audit"}
    async with httpx.AsyncClient(timeout=10.0) as http:
        # Traffic of our own, so the counters below have something to count.
        r = await stow(http, traced.url, traced.producer(STRUCTURE), [_instance()])
        assert r.status_code == 200, r.text
        await wait_for(http, traced.url, "studies", traced.admin(), 1, StudyInstanceUID=STUDY)
        deadline = time.monotonic() + 60.0
        while True:
            scraped = {name: await _scrape(http, port) for name, port in ports.items()}
            # The lag pollers run every 10 s: wait for their first round too.
            ready = "krypton_jetstream_consumer_pending" in scraped["index"]
            if ready or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    assert scraped["gateway"]["krypton_http_requests_total"] >= 2
    assert scraped["gateway"]["krypton_nats_requests_total"] >= 1
    assert scraped["ingest"]["krypton_ingest_instances_total"] >= 1
    assert "krypton_jetstream_consumer_pending" in scraped["ingest"]
    assert "krypton_jetstream_consumer_pending" in scraped["index"]
    assert scraped["index"]["krypton_messages_total"] >= 1
    assert scraped["index"]["faststream_received_messages_total"] >= 1
    assert "krypton_cache_lookups_total" in scraped["authorize"]
    assert "krypton_cache_lookups_total" in scraped["render"]
    for name, samples in scraped.items():
        assert "process_cpu_seconds_total" in samples, name
