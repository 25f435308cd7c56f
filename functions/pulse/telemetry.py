"""Logs, metrics and traces: configured once, used by every function.

Logs are JSON lines carrying the request id, trace id and project id of the
work in hand (kept in context variables, so threads do not mix them).
Metrics follow Prometheus naming (base units, ``_total`` on counters).
Under several worker processes (gunicorn ``WORKERS`` > 1) set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before start: every worker
writes its values there and ``/metrics`` sums them (``metrics_payload``).

Traces use OpenTelemetry; the W3C ``traceparent`` travels on HTTP requests and
as the CloudEvents ``traceparent`` extension through Kafka. Each process
installs one SDK tracer provider (``configure_tracing``), so context flows even
when nothing is exported; exporters are chosen by the standard variables
(``OTEL_TRACES_EXPORTER=otlp|console|none``, ``OTEL_EXPORTER_OTLP_*``,
``OTEL_SERVICE_NAME``), ``none`` by default. ``add_span_processor`` lets a test
capture spans in memory.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:  # the SDK is imported when a provider is installed (OTEL_SDK_DISABLED leaves it out)
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
    from opentelemetry.sdk.trace import Span as SdkSpan

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
    "pulse_kafka_produce_duration_seconds", "Time until the broker acknowledged a record", ["topic"],
    buckets=LATENCY_BUCKETS)
INGEST_RECORD_REQUESTS = Histogram(
    "pulse_ingest_record_requests", "Requests whose events one ingested record carries (pulse.core.ingestion)",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64))
SPOOL_SYNC_LATENCY = Histogram(
    "pulse_spool_sync_duration_seconds", "Time until a spooled record was on disk (its group's fsync)",
    buckets=LATENCY_BUCKETS)
KAFKA_PRODUCE_ERRORS = Counter(
    "pulse_kafka_produce_errors_total", "Records the broker did not acknowledge", ["topic"])
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
DISPATCH_FAILED_ATTEMPTS = Counter(
    "pulse_dispatch_failed_attempts_total", "Delivery attempts not answered 2xx, retries included",
    ["route", "status"])
DEAD_LETTERS = Counter(
    "pulse_dispatch_dead_letters_total", "Records sent to a dead-letter topic", ["route"])
CONSUMER_LAG = Gauge(
    "pulse_consumer_lag", "Records not yet delivered, per partition", ["group", "topic", "partition"],
    multiprocess_mode="mostrecent")
HTTP_IN_FLIGHT = Gauge(
    "pulse_http_requests_in_flight", "Requests being answered", ["function"], multiprocess_mode="livesum")
PERSON_LINKS = Counter(
    "pulse_person_links_total", "Identity links applied by persist", ["outcome"])
PERSON_DELETIONS = Counter(
    "pulse_person_deletions_total", "Person deletion jobs finished", ["status"])
KAFKA_PRODUCE_REFUSED = Counter(
    "pulse_kafka_produce_refused_total", "Records refused because too many were waiting for the broker",
    ["topic"])


class _EngineMemory:
    """``pulse_clickhouse_memory_bytes{kind}``, read from the embedded engine at each scrape."""

    def __init__(self) -> None:
        self.read: Callable[[], Mapping[str, float]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        read = self.read
        if read is None:
            return
        try:
            values = read()
        except Exception:  # noqa: BLE001 - a scrape shows what it can
            return
        family = GaugeMetricFamily("pulse_clickhouse_memory_bytes",
                                   "The embedded ClickHouse engine's memory: all it tracks, and each cache",
                                   labels=["kind"])
        for kind, value in sorted(values.items()):
            family.add_metric([kind], value)
        yield family


_engine_memory = _EngineMemory()
REGISTRY.register(_engine_memory)


def watch_engine_memory(read: Callable[[], Mapping[str, float]] | None) -> None:
    """Report the embedded engine's memory (``read``: kind → bytes) in this process's metrics."""
    _engine_memory.read = read


def metrics_payload() -> tuple[bytes, str]:
    """The text exposition of this process, or of every worker in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


# Secrets never reach a log line, whatever a message or a traceback quotes:
# API keys keep only their public prefix, credentials and password-like fields are masked.
_SECRETS = (
    (re.compile(r"\b(pulse_[A-Za-z0-9]{8})_[A-Za-z0-9]+"), r"\1_***"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 ***"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "***"),
    (re.compile(r"(?i)((?:password|passwd|secret|api[_-]?key|token|authorization)\\?\"?\s*[:=]\s*\\?\"?)"
                r"[^\"\\&\s,;}]+"), r"\1***"),
    (re.compile(r"(://[^:/@\s\"]+):[^@/\s\"]+@"), r"\1:***@"),
)


def scrub(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(self._format(record))

    def _format(self, record: logging.LogRecord) -> str:
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


LOG_FORMATS = ("json", "console")
ACCESS_LOGGER = "pulse.access"


def configure_logging(level: str = "INFO", fmt: str = "json", quiet: bool = False,
                      stream: Any = None) -> ConsoleHandler | None:
    """The process's one log handler. ``json``: JSON lines on stderr, one per
    request from each function (``pulse.http``). ``console``: short human
    lines on stdout, one per request the public host answers (``pulse.access``,
    from the gateway), plus warnings and errors; the console handler is
    returned, to print the banner through it. ``quiet`` keeps only warnings,
    errors and failed (5xx) requests."""
    root = logging.getLogger()
    handler: logging.Handler
    if fmt == "console":
        handler = console = ConsoleHandler(stream or sys.stdout, quiet)
    elif fmt == "json":
        handler, console = logging.StreamHandler(stream or sys.stderr), None
        handler.setFormatter(JsonFormatter())
    else:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(LOG_FORMATS)}")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kafka", "werkzeug", "urllib3", "clickhouse_connect", "pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # the gateway's access lines are the console's; JSON logs have each function's own
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO if console else logging.CRITICAL + 1)
    return console


def ensure_logging(level: str = "INFO") -> None:
    """JSON logs for a process nobody configured (a function under functions-framework);
    leaves an existing configuration (the CLI's, a test runner's) alone."""
    if not logging.getLogger().handlers:
        configure_logging(level)


class ConsoleHandler(logging.Handler):
    """Log lines for a person at a terminal: ``12:04:31  POST /v1/events  202  3 ms  ingest``
    for each request the public host answered, and warnings and errors. Request
    lines start once the banner is printed (``banner``), so start-up (the demo
    data loading included) does not bury it; all writes share one lock, so the
    banner is never interleaved with a log line."""

    def __init__(self, stream: Any, quiet: bool = False) -> None:
        super().__init__()
        self.stream = stream
        self.quiet = quiet
        self.opened = False

    def wants(self, record: logging.LogRecord) -> bool:
        if record.name == ACCESS_LOGGER:
            failed = str(_fields(record).get("status", "")).startswith("5")
            return failed if self.quiet else (self.opened or failed)
        return record.levelno >= logging.WARNING

    def emit(self, record: logging.LogRecord) -> None:
        if not self.wants(record):
            return
        try:
            self.write(scrub(self.line(record)))
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)

    def line(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = _fields(record)
        if record.name == ACCESS_LOGGER:
            ms = float(fields.get("duration_ms", 0))
            return (f"{clock}  {fields.get('method', ''):<6} {fields.get('path', ''):<28} {fields.get('status', '')}"
                    f" {ms:6.0f} ms  {fields.get('function', '')}")
        text = f"{clock}  {record.levelname.lower()}  {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        return text

    def write(self, text: str) -> None:
        with self.lock or threading.Lock():
            self.stream.write(text if text.endswith("\n") else text + "\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        """A line of the command's own (start, stop), not shown when quiet."""
        if not self.quiet:
            self.write(text)

    def banner(self, text: str) -> None:
        """Print ``text`` in one piece; request lines are shown from now on."""
        with self.lock or threading.Lock():
            self.write(text)
            self.opened = True


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, Mapping) else {}


def event(message: str, **fields: Any) -> None:
    """Log one structured line at INFO with extra fields."""
    log.info(message, extra={"fields": fields})


class _Fanout:
    """The span processors added at run time; ``processor`` is the provider's
    one processor, handing each span to them."""

    def __init__(self) -> None:
        self.processors: tuple[SpanProcessor, ...] = ()
        self._lock = threading.Lock()

    def add(self, processor: SpanProcessor) -> None:
        with self._lock:
            self.processors = (*self.processors, processor)

    def remove(self, processor: SpanProcessor) -> None:
        with self._lock:
            self.processors = tuple(p for p in self.processors if p is not processor)

    def processor(self) -> SpanProcessor:
        from opentelemetry.sdk.trace import SpanProcessor

        fanout = self

        class Fanout(SpanProcessor):
            def on_start(self, span: SdkSpan, parent_context: Any = None) -> None:
                for processor in fanout.processors:
                    processor.on_start(span, parent_context=parent_context)

            def on_end(self, span: ReadableSpan) -> None:
                for processor in fanout.processors:
                    processor.on_end(span)

            def shutdown(self) -> None:
                for processor in fanout.processors:
                    processor.shutdown()

            def force_flush(self, timeout_millis: int = 30000) -> bool:
                return all(p.force_flush(timeout_millis) for p in fanout.processors)

        return Fanout()


class _Tracing:
    """The process's tracer provider, installed once (OpenTelemetry allows one)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fanout = _Fanout()
        self.installed = False
        self.exporters_configured = False


_tracing = _Tracing()


def _install_provider(service_name: str) -> None:
    with _tracing.lock:
        if _tracing.installed:
            return
        _tracing.installed = True
        if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(_tracing.fanout.processor())
        trace.set_tracer_provider(provider)


def configure_tracing(service_name: str = "pulse") -> None:
    """Install the SDK tracer provider (once per process) and the exporters named by
    ``OTEL_TRACES_EXPORTER`` (comma-separated ``otlp``, ``console``; ``none`` by default).
    ``otlp`` needs the ``otlp`` extra (opentelemetry-exporter-otlp-proto-http) and reads
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` and friends itself."""
    _install_provider(service_name)
    with _tracing.lock:
        if _tracing.exporters_configured:
            return
        _tracing.exporters_configured = True
    names = os.environ.get("OTEL_TRACES_EXPORTER", "none").lower().replace(" ", "").split(",")
    names = [name for name in names if name not in ("", "none")]
    if not names:
        return
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    for name in names:
        exporter: SpanExporter
        if name == "console":
            exporter = ConsoleSpanExporter(formatter=lambda s: s.to_json(indent=None) + "\n")
        elif name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError:
                log.warning("OTEL_TRACES_EXPORTER=otlp needs `pip install pulse-analytics[otlp]`; not exporting")
                continue
            exporter = OTLPSpanExporter()
        else:
            log.warning("OTEL_TRACES_EXPORTER: unknown exporter %r ignored", name)
            continue
        _tracing.fanout.add(BatchSpanProcessor(exporter))


def add_span_processor(processor: SpanProcessor) -> None:
    """Send every span that ends from now on to ``processor`` too (tests use an in-memory one)."""
    _install_provider("pulse")
    _tracing.fanout.add(processor)


def remove_span_processor(processor: SpanProcessor) -> None:
    _tracing.fanout.remove(processor)


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    propagator.inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def span(name: str, traceparent: str | None = None, kind: trace.SpanKind = trace.SpanKind.INTERNAL,
         attributes: Mapping[str, Any] | None = None) -> Iterator[trace.Span]:
    """A span under the current one; when ``traceparent`` names another trace (work that
    arrived from elsewhere, e.g. a CloudEvent's ``traceparent`` extension), under that."""
    context = None
    if traceparent:
        current = trace.get_current_span().get_span_context()
        extracted = propagator.extract({"traceparent": traceparent})
        parent = trace.get_current_span(extracted).get_span_context()
        if parent.is_valid and not (current.is_valid and current.trace_id == parent.trace_id):
            context = extracted
    with tracer.start_as_current_span(name, context=context, kind=kind, attributes=attributes) as current_span:
        yield current_span


def set_project(project_id: str) -> None:
    """Name the project of the work in hand in the logs and on the current span
    (``bound`` around the request resets it)."""
    project_id_var.set(project_id)
    trace.get_current_span().set_attribute("pulse.project_id", project_id)


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
