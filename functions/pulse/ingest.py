"""ingest — HTTP function: clients POST events; each accepted request becomes
one Kafka record, answered 202 only after the broker acknowledged it."""

from __future__ import annotations

import functools
from collections.abc import Iterable

from werkzeug.wrappers import Request, Response

from pulse.core.events import parse_batch
from pulse.core.ingestion import Ingestor, count_rejections
from pulse.errors import InvalidInput, Unauthorized, Unavailable
from pulse.security.keys import ApiKey
from pulse.services import Services
from pulse.settings import Settings
from pulse.web.body import read_body
from pulse.web.credentials import extract
from pulse.web.http import HttpFunction, Route, json_response


class Ingest(HttpFunction):
    name = "ingest"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.ingestor = Ingestor(services.producer, services.settings.raw_topic)
        super().__init__(lambda: services.checks(("postgres", "kafka")))

    def routes(self) -> Iterable[Route]:
        return [Route("POST", "/v1/events", self.events, "events")]

    def api_key(self, request: Request) -> ApiKey:
        credential = extract(request)
        if credential is None or credential.kind != "api_key":
            raise Unauthorized("an API key with the 'ingest' scope is required (X-API-Key or Basic)")
        return self.services.keys.verify(credential.value, "ingest")

    def events(self, request: Request) -> Response:
        if self.stopping:
            raise Unavailable("ingest is shutting down", self.settings.retry_after_s)
        key = self.api_key(request)
        batch = parse_batch(read_body(request, self.settings.limits.max_body_bytes), self.settings.limits)
        count_rejections(batch.errors)
        if not batch.rows:
            raise InvalidInput("no valid event in the request", batch.errors)
        self.ingestor.submit(key.project_id, batch.rows)
        return json_response({"accepted": len(batch.rows), "errors": batch.error_list()}, 202)


@functools.cache
def _function() -> Ingest:
    return Ingest(Services(Settings.load()))


def ingest(request: Request) -> Response:
    """functions-framework target."""
    return _function().handle(request)
