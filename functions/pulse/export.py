"""export — HTTP function: streamed downloads, and async export jobs run on a
``dev.pulse.export.requested`` CloudEvent; the persons API (profiles, lists,
what is held about a person, deletion on request as a job run on a
``dev.pulse.person.deletion.requested`` CloudEvent: pulse.core.erasure)."""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

from pulse import telemetry
from pulse.bus import sink
from pulse.bus.cloudevents import EXPORT_REQUESTED, PERSON_DELETION_REQUESTED, CloudEvent, receive
from pulse.core import erasure, exporting
from pulse.core.filters import one
from pulse.core.stats import parse_limit
from pulse.errors import Conflict, Forbidden, InvalidInput, NotFound, PulseError, public_reason
from pulse.security.access import Reader
from pulse.services import Services
from pulse.settings import Settings
from pulse.storage import persons
from pulse.web.body import read_body
from pulse.web.credentials import extract
from pulse.web.http import HttpFunction, Route, json_response

log = logging.getLogger("pulse.export")
SOURCE = "/pulse/export"
MAX_JOB_BODY_BYTES = 64 * 1024


class Export(HttpFunction):
    name = "export"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.access = services.access
        self.jobs = exporting.Jobs(services.db)
        self.deletions = erasure.Deletions(services.db)
        super().__init__(services.readiness(self.name), services.event_auth(self.name))

    def routes(self) -> Iterable[Route]:
        return [
            Route("GET", "/v1/export", self.download, "export"),
            Route("POST", "/v1/exports", self.request_export, "exports-create"),
            Route("GET", "/v1/exports/<export_id>", self.status, "exports-status"),
            Route("GET", "/v1/exports/<export_id>/file", self.file, "exports-file"),
            Route("POST", "/_ce/export-requested", self.export_requested, "ce-export-requested"),
            Route("GET", "/v1/persons", self.persons, "persons"),
            Route("GET", "/v1/persons/<distinct_id>", self.person, "person"),
            Route("DELETE", "/v1/persons/<distinct_id>", self.delete_person, "person-delete"),
            Route("GET", "/v1/persons/<distinct_id>/export", self.person_export, "person-export"),
            Route("GET", "/v1/deletions/<deletion_id>", self.deletion, "deletion"),
            Route("POST", "/_ce/deletion-requested", self.deletion_requested, "ce-deletion-requested"),
        ]

    @property
    def directory(self) -> Path:
        return Path(self.settings.export_dir) if self.settings.export_dir else self.settings.state_dir / "exports"

    def reader(self, request: Request, project_id: str | None = None) -> Reader:
        return self.access.project(extract(request), project_id or request.args.get("project_id"))

    def download(self, request: Request) -> Response:
        params = request.args.to_dict(flat=False)
        reader = self.reader(request, one(params, "project_id"))
        export = exporting.parse_request(params, reader.project_id, self.settings.max_range_days)
        return Response(exporting.body(self.services.ch, export), content_type=export.format.media_type,
                        headers={"Content-Disposition": f'attachment; filename="{export.file_name}"'},
                        direct_passthrough=True)

    def request_export(self, request: Request) -> Response:
        params = job_params(read_body(request, MAX_JOB_BODY_BYTES))
        reader = self.reader(request, one(params, "project_id"))
        export = exporting.parse_request(params, reader.project_id, self.settings.max_range_days)
        export_id = self.jobs.create(export)
        notice = CloudEvent.new(EXPORT_REQUESTED, SOURCE,
                                orjson.dumps({"export_id": export_id, "project_id": reader.project_id}),
                                partitionkey=reader.project_id, traceparent=telemetry.current_traceparent())
        self.dispatch(notice)
        return json_response({"export_id": export_id, "status": "queued"}, 202,
                             {"Location": f"/v1/exports/{export_id}"})

    # Persons ---------------------------------------------------------------

    def identifier(self, value: str) -> str:
        if not 1 <= len(value) <= self.settings.limits.max_id_chars:
            raise InvalidInput.field("id", f"must be 1 to {self.settings.limits.max_id_chars} characters")
        return value

    def persons(self, request: Request) -> Response:
        reader = self.reader(request)
        search = request.args.get("search") or None
        if search is not None and len(search) > self.settings.limits.max_id_chars:
            raise InvalidInput.field("search", f"must be at most {self.settings.limits.max_id_chars} characters")
        limit = parse_limit(request.args.getlist("limit"), 100)
        return json_response(persons.listing(self.services.db, self.services.ch, reader.project_id, search, limit))

    def person(self, request: Request, distinct_id: str) -> Response:
        reader = self.reader(request)
        found = persons.profile(self.services.db, self.services.ch, reader.project_id, self.identifier(distinct_id))
        if found is None:
            raise NotFound(f"nothing is known of {distinct_id[:80]!r} in this project")
        return json_response(found)

    def person_export(self, request: Request, distinct_id: str) -> Response:
        reader = self.reader(request)
        lines = persons.export_lines(self.services.db, self.services.ch, reader.project_id,
                                     self.identifier(distinct_id))
        first = next(lines)  # raises NotFound before the answer starts
        return Response(itertools.chain([first], lines), content_type="application/x-ndjson",
                        headers={"Content-Disposition": 'attachment; filename="pulse-person.ndjson"'},
                        direct_passthrough=True)

    def delete_person(self, request: Request, distinct_id: str) -> Response:
        reader = self.reader(request)
        if reader.role != "owner":
            raise Forbidden("only a project owner (signed in) may delete a person")
        suppress = (request.args.get("suppress") or "false").lower()
        if suppress not in ("true", "false"):
            raise InvalidInput.field("suppress", "must be true or false")
        found = persons.profile(self.services.db, self.services.ch, reader.project_id, self.identifier(distinct_id))
        if found is None:
            raise NotFound(f"nothing is known of {distinct_id[:80]!r} in this project")
        deletion_id = self.deletions.create(reader.project_id, found["person_id"], found["distinct_ids"],
                                            reader.subject, suppress == "true")
        self.dispatch(CloudEvent.new(PERSON_DELETION_REQUESTED, SOURCE,
                                     orjson.dumps({"deletion_id": deletion_id, "project_id": reader.project_id}),
                                     partitionkey=reader.project_id, traceparent=telemetry.current_traceparent()))
        return json_response({"deletion_id": deletion_id, "status": "queued"}, 202,
                             {"Location": f"/v1/deletions/{deletion_id}"})

    def deletion(self, request: Request, deletion_id: str) -> Response:
        reader = self.reader(request)
        try:
            deletion_id = str(uuid.UUID(deletion_id))
        except ValueError as exc:
            raise InvalidInput.field("deletion_id", "must be a UUID") from exc
        return json_response(self.deletions.get(reader.project_id, deletion_id).as_dict())

    def deletion_requested(self, request: Request) -> Response:
        events = receive(request.headers, request.get_data())
        unexpected = [e.type for e in events if e.type != PERSON_DELETION_REQUESTED]
        if unexpected:
            raise InvalidInput.field("type", f"expected {PERSON_DELETION_REQUESTED}, got {unexpected[0]}")
        return json_response({"ran": self.run_jobs(events)})

    def run_deletion(self, project_id: str, deletion_id: str) -> bool:
        return erasure.run_deletion(self.services.db, self.services.ch, project_id, deletion_id)

    def dispatch(self, notice: CloudEvent) -> None:
        """Send the request to the Broker (K_SINK); its Trigger brings it back to
        /_ce/export-requested. The one fallback, for an export function run
        without a sink (no SinkBinding, no K_SINK): run the job in a thread here."""
        if sink.publish(self.services.sink(self.name), notice, token=self.services.sink_token(self.name)):
            return
        log.warning("no K_SINK for export: running export %s in this process", notice.id)
        threading.Thread(target=self.run_jobs, args=([notice],), name="export-job", daemon=True).start()

    def export_requested(self, request: Request) -> Response:
        events = receive(request.headers, request.get_data())
        unexpected = [e.type for e in events if e.type != EXPORT_REQUESTED]
        if unexpected:
            raise InvalidInput.field("type", f"expected {EXPORT_REQUESTED}, got {unexpected[0]}")
        return json_response({"ran": self.run_jobs(events)})

    def run_jobs(self, events: list[CloudEvent]) -> int:
        ran = 0
        for event in events:
            data = event.json()
            job = "deletion_id" if event.type == PERSON_DELETION_REQUESTED else "export_id"
            if not isinstance(data, Mapping) or not all(isinstance(data.get(k), str) for k in (job, "project_id")):
                raise InvalidInput.field("data", f"must name {job} and project_id")
            run = self.run_deletion if job == "deletion_id" else self.run_job
            if run(data["project_id"], data[job]):
                ran += 1
        return ran

    def run_job(self, project_id: str, export_id: str) -> bool:
        """Run a queued job once (a redelivered request for a job that is running
        or done is a no-op). A request the checks refuse fails for good (False,
        no retry); any other failure is recorded, then raised for a retry. The
        job's ``error`` shows the client Pulse's own words, never a store's."""
        job = self.jobs.get(project_id, export_id)
        if not self.jobs.start(project_id, export_id):
            return False
        try:
            export = exporting.from_job_params(job.params, project_id, self.settings.max_range_days)
        except InvalidInput as exc:
            self.jobs.fail(export_id, exc.detail)
            return False
        try:
            rows = exporting.count(self.services.ch, export)
            name, size = exporting.write_file(self.services.ch, export, self.directory / project_id, export_id)
        except Exception as exc:
            log.warning("export %s failed", export_id, exc_info=True)
            self.jobs.fail(export_id, exc.detail if isinstance(exc, PulseError) and exc.status < 500
                           else f"the export failed on our side ({public_reason(exc)}); it is retried")
            raise
        self.jobs.finish(export_id, rows, size, name)
        telemetry.event("export written", export_id=export_id, rows=rows, bytes=size)
        return True

    def status(self, request: Request, export_id: str) -> Response:
        reader = self.reader(request)
        job = self.jobs.get(reader.project_id, export_id)
        return json_response(job.as_dict(f"/v1/exports/{export_id}/file"))

    def file(self, request: Request, export_id: str) -> Response:
        reader = self.reader(request)
        job = self.jobs.get(reader.project_id, export_id)
        if job.status != "done" or not job.file_name:
            raise Conflict(f"export {export_id} is {job.status}, not done")
        path = self.directory / reader.project_id / job.file_name
        fmt = exporting.FORMATS[job.format]
        return send_file(path, request.environ, mimetype=fmt.media_type, as_attachment=True,
                         download_name=f"pulse-export-{export_id}.{fmt.name}")


def job_params(body: bytes) -> dict[str, list[str]]:
    """A POST /v1/exports body as the query parameters GET /v1/export takes."""
    try:
        doc: Any = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise InvalidInput.field("body", f"is not valid JSON ({exc.msg})") from exc
    if not isinstance(doc, Mapping):
        raise InvalidInput.field("body", "must be a JSON object")
    params: dict[str, list[str]] = {}
    for name in ("format", "from", "to", "tz", "event_type", "project_id"):
        value = doc.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidInput.field(name, "must be a string")
        params[name] = [value]
    segment = doc.get("segment")
    segments = [segment] if isinstance(segment, str) else segment
    if segments is not None:
        if not isinstance(segments, list) or not all(isinstance(s, str) for s in segments):
            raise InvalidInput.field("segment", "must be a string or an array of strings")
        params["segment"] = segments
    return params


@functools.cache
def _function() -> Export:
    return Export(Services(Settings.load()))


def export(request: Request) -> Response:
    """functions-framework target."""
    return _function().handle(request)
