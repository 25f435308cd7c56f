"""One trace from the client's traceparent through ingest, the Kafka record,
the dispatcher and persist to the ClickHouse insert and the persisted event."""

from __future__ import annotations

import copy
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from pulse import telemetry
from tests.conftest import ROOT, make_event, wait_persisted


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    telemetry.add_span_processor(processor)
    yield exporter
    telemetry.remove_span_processor(processor)


def new_traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def of_trace(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]


def wait_for_span(exporter: InMemorySpanExporter, trace_id: str, name: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(s.name == name for s in of_trace(exporter, trace_id)):
        assert time.monotonic() < deadline, f"no span {name!r} in trace {trace_id}"
        time.sleep(0.05)


def by_name(found: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    out: dict[str, ReadableSpan] = {}
    for span in found:
        assert span.name not in out, f"span {span.name} appears twice in one single-batch trace"
        out[span.name] = span
    return out


def parent_of(span: ReadableSpan) -> str:
    assert span.parent is not None, f"{span.name} has no parent"
    return format(span.parent.span_id, "016x")


def span_id(span: ReadableSpan) -> str:
    return format(span.context.span_id, "016x")


def test_one_trace_from_client_through_kafka_to_clickhouse(pulse: Any, project: Any,
                                                          spans: InMemorySpanExporter) -> None:
    traceparent, trace_id, client_span = new_traceparent()
    answer = project.api.post("/v1/events", {"events": [make_event(), make_event()]}, headers={"traceparent": traceparent})
    assert answer.status == 202, answer.body
    wait_persisted(pulse)
    deliver = next(w.sub.name for w in pulse.dispatcher.workers if pulse.settings.raw_topic in w.sub.topics)
    deliver += " deliver"
    wait_for_span(spans, trace_id, deliver)

    found = by_name(of_trace(spans, trace_id))
    topic = pulse.settings.raw_topic
    chain = [
        ("ingest POST events", None),
        (f"{topic} publish", "ingest POST events"),
        (deliver, f"{topic} publish"),
        ("persist POST ce-ingested", deliver),
        ("persist batch", "persist POST ce-ingested"),
        ("postgres ledger claim", "persist batch"),
        ("clickhouse insert", "persist batch"),
    ]
    assert {name for name, _ in chain} <= set(found), sorted(found)
    for name, parent in chain:
        expected_parent = client_span if parent is None else span_id(found[parent])
        assert parent_of(found[name]) == expected_parent, f"{name} should be a child of {parent or 'the client'}"
    assert found["ingest POST events"].attributes["pulse.project_id"] == project.project_id
    assert found["persist batch"].attributes["pulse.events"] == 2
    assert found["ingest POST events"].attributes["http.status_code"] == 202


def test_persisted_event_carries_the_trace(pulse: Any, project: Any, spans: InMemorySpanExporter) -> None:
    """persist hands K_SINK a ``persisted`` event whose traceparent continues the batch's trace."""
    from pulse.core.events import parse_batch
    from pulse.core.ingestion import encode_batch
    from pulse.persist import Persist
    from pulse.settings import Limits

    received: list[dict[str, str]] = []

    def sink(environ: dict[str, Any], start_response: Any) -> Any:
        received.append(dict(Request(environ).headers))
        return Response(status=202)(environ, start_response)

    server = make_server("127.0.0.1", 0, sink, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        services = copy.copy(pulse.services)  # the same store clients, another sink
        services.sinks = {"persist": f"http://127.0.0.1:{server.server_port}/"}
        persist = Persist(services)
        traceparent, trace_id, _ = new_traceparent()
        rows = parse_batch(orjson.dumps({"events": [make_event()]}), Limits()).rows
        batch = encode_batch(project.project_id, rows, traceparent=traceparent)
        persist.persist_one(batch)
    finally:
        server.shutdown()
        thread.join(5)
    assert len(received) == 1
    notice = {k.lower(): v for k, v in received[0].items()}
    assert notice["ce-type"] == "dev.pulse.events.persisted"
    assert notice["ce-traceparent"].split("-")[1] == trace_id
    batch_span = by_name(of_trace(spans, trace_id))["persist batch"]
    assert notice["ce-traceparent"].split("-")[2] == span_id(batch_span)


def test_queries_asked_at_once_stay_in_the_request_trace(pulse: Any, project: Any,
                                                         spans: InMemorySpanExporter) -> None:
    """top-events asks its checks and counts on other threads (stats.at_once): their
    query spans are still children of the request's span, in the client's trace."""
    assert project.api.post("/v1/events", {"events": [make_event(), make_event(event_type="signup")]}).status == 202
    wait_persisted(pulse)
    traceparent, trace_id, client_span = new_traceparent()
    answer = project.api.get("/v1/stats/top-events", headers={"traceparent": traceparent})
    assert answer.status == 200, answer.body
    wait_for_span(spans, trace_id, "clickhouse query")
    found = of_trace(spans, trace_id)
    queries = [s for s in found if s.name == "clickhouse query"]
    ids = {span_id(s) for s in found} | {client_span}
    assert {q.attributes["endpoint"] for q in queries} >= {"span-state", "top-events"}
    assert all(parent_of(q) in ids for q in queries), [(q.attributes, parent_of(q)) for q in queries]
    assert len({parent_of(q) for q in queries}) == 1  # one request span holds them all


def test_console_exporter_prints_spans() -> None:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "pulse-test"}
    code = ("from pulse import telemetry\n"
            "from opentelemetry import trace\n"
            "telemetry.configure_tracing()\n"
            "with telemetry.span('hello'):\n    pass\n"
            "trace.get_tracer_provider().shutdown()\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True)
    assert '"name": "hello"' in out.stdout
    assert "pulse-test" in out.stdout


def test_tracing_is_off_by_default_but_context_still_flows() -> None:
    code = ("from pulse import telemetry\n"
            "telemetry.configure_tracing()\n"
            "with telemetry.span('a', '00-" + "ab" * 16 + "-" + "cd" * 8 + "-01'):\n"
            "    print(telemetry.current_traceparent())\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.startswith("00-" + "ab" * 16 + "-"), out.stdout
    assert "cd" * 8 not in out.stdout  # a span of its own, child of the incoming one
    assert out.stderr == ""
