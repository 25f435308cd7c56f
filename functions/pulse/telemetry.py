"""Logs, metrics and traces: configured once, used by every function.

Logs are JSON lines carrying the request id, trace id and project id of the
work in hand (kept in context variables, so threads do not mix them).
Metrics follow Prometheus naming (base units, ``_total`` on counters).
Traces use OpenTelemetry; the W3C ``traceparent`` travels on HTTP requests and
as the CloudEvents ``traceparent`` extension through Kafka.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import Counter, Gauge, Histogram

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
project_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("project_id", default="")
function_var: contextvars.ContextVar[str] = contextvars.ContextVar("function", default="")

log = logging.getLogger("pulse")
tracer = trace.get_tracer("pulse")
propagator = TraceContextTextMapPropagator()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "pulse_http_requests_total", "HTTP requests answered", ["function", "route", "status"])
HTTP_LATENCY = Histogram(
    "pulse_http_request_duration_seconds", "HTTP request latency", ["function", "route"],
    buckets=LATENCY_BUCKETS)
EVENTS_ACCEPTED = Counter("pulse_events_accepted_total", "Events accepted by ingest", ["source"])
EVENTS_REJECTED = Counter("pulse_events_rejected_total", "Events refused by ingest", ["reason"])
KAFKA_PRODUCE_LATENCY = Histogram(
    "pulse_kafka_produce_duration_seconds", "Time until the broker acknowledged a record",
    buckets=LATENCY_BUCKETS)
KAFKA_PRODUCE_ERRORS = Counter("pulse_kafka_produce_errors_total", "Records the broker did not acknowledge")
PERSIST_BATCH_SIZE = Histogram(
    "pulse_persist_batch_size", "Events per persisted batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000))
PERSIST_INSERTED = Counter("pulse_persist_events_inserted_total", "Events written to ClickHouse")
PERSIST_DUPLICATES = Counter("pulse_persist_duplicates_total", "Events dropped as already persisted")
CLICKHOUSE_INSERT_LATENCY = Histogram(
    "pulse_clickhouse_insert_duration_seconds", "ClickHouse insert latency", buckets=LATENCY_BUCKETS)
QUERY_LATENCY = Histogram(
    "pulse_query_duration_seconds", "Stats query latency", ["endpoint"], buckets=LATENCY_BUCKETS)
DISPATCH_DELIVERIES = Counter(
    "pulse_dispatch_deliveries_total", "Deliveries by the eventing dispatcher", ["route", "outcome"])
DEAD_LETTERS = Counter(
    "pulse_dispatch_dead_letters_total", "Records sent to a dead-letter topic", ["route"])
CONSUMER_LAG = Gauge(
    "pulse_consumer_lag", "Records not yet delivered, per partition", ["group", "topic", "partition"])


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, var in (("function", function_var), ("request_id", request_id_var), ("project_id", project_id_var)):
            value = var.get()
            if value:
                entry[key] = value
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        extra = getattr(record, "fields", None)
        if isinstance(extra, Mapping):
            entry.update(extra)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kafka", "werkzeug", "urllib3", "clickhouse_connect", "pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def event(message: str, **fields: Any) -> None:
    """Log one structured line at INFO with extra fields."""
    log.info(message, extra={"fields": fields})


def configure_tracing(service_name: str = "pulse") -> None:
    """Install an SDK tracer provider when asked to by the standard OTEL_* variables
    (``OTEL_TRACES_EXPORTER=otlp|console``); otherwise spans stay no-ops."""
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if exporter_name in ("", "none"):
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:  # otlp: needs the opentelemetry-exporter-otlp package installed
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore

        exporter = OTLPSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    propagator.inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def span(name: str, traceparent: str | None = None, kind: trace.SpanKind = trace.SpanKind.INTERNAL,
         **attributes: Any) -> Iterator[trace.Span]:
    """A span, child of ``traceparent`` when one is given, else of the current span."""
    context = propagator.extract({"traceparent": traceparent}) if traceparent else None
    with tracer.start_as_current_span(name, context=context, kind=kind, attributes=attributes) as current:
        yield current


@contextmanager
def bound(**values: str) -> Iterator[None]:
    """Set request id / project id / function for the logs of the work inside."""
    tokens = []
    for key, value in values.items():
        var = {"request_id": request_id_var, "project_id": project_id_var, "function": function_var}[key]
        tokens.append((var, var.set(value)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
