"""aggregate — HTTP function: the stats API over ClickHouse, the live view (SSE)
and the dashboard page."""

from __future__ import annotations

import functools
import mimetypes
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from werkzeug.wrappers import Request, Response

from pulse.bus.cloudevents import PERSISTED, receive
from pulse.core import funnel, retention, stats
from pulse.core.filters import Filters, one, parse_filters
from pulse.errors import InvalidInput, NotFound
from pulse.services import Services
from pulse.settings import Settings
from pulse.web.body import read_body
from pulse.web.credentials import extract
from pulse.web.http import HttpFunction, Route, json_response

DASHBOARD = Path(__file__).with_name("dashboard")
# The dashboard loads only its own files and talks only to its own host.
DASHBOARD_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
                 " connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self';"
                 " frame-ancestors 'none'")
MAX_FUNNEL_BODY = 64 * 1024
LIVE_PERIOD_S = 2.0
LIVE_MAX_S = 3600.0


class Aggregate(HttpFunction):
    name = "aggregate"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.access = services.access
        super().__init__(services.readiness(self.name), services.event_auth(self.name))

    def routes(self) -> Iterable[Route]:
        return [
            Route("GET", "/v1/stats/events", self.events, "events"),
            Route("GET", "/v1/stats/dau", self.dau, "dau"),
            Route("GET", "/v1/stats/active-users", self.active_users, "active-users"),
            Route("GET", "/v1/stats/top-events", self.top_events, "top-events"),
            Route("GET", "/v1/stats/retention", self.retention, "retention"),
            Route("GET", "/v1/stats/pages", self.pages, "pages"),
            Route("GET", "/v1/stats/users/<path:user_id>", self.user, "user"),
            Route("GET", "/v1/stats/overview", self.overview, "overview"),
            Route("GET", "/v1/stats/summary", self.summary, "summary"),
            Route("GET", "/v1/stats/live", self.live, "live"),
            Route("POST", "/v1/stats/funnel", self.funnel, "funnel"),
            Route("GET", "/dashboard", self.dashboard, "dashboard"),
            Route("GET", "/dashboard/<name>", self.dashboard_file, "dashboard-file"),
            Route("POST", "/_ce/persisted", self.persisted, "ce-persisted"),
        ]

    def project(self, request: Request) -> str:
        params = request.args.to_dict(flat=False)
        return self.access.project(extract(request), one(params, "project_id")).project_id

    def filters(self, request: Request, all_time: bool = False) -> Filters:
        params = request.args.to_dict(flat=False)
        project_id = self.project(request)
        max_days = self.services.settings.max_range_days
        if all_time and not params.get("from") and not params.get("to"):
            today = datetime.now(UTC).date()
            params["from"] = [(today - timedelta(days=max_days - 2)).isoformat()]
            params["to"] = [(today + timedelta(days=1)).isoformat()]
        return parse_filters(params, project_id, max_days)

    def events(self, request: Request) -> Response:
        group_by = stats.parse_group_by(one(request.args.to_dict(flat=False), "group_by"))
        return json_response(stats.events(self.services.ch, self.filters(request), group_by))

    def dau(self, request: Request) -> Response:
        return json_response(stats.dau(self.services.ch, self.filters(request)))

    def active_users(self, request: Request) -> Response:
        interval = stats.parse_interval(one(request.args.to_dict(flat=False), "interval"))
        return json_response(stats.active_users(self.services.ch, self.filters(request), interval))

    def top_events(self, request: Request) -> Response:
        limit = stats.parse_limit(request.args.getlist("limit"))
        return json_response(stats.top_events(self.services.ch, self.filters(request), limit))

    def retention(self, request: Request) -> Response:
        filters = self.filters(request)
        spec = retention.parse_retention(request.args.to_dict(flat=False), filters.tz)
        return json_response(retention.retention(self.services.ch, filters, spec))

    def pages(self, request: Request) -> Response:
        limit = stats.parse_limit(request.args.getlist("limit"))
        return json_response(stats.pages(self.services.ch, self.filters(request), limit))

    def user(self, request: Request, user_id: str) -> Response:
        if not 1 <= len(user_id) <= self.services.settings.limits.max_id_chars:
            raise InvalidInput.field("user_id", "must be 1 to 256 characters")
        return json_response(stats.user(self.services.ch, self.filters(request, all_time=True), user_id))

    def overview(self, request: Request) -> Response:
        return json_response(stats.overview(self.services.ch, self.filters(request)))

    def summary(self, request: Request) -> Response:
        return json_response(stats.summary(self.services.ch, self.filters(request)))

    def live(self, request: Request) -> Response:
        filters = self.filters(request)
        ch = self.services.ch

        def stream() -> Iterator[bytes]:
            started = time.monotonic()
            while not self.stopping and time.monotonic() - started < LIVE_MAX_S:
                data = orjson.dumps(stats.summary(ch, filters))
                yield b"event: summary\ndata: " + data + b"\n\n"
                time.sleep(LIVE_PERIOD_S)

        return Response(stream(), content_type="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def funnel(self, request: Request) -> Response:
        project_id = self.project(request)
        try:
            body = orjson.loads(read_body(request, MAX_FUNNEL_BODY) or b"null")
        except orjson.JSONDecodeError as exc:
            raise InvalidInput.field("body", "is not valid JSON") from exc
        spec = funnel.parse_funnel(body, project_id, self.services.settings.max_range_days)
        return json_response(funnel.funnel(self.services.ch, spec))

    def persisted(self, request: Request) -> Response:
        """Trigger on ``dev.pulse.events.persisted``: the rollups are kept by
        materialized views as persist inserts, so a persisted batch needs no
        further work here."""
        events = receive(request.headers, request.get_data())
        unexpected = [e.type for e in events if e.type != PERSISTED]
        if unexpected:
            raise InvalidInput.field("type", f"expected {PERSISTED}, got {unexpected[0]}")
        return json_response({"received": len(events)})

    def dashboard(self, request: Request) -> Response:
        return self.dashboard_file(request, "index.html")

    def dashboard_file(self, request: Request, name: str) -> Response:
        files = {p.name: p for p in DASHBOARD.iterdir() if p.is_file()}
        if name not in files:
            raise NotFound(f"no dashboard file {name[:80]!r}")
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Response(files[name].read_bytes(), content_type=content_type,
                        headers={"Cache-Control": "no-cache", "Content-Security-Policy": DASHBOARD_CSP})


@functools.cache
def _function() -> Aggregate:
    return Aggregate(Services(Settings.load()))


def aggregate(request: Request) -> Response:
    """functions-framework target."""
    return _function().handle(request)
