"""aggregate — HTTP function: the stats API over ClickHouse."""

from __future__ import annotations

import functools
from collections.abc import Iterable

from werkzeug.wrappers import Request, Response

from pulse.bus.cloudevents import PERSISTED, receive
from pulse.core import stats
from pulse.core.filters import Filters, one, parse_filters
from pulse.errors import InvalidInput
from pulse.services import Services
from pulse.settings import Settings
from pulse.web.credentials import extract
from pulse.web.http import HttpFunction, Route, json_response


class Aggregate(HttpFunction):
    name = "aggregate"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.access = services.access
        super().__init__(lambda: services.checks(("postgres", "clickhouse")))

    def routes(self) -> Iterable[Route]:
        return [
            Route("GET", "/v1/stats/top-events", self.top_events, "top-events"),
            Route("GET", "/v1/stats/dau", self.dau, "dau"),
            Route("POST", "/_ce/persisted", self.persisted, "ce-persisted"),
        ]

    def filters(self, request: Request) -> Filters:
        params = request.args.to_dict(flat=False)
        reader = self.access.project(extract(request), one(params, "project_id"))
        return parse_filters(params, reader.project_id, self.services.settings.max_range_days)

    def top_events(self, request: Request) -> Response:
        filters = self.filters(request)
        limit = parse_limit(request.args.getlist("limit"))
        return json_response(stats.top_events(self.services.ch, filters, limit))

    def dau(self, request: Request) -> Response:
        return json_response(stats.dau(self.services.ch, self.filters(request)))


    def persisted(self, request: Request) -> Response:
        """Trigger on ``dev.pulse.events.persisted``: stats read the events table
        directly, so a persisted batch needs no further work here."""
        events = receive(request.headers, request.get_data())
        unexpected = [e.type for e in events if e.type != PERSISTED]
        if unexpected:
            raise InvalidInput.field("type", f"expected {PERSISTED}, got {unexpected[0]}")
        return json_response({"received": len(events)})


def parse_limit(values: list[str], default: int = 10) -> int:
    if not values:
        return default
    if len(values) > 1 or not values[0].isdigit() or not 1 <= int(values[0]) <= stats.MAX_LIMIT:
        raise InvalidInput.field("limit", f"must be an integer from 1 to {stats.MAX_LIMIT}")
    return int(values[0])


@functools.cache
def _function() -> Aggregate:
    return Aggregate(Services(Settings.load()))


def aggregate(request: Request) -> Response:
    """functions-framework target."""
    return _function().handle(request)
