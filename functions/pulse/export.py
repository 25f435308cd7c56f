"""export — HTTP function: streamed downloads, and async export jobs run on a
``dev.pulse.export.requested`` CloudEvent (routes per API.md)."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

from pulse import telemetry
from pulse.bus import sink
from pulse.bus.cloudevents import EXPORT_REQUESTED, CloudEvent, receive
from pulse.core import exporting
from pulse.core.filters import one
from pulse.errors import Conflict, InvalidInput, PulseError, public_reason
from pulse.security.access import Reader
from pulse.services import Services
from pulse.settings import Settings
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
        super().__init__(services.readiness(self.name), services.event_auth(self.name))

    def routes(self) -> Iterable[Route]:
        return [
            Route("GET", "/v1/export", self.download, "export"),
            Route("POST", "/v1/exports", self.request_export, "exports-create"),
            Route("GET", "/v1/exports/<export_id>", self.status, "exports-status"),
            Route("GET", "/v1/exports/<export_id>/file", self.file, "exports-file"),
            Route("POST", "/_ce/export-requested", self.export_requested, "ce-export-requested"),
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
            if not isinstance(data, Mapping) or not all(isinstance(data.get(k), str)
                                                        for k in ("export_id", "project_id")):
                raise InvalidInput.field("data", "must name export_id and project_id")
            if self.run_job(data["project_id"], data["export_id"]):
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
