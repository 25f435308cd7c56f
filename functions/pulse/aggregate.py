"""aggregate — HTTP function: the stats API over ClickHouse, the live view (SSE)
and the dashboard page."""

from __future__ import annotations

import functools
import mimetypes
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from werkzeug.wrappers import Request, Response

from pulse.bus.cloudevents import PERSISTED, receive
from pulse.core import breakdowns, cohorts, funnel, lifecycle, paths, retention, stats, stickiness
from pulse.core.filters import Filters, one, parse_filters
from pulse.core.funnel import Funnel, People
from pulse.core.persons import resolver
from pulse.errors import FieldError, Forbidden, InvalidInput, NotFound
from pulse.services import Services
from pulse.settings import Settings
from pulse.storage.cohorts import CohortStore
from pulse.storage.persons import described
from pulse.web.body import read_body
from pulse.web.credentials import extract
from pulse.web.http import HttpFunction, Route, json_response

DASHBOARD = Path(__file__).with_name("dashboard")
# The dashboard loads only its own files and talks only to its own host.
DASHBOARD_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
                 " connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self';"
                 " frame-ancestors 'none'")
MAX_FUNNEL_BODY = 64 * 1024
MAX_COHORT_BODY = 4 * 1024 * 1024  # 10,000 identifiers of up to 256 characters, as JSON
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
            Route("POST", "/v1/stats/funnel/people", self.funnel_people, "funnel-people"),
            Route("GET", "/v1/stats/paths", self.paths, "paths"),
            Route("GET", "/v1/stats/stickiness", self.stickiness, "stickiness"),
            Route("GET", "/v1/stats/lifecycle", self.lifecycle, "lifecycle"),
            Route("POST", "/v1/cohorts", self.create_cohort, "cohort-create"),
            Route("GET", "/v1/cohorts", self.list_cohorts, "cohorts"),
            Route("GET", "/v1/cohorts/<cohort_id>", self.cohort, "cohort"),
            Route("DELETE", "/v1/cohorts/<cohort_id>", self.delete_cohort, "cohort-delete"),
            Route("GET", "/dashboard", self.dashboard, "dashboard"),
            Route("GET", "/dashboard/<name>", self.dashboard_file, "dashboard-file"),
            Route("POST", "/_ce/persisted", self.persisted, "ce-persisted"),
        ]

    def project(self, request: Request) -> str:
        params = request.args.to_dict(flat=False)
        return self.access.project(extract(request), one(params, "project_id")).project_id

    @property
    def cohorts(self) -> CohortStore:
        return CohortStore(self.services.db, self.services.ch)

    def filters(self, request: Request, all_time: bool = False) -> Filters:
        params = request.args.to_dict(flat=False)
        project_id = self.project(request)
        max_days = self.services.settings.max_range_days
        if all_time and not params.get("from") and not params.get("to"):
            today = datetime.now(UTC).date()
            params["from"] = [(today - timedelta(days=max_days - 2)).isoformat()]
            params["to"] = [(today + timedelta(days=1)).isoformat()]
        return self.with_cohort(parse_filters(params, project_id, max_days), one(params, "cohort"))

    def with_cohort(self, filters: Filters, cohort_id: str | None) -> Filters:
        """The filters with ``cohort=<id>`` added (a cohort of the same project; 400 otherwise)."""
        if cohort_id is None:
            return filters
        checked = cohorts.parse_id(cohort_id)
        try:
            found = self.cohorts.as_filter(filters.project_id, checked)
        except NotFound as exc:
            raise InvalidInput.field("cohort", f"no cohort {checked} in this project") from exc
        return replace(filters, cohort=found)

    def events(self, request: Request) -> Response:
        params = request.args.to_dict(flat=False)
        group_by = stats.parse_group_by(one(params, "group_by"))
        bd = breakdowns.parse(params)
        return json_response(stats.events(self.services.ch, self.filters(request), group_by, bd=bd))

    def dau(self, request: Request) -> Response:
        return json_response(stats.dau(self.services.ch, self.filters(request)))

    def active_users(self, request: Request) -> Response:
        params = request.args.to_dict(flat=False)
        interval = stats.parse_interval(one(params, "interval"))
        bd = breakdowns.parse(params)
        return json_response(stats.active_users(self.services.ch, self.filters(request), interval, bd=bd))

    def top_events(self, request: Request) -> Response:
        limit = stats.parse_limit(request.args.getlist("limit"))
        bd = breakdowns.parse(request.args.to_dict(flat=False))
        return json_response(stats.top_events(self.services.ch, self.filters(request), limit, bd=bd))

    def retention(self, request: Request) -> Response:
        filters = self.filters(request)
        params = request.args.to_dict(flat=False)
        spec = retention.parse_retention(params, filters.tz)
        bd = breakdowns.parse(params)
        return json_response(retention.retention(self.services.ch, filters, spec, bd=bd))

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

    def funnel_spec(self, spec: Funnel) -> Funnel:
        return replace(spec, filters=self.with_cohort(spec.filters, spec.cohort_id))

    def funnel(self, request: Request) -> Response:
        project_id = self.project(request)
        spec = funnel.parse_funnel(self.body(request), project_id, self.services.settings.max_range_days)
        return json_response(funnel.funnel(self.services.ch, self.funnel_spec(spec)))

    def funnel_people(self, request: Request) -> Response:
        project_id = self.project(request)
        spec = self.people_spec(self.body(request), project_id)
        found = funnel.people(self.services.ch, spec)
        return json_response(described(self.services.db, project_id, [actors for _, actors in found]))

    def people_spec(self, body: object, project_id: str) -> People:
        spec = funnel.parse_people(body, project_id, self.services.settings.max_range_days)
        return replace(spec, funnel=self.funnel_spec(spec.funnel))

    @staticmethod
    def body(request: Request, limit: int = MAX_FUNNEL_BODY) -> object:
        try:
            return orjson.loads(read_body(request, limit) or b"null")
        except orjson.JSONDecodeError as exc:
            raise InvalidInput.field("body", "is not valid JSON") from exc

    def create_cohort(self, request: Request) -> Response:
        project_id = self.project(request)
        new = cohorts.parse_new(self.body(request, MAX_COHORT_BODY))
        persons = None
        if new.funnel is not None:
            try:
                at_step = self.people_spec(new.funnel, project_id)
            except InvalidInput as exc:
                errors = [FieldError(f"funnel.{e.field}", e.message, e.index) for e in exc.errors]
                raise InvalidInput(f"funnel.{exc.detail}", errors) from exc
            persons = funnel.at_step_query(at_step, resolver(self.services.ch, project_id))
        made = self.cohorts.create(project_id, new, persons)
        return json_response(made, 201, {"Location": f"/v1/cohorts/{made['cohort_id']}"})

    def list_cohorts(self, request: Request) -> Response:
        return json_response(self.cohorts.listing(self.project(request)))

    def cohort(self, request: Request, cohort_id: str) -> Response:
        return json_response(self.cohorts.get(self.project(request), cohorts.parse_id(cohort_id, "cohort_id")))

    def delete_cohort(self, request: Request, cohort_id: str) -> Response:
        params = request.args.to_dict(flat=False)
        reader = self.access.project(extract(request), one(params, "project_id"))
        if reader.role == "viewer":
            raise Forbidden("viewers may read cohorts, not delete them")
        self.cohorts.delete(reader.project_id, cohorts.parse_id(cohort_id, "cohort_id"))
        return Response(status=204)

    def paths(self, request: Request) -> Response:
        filters = self.filters(request)
        spec = paths.parse_paths(request.args.to_dict(flat=False), filters)
        return json_response(paths.paths(self.services.ch, spec))

    def stickiness(self, request: Request) -> Response:
        interval = stats.parse_interval(one(request.args.to_dict(flat=False), "interval"))
        return json_response(stickiness.stickiness(self.services.ch, self.filters(request), interval))

    def lifecycle(self, request: Request) -> Response:
        interval = stats.parse_interval(one(request.args.to_dict(flat=False), "interval"))
        return json_response(lifecycle.lifecycle(self.services.ch, self.filters(request), interval))

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
