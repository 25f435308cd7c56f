"""The HTTP frame every Pulse function shares.

``HttpFunction`` routes a request to a handler, gives every response an
``X-Request-ID``, a span and a log line, counts it in the metrics, and serves
``/healthz``, ``/readyz`` and ``/metrics``. Errors become problem+json here
and only here: a ``PulseError`` keeps its status; anything else is our bug,
answered 500 with the request id and logged with its trace, never shown.

Stopping is graceful: ``begin_stop`` makes every route but the probes answer
503 with ``Retry-After`` (and ``/readyz`` fail), ``wait_idle`` waits, within a
bound, for the requests already in hand to finish.

The same object serves as a functions-framework target (``handle`` takes the
Flask request) and as a plain WSGI app (``wsgi``) in the embedded runtime.
"""

from __future__ import annotations

import gc
import logging
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from opentelemetry.trace import SpanKind
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from pulse import telemetry
from pulse.errors import PulseError, RateLimited, Unauthorized, Unavailable
from pulse.web.openapi import INTERNAL_PREFIX, OPENAPI_DIR

log = logging.getLogger("pulse.http")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
PROBES = frozenset({"metrics", "healthz", "readyz", "openapi"})
PROBLEM = "application/problem+json"
# On every answer: no MIME sniffing, no framing, and (unless a page states its
# own policy, as the dashboard does) nothing a browser may load or run.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
Handler = Callable[..., Response]


class EventCheck(Protocol):
    """Verifies a CloudEvent delivery's ``Authorization`` (pulse.security.eventauth)."""

    def verify(self, authorization: str | None) -> str: ...


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    name: str = ""


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), status=status,
                    headers=dict(headers or {}), content_type="application/json")


def problem(status: int, title: str, detail: str, slug: str, errors: list[dict[str, Any]] | None = None,
            request_id: str = "", headers: Mapping[str, str] | None = None,
            extensions: Mapping[str, Any] | None = None) -> Response:
    body: dict[str, Any] = {
        **(extensions or {}),
        "type": f"https://pulse.dev/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        "errors": errors or [],
    }
    if request_id:
        body["request_id"] = request_id
    return Response(orjson.dumps(body), status=status, headers=dict(headers or {}), content_type=PROBLEM)


def problem_from(exc: PulseError, request_id: str) -> Response:
    headers = {}
    if isinstance(exc, RateLimited | Unavailable):
        headers["Retry-After"] = str(max(1, int(exc.retry_after_s)))
    return problem(exc.status, exc.title, exc.detail, exc.slug,
                   [e.as_dict() for e in exc.errors], request_id, headers, exc.extensions)


# Python's cyclic garbage collector, tuned for a server: a 1000-event request
# allocates tens of thousands of objects, and with the default thresholds
# (700, 10, 10) that means dozens of collections per request, some of them
# full ones walking every long-lived object. Measured with `pulse bench`:
# JSON parsing of a batch took 3.5x longer under the default thresholds.
GC_THRESHOLDS = (50_000, 20, 20)
_gc_tuned = threading.Lock()


def tune_gc() -> None:
    """Once per process: move what start-up created out of the collector's
    sight (``gc.freeze``) and collect young objects less often."""
    if _gc_tuned.acquire(blocking=False):
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)


class HttpFunction:
    """Base of the five functions. Subclasses set ``name`` and return their routes."""

    name = "function"
    _built: weakref.WeakSet[HttpFunction] = weakref.WeakSet()

    @classmethod
    def built(cls) -> list[HttpFunction]:
        """Every function this process has built (and still holds)."""
        return list(cls._built)
    serves_metrics = True

    def __init__(self, readiness: Callable[[], Mapping[str, bool]] | None = None,
                 event_check: EventCheck | None = None) -> None:
        HttpFunction._built.add(self)
        telemetry.configure_tracing()
        telemetry.ensure_logging()
        tune_gc()
        self._readiness = readiness or (lambda: {})
        # Every /_ce/* route verifies its sender first; without a check, none is served.
        self.event_check = event_check
        self._in_flight = 0
        self._idle = threading.Condition()
        self.retry_after_s = 2
        routes = [
            Route("GET", "/healthz", self._healthz, "healthz"),
            Route("GET", "/readyz", self._readyz, "readyz"),
            *([Route("GET", "/metrics", self._metrics, "metrics")] if self.serves_metrics else []),
            Route("GET", "/openapi.json", self._openapi, "openapi"),
            *self.routes(),
        ]
        self._handlers = {}
        rules = []
        for index, route in enumerate(routes):
            endpoint = f"{index}:{route.name or route.path}"
            self._handlers[endpoint] = route
            rules.append(Rule(route.path, endpoint=endpoint, methods=[route.method], strict_slashes=False))
        self._map = Map(rules)
        self.stopping = False

    def routes(self) -> Iterable[Route]:
        return ()

    # Entry points ---------------------------------------------------------

    def handle(self, request: Request) -> Response:
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
        started = time.perf_counter()
        route_name = "unmatched"
        self._enter()
        try:
            with telemetry.bound(request_id=request_id, function=self.name, project_id=""), telemetry.span(
                f"{self.name} {request.method}", request.headers.get("traceparent"), SpanKind.SERVER,
                attributes={"http.method": request.method, "http.target": request.path, "pulse.function": self.name},
            ) as current:
                try:
                    adapter = self._map.bind_to_environ(request.environ)
                    endpoint, params = adapter.match(request.path, method=request.method)
                    route = self._handlers[endpoint]
                    route_name = route.name or route.path
                    current.update_name(f"{self.name} {request.method} {route_name}")
                    current.set_attribute("http.route", route.path)
                    if self.stopping and route_name not in PROBES:
                        raise Unavailable(f"{self.name} is shutting down", self.retry_after_s)
                    if route.path.startswith(INTERNAL_PREFIX):
                        if self.event_check is None:
                            raise Unauthorized("this function takes no internal events")
                        current.set_attribute("pulse.sender",
                                              self.event_check.verify(request.headers.get("Authorization")))
                    response = route.handler(request, **params)
                except PulseError as exc:
                    response = problem_from(exc, request_id)
                    if exc.status >= 500:  # the cause (addresses, a store's own words) is logged, never answered
                        log.warning("%s %s: %s%s", request.method, request.path, exc.detail,
                                    f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else "")
                except MethodNotAllowed as exc:
                    response = problem(405, "Method not allowed", f"{request.method} is not allowed here",
                                       "method-not-allowed", request_id=request_id,
                                       headers={"Allow": ", ".join(exc.valid_methods or [])})
                except NotFound:
                    response = problem(404, "Not found", f"no route for {request.path}", "not-found",
                                       request_id=request_id)
                except HTTPException as exc:
                    status = exc.code or 400
                    response = problem(status, exc.name, exc.description or exc.name, "http",
                                       request_id=request_id)
                except Exception:  # noqa: BLE001 - our bug: log it, answer 500 without a trace
                    log.exception("unhandled error on %s %s", request.method, request.path)
                    response = problem(500, "Internal error",
                                       f"something failed on our side; request id {request_id}",
                                       "internal", request_id=request_id)
                response.headers["X-Request-ID"] = request_id
                for header, value in SECURITY_HEADERS.items():
                    response.headers.setdefault(header, value)
                current.set_attribute("http.status_code", response.status_code)
                elapsed = time.perf_counter() - started
                if route_name not in PROBES:
                    # the path only: a query string may carry a credential
                    log.info("%s %s %s", request.method, request.path, response.status_code,
                             extra={"fields": {"route": route_name, "status": response.status_code,
                                               "duration_ms": round(elapsed * 1000, 2)}})
        finally:
            self._leave()
        if route_name not in PROBES:
            telemetry.HTTP_REQUESTS.labels(self.name, route_name, str(response.status_code)).inc()
            telemetry.HTTP_LATENCY.labels(self.name, route_name).observe(elapsed)
        return response

    # Graceful stop ----------------------------------------------------------

    def _enter(self) -> None:
        with self._idle:
            self._in_flight += 1
        telemetry.HTTP_IN_FLIGHT.labels(self.name).inc()

    def _leave(self) -> None:
        telemetry.HTTP_IN_FLIGHT.labels(self.name).dec()
        with self._idle:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.notify_all()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def begin_stop(self) -> None:
        """Take no more work: every route but the probes answers 503 from now on."""
        self.stopping = True

    def close(self) -> None:
        """Release what the function holds beyond its services (after ``wait_idle``)."""

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until the requests in hand are answered; False if some still run after ``timeout_s``."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout_s)

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return self.handle(Request(environ))(environ, start_response)

    # Built-in routes ------------------------------------------------------

    def _healthz(self, request: Request) -> Response:
        return json_response({"status": "ok", "function": self.name})

    def readiness(self) -> dict[str, Any]:
        """What ``/readyz`` answers: ``status`` (``ready`` or ``not ready``), ``function`` and ``checks``."""
        checks = dict(self._readiness())
        ready = all(checks.values()) and not self.stopping
        states = {k: "ok" if v else "failing" for k, v in checks.items()}
        if self.stopping:
            states["shutdown"] = "in progress"
        return {"status": "ready" if ready else "not ready", "function": self.name, "checks": states}

    def _readyz(self, request: Request) -> Response:
        body = self.readiness()
        return json_response(body, 200 if body["status"] == "ready" else 503)

    def _metrics(self, request: Request) -> Response:
        payload, content_type = telemetry.metrics_payload()
        return Response(payload, content_type=content_type)

    def _openapi(self, request: Request) -> Response:
        path = OPENAPI_DIR / f"{self.name}.json"
        if not path.is_file():
            raise NotFound()
        return Response(path.read_bytes(), content_type="application/json")

    def registered_routes(self) -> list[tuple[str, str]]:
        """(method, werkzeug rule) of every route this function serves."""
        return [(route.method, route.path) for route in self._handlers.values()]
