"""Exports: a project's events, filtered, as CSV, JSON, NDJSON or Parquet.

ClickHouse formats the bytes and streams them (``ClickHouse.stream``); this
module builds the query, adds what ClickHouse's streamed formats lack (the CSV
header, the JSON array's brackets and commas) and keeps the async jobs'
state in Postgres (``exports``). Memory stays flat whatever the row count.

CSV cells that begin with ``= + - @`` (or a tab or carriage return) get a
leading ``'`` so a spreadsheet shows them as text instead of running them as
formulas (OWASP "CSV injection").
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from pulse.core.filters import Filters, condition, one, parse_filters
from pulse.errors import InvalidInput, NotFound
from pulse.storage.clickhouse import ClickHouse
from pulse.storage.postgres import Database

COLUMNS = ("event_id", "occurred_at", "event_type", "user_id", "anonymous_id", "session_id", "path", "properties")
TEXT_COLUMNS = ("event_type", "user_id", "anonymous_id", "session_id", "path", "properties")


@dataclass(frozen=True)
class Format:
    name: str
    clickhouse: str
    media_type: str


FORMATS = {
    "csv": Format("csv", "CSV", "text/csv; charset=utf-8"),
    "json": Format("json", "JSONEachRow", "application/json"),
    "ndjson": Format("ndjson", "JSONEachRow", "application/x-ndjson"),
    "parquet": Format("parquet", "Parquet", "application/vnd.apache.parquet"),
}


@dataclass(frozen=True)
class ExportRequest:
    format: Format
    filters: Filters

    @property
    def file_name(self) -> str:
        return f"pulse-events-{self.filters.first_day}-{self.filters.last_day}.{self.format.name}"

    def as_params(self) -> dict[str, Any]:
        """The request as query parameters, so a job can rebuild it."""
        f = self.filters
        params: dict[str, Any] = {"format": [self.format.name], "from": [f.start.isoformat()],
                                  "to": [(f.end).isoformat()], "tz": [f.tz],
                                  "segment": [f"{s.field}:{s.value}" for s in f.segments]}
        if f.event_type is not None:
            params["event_type"] = [f.event_type]
        return params


def parse_format(value: str | None) -> Format:
    name = (value or "csv").lower()
    if name not in FORMATS:
        raise InvalidInput.field("format", f"must be one of {', '.join(FORMATS)}")
    return FORMATS[name]


def parse_request(params: Mapping[str, Sequence[str]], project_id: str, max_range_days: int) -> ExportRequest:
    return ExportRequest(parse_format(one(params, "format")), parse_filters(params, project_id, max_range_days))


def from_job_params(params: Mapping[str, Sequence[str]], project_id: str, max_range_days: int) -> ExportRequest:
    """A stored job's request: its ``to`` is the exclusive end already."""
    request = parse_request(params, project_id, max_range_days)
    end = datetime.fromisoformat(params["to"][0])
    return ExportRequest(request.format, Filters(request.filters.project_id, request.filters.start, end,
                                                 request.filters.tz, request.filters.segments,
                                                 request.filters.event_type))


def _neutralised(column: str) -> str:
    return f"if(match({column}, '^[-=+@\\t\\r]'), concat('\\'', {column}), {column}) AS {column}"


def query(request: ExportRequest) -> tuple[str, dict[str, Any]]:
    where, params = condition(request.filters)
    timestamp = ("occurred_at" if request.format.name == "parquet"
                 else "concat(replaceOne(toString(occurred_at), ' ', 'T'), 'Z') AS occurred_at")
    texts = [_neutralised(c) if request.format.name == "csv" else c for c in TEXT_COLUMNS]
    select = ", ".join(["toString(event_id) AS event_id", timestamp, *texts])
    # The aliases reuse the column names: filter in a subquery so WHERE sees the columns.
    return f"SELECT {select} FROM (SELECT {', '.join(COLUMNS)} FROM events WHERE {where})", params


def _json_array(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """JSONEachRow bytes as one JSON array. A raw newline in JSONEachRow only
    ever ends a row (strings escape theirs), so rows are joined with commas."""
    yield b"["
    pending = False
    for chunk in chunks:
        if not chunk:
            continue
        out = b",\n" if pending else b""
        pending = chunk.endswith(b"\n")
        yield out + (chunk[:-1] if pending else chunk).replace(b"\n", b",\n")
    yield b"\n]\n"


def body(ch: ClickHouse, request: ExportRequest) -> Iterator[bytes]:
    """The file's bytes. The query runs now, so its errors surface before any
    byte is sent; the rest streams as the caller reads."""
    sql, params = query(request)
    chunks = ch.stream(sql, params, request.format.clickhouse)
    chunks = itertools.chain([next(chunks, b"")], chunks)
    if request.format.name == "csv":
        return itertools.chain([(",".join(COLUMNS) + "\n").encode()], chunks)
    if request.format.name == "json":
        return _json_array(chunks)
    return chunks


# Async jobs ------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    export_id: str
    project_id: str
    format: str
    params: dict[str, Any]
    status: str
    rows: int | None
    file_name: str | None
    error: str | None

    def as_dict(self, download_url: str | None) -> dict[str, Any]:
        return {"export_id": self.export_id, "status": self.status, "format": self.format, "rows": self.rows,
                "download_url": download_url if self.status == "done" else None, "error": self.error}


class Jobs:
    """Export jobs in Postgres; every lookup is scoped by project."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, request: ExportRequest) -> str:
        export_id = str(uuid.uuid4())
        self.db.run(
            "INSERT INTO exports (export_id, project_id, format, params, status)"
            " VALUES (CAST(:e AS uuid), CAST(:p AS uuid), :f, CAST(:params AS jsonb), 'queued')",
            e=export_id, p=request.filters.project_id, f=request.format.name,
            params=orjson.dumps(request.as_params()).decode())
        return export_id

    def get(self, project_id: str, export_id: str) -> Job:
        try:
            uuid.UUID(export_id)
        except ValueError as exc:
            raise NotFound("no such export") from exc
        rows = self.db.run(
            "SELECT export_id::text, project_id::text, format, params::text, status, rows, file_name, error"
            " FROM exports WHERE export_id = CAST(:e AS uuid) AND project_id = CAST(:p AS uuid)",
            e=export_id, p=project_id)
        if not rows:
            raise NotFound("no such export")
        e, p, f, params, status, count, name, error = rows[0]
        return Job(e, p, f, orjson.loads(params), status, count, name, error)

    def start(self, project_id: str, export_id: str) -> bool:
        """Claim a queued (or failed, retried) job; False if it is running or done."""
        rows = self.db.run(
            "UPDATE exports SET status = 'running', updated_at = now() WHERE export_id = CAST(:e AS uuid)"
            " AND project_id = CAST(:p AS uuid) AND status IN ('queued', 'failed') RETURNING 1",
            e=export_id, p=project_id)
        return bool(rows)

    def finish(self, export_id: str, rows: int, size: int, file_name: str) -> None:
        self.db.run("UPDATE exports SET status = 'done', rows = :r, bytes = :b, file_name = :n, error = NULL,"
                    " updated_at = now() WHERE export_id = CAST(:e AS uuid)",
                    e=export_id, r=rows, b=size, n=file_name)

    def fail(self, export_id: str, error: str) -> None:
        self.db.run("UPDATE exports SET status = 'failed', error = :m, updated_at = now()"
                    " WHERE export_id = CAST(:e AS uuid)", e=export_id, m=error[:500])


def count(ch: ClickHouse, request: ExportRequest) -> int:
    where, params = condition(request.filters)
    return int(ch.rows(f"SELECT count() FROM events WHERE {where}", params)[0][0])


def write_file(ch: ClickHouse, request: ExportRequest, directory: Path, export_id: str) -> tuple[str, int]:
    """Write the export under ``directory`` atomically: (file name, bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{export_id}.{request.format.name}"
    partial = directory / f".{name}.partial"
    size = 0
    with partial.open("wb") as out:
        for chunk in body(ch, request):
            out.write(chunk)
            size += len(chunk)
    os.replace(partial, directory / name)
    return name, size

