"""The gateway's server span and HTTP metrics middleware, on a real Starlette app."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from krypton.telemetry.asgi import instrument_asgi

SERVICE = "asgitest"
TRACE_ID = "4bf92f3577b34da6a3ce929b0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


async def _item(request: Request) -> Response:
    return PlainTextResponse(request.path_params["item"])


async def _boom(request: Request) -> Response:
    msg = "handler bug"
    raise RuntimeError(msg)


async def _probe(request: Request) -> Response:
    return PlainTextResponse("ok")


def _app() -> Starlette:
    app = Starlette(
        routes=[
            Route("/items/{item}", _item),
            Route("/boom", _boom),
            Route("/healthz", _probe),
        ]
    )
    instrument_asgi(app, SERVICE)
    return app


def _client() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gateway")


def _count(template: str, status: str) -> float:
    value = REGISTRY.get_sample_value(
        "krypton_http_requests_total",
        {"service": SERVICE, "method": "GET", "route": template, "status": status},
    )
    return value or 0.0


async def test_a_request_continues_the_callers_trace_in_a_span_named_after_its_route(
    spans: InMemorySpanExporter,
) -> None:
    before = _count("/items/{item}", "200")
    async with _client() as client:
        response = await client.get(
            "/items/1.2.840.99",
            params={"PatientName": "DUPONT^Jeanne", "PatientID": "PID-77"},
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
        )
    assert response.status_code == 200
    (span,) = spans.get_finished_spans()
    assert span.name == "GET /items/{item}"  # the template: no UID in a span name
    assert span.kind is SpanKind.SERVER
    assert span.context is not None
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == PARENT_ID
    attributes = dict(span.attributes or {})
    assert attributes["http.route"] == "/items/{item}"
    assert attributes["http.response.status_code"] == 200
    assert attributes["http.request.method"] == "GET"
    # The query string (patient names and identifiers) is never recorded.
    assert all("PID-77" not in str(v) and "DUPONT" not in str(v) for v in attributes.values())
    assert _count("/items/{item}", "200") == before + 1


async def test_a_handler_bug_is_an_error_span_and_a_500_in_the_metrics(
    spans: InMemorySpanExporter,
) -> None:
    before = _count("/boom", "500")
    async with _client() as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    (span,) = spans.get_finished_spans()
    assert span.name == "GET /boom"
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]
    assert _count("/boom", "500") == before + 1


@pytest.mark.parametrize("path", ["/healthz", "/nowhere"])
async def test_probes_are_not_traced_and_unknown_paths_are_one_label(
    spans: InMemorySpanExporter, path: str
) -> None:
    before = _count("unmatched", "404")
    async with _client() as client:
        response = await client.get(path)
    if path == "/healthz":
        assert response.status_code == 200
        assert spans.get_finished_spans() == ()
    else:
        assert response.status_code == 404
        (span,) = spans.get_finished_spans()
        assert span.name == "GET unmatched"  # a bounded label, whatever the path
        assert _count("unmatched", "404") == before + 1
