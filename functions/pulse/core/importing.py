"""Bulk import of CSV and NDJSON files, streamed: the file is read a line at a
time, validated event by event, and submitted in records of up to
``Limits.max_batch_events`` events, so memory stays flat whatever its size.

Re-imports are harmless by construction: a row without an ``event_id`` gets
``uuid5(project, sha256(every byte of the file up to and including that
row))``, so the same file always yields the same ids and the dedup ledger
drops a second copy of any row. On top of that, each imported file's SHA-256
is recorded in Postgres (``imports``) once its rows are all submitted:

- a client that declares the digest up front (``Content-Digest: sha-256=:<b64>:``,
  RFC 9530; ``pulse import`` does) gets ``{"status": "duplicate"}`` before any
  row is submitted, and nothing is re-ingested;
- without a declaration the digest is known at the end: the answer is still
  ``duplicate``, and the rows that were submitted again are all dropped by
  persist as duplicates (same ids);
- two concurrent imports of one file both submit; the ledger keeps one copy of
  each event and only one of them records the file, the other answers
  ``duplicate``.

A file is bounded as it is read (``Limits``): the bytes it inflates to, its
lines (empty ones too: a gzip of newlines is tiny on the wire and costly to
walk) and the time it takes. Past a limit the rest is not read: the rows
validated so far are submitted, and the answer is 413 naming the limit, with
the ``rows`` and ``accepted`` so far. The file is not recorded as imported;
sending the whole file again (within the limit) adds only the rows not yet
stored, since each row's id comes from the bytes before it.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from pulse.core.events import EventInvalid, normalize_event
from pulse.core.ingestion import Ingestor
from pulse.errors import FieldError, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from pulse.settings import Limits
from pulse.storage.postgres import Database

CSV_TYPES = ("text/csv", "application/csv")
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/json-lines")
CSV_COLUMNS = ("event_id", "occurred_at", "user_id", "anonymous_id", "session_id", "event_type", "properties",
               "path", "page_url")
MAX_LINE_BYTES = 64 * 1024
MAX_ERRORS_LISTED = 1000
READ_CHUNK = 1 << 16


@dataclass
class ImportResult:
    sha256: str = ""
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    duplicate: bool = False
    imported_at: str = ""
    errors_truncated: bool = False

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": "duplicate" if self.duplicate else "imported", "sha256": self.sha256,
                               "rows": self.rows, "accepted": self.accepted, "rejected": self.rejected}
        if self.duplicate:
            out["imported_at"] = self.imported_at
        else:
            out["errors"] = self.errors
            out["errors_truncated"] = self.errors_truncated
        return out


def declared_sha256(header: str | None) -> str | None:
    """The SHA-256 in an RFC 9530 ``Content-Digest`` header, as hex."""
    if not header:
        return None
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name.strip().lower() == "sha-256":
            value = value.strip()
            if not (value.startswith(":") and value.endswith(":")):
                raise InvalidInput.field("Content-Digest", "sha-256 must be :<base64>:")
            try:
                raw = base64.b64decode(value[1:-1], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidInput.field("Content-Digest", "sha-256 is not valid base64") from exc
            if len(raw) != 32:
                raise InvalidInput.field("Content-Digest", "sha-256 must be 32 bytes")
            return raw.hex()
    return None


def file_format(content_type: str | None) -> str:
    media = (content_type or "").split(";")[0].strip().lower()
    if media in CSV_TYPES:
        return "csv"
    if media in NDJSON_TYPES:
        return "ndjson"
    raise UnsupportedMediaType("Content-Type must be text/csv or application/x-ndjson")


class _Inflating(io.RawIOBase):
    """A gzip or deflate request body, decompressed as it is read."""

    def __init__(self, source: IO[bytes], encoding: str) -> None:
        self.source = source
        self.inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending:
            if self.inflater.eof:
                return 0
            raw = self.inflater.unconsumed_tail or self.source.read(READ_CHUNK)
            if not raw:
                return 0
            try:
                self.pending = self.inflater.decompress(raw, READ_CHUNK)
            except zlib.error as exc:
                raise InvalidInput.field("body", "is not valid compressed data") from exc
        size = min(len(buffer), len(self.pending))
        buffer[:size] = self.pending[:size]
        self.pending = self.pending[size:]
        return size


def body_stream(stream: IO[bytes], content_encoding: str | None) -> IO[bytes]:
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return stream
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding} is not supported (use gzip)")
    return io.BufferedReader(_Inflating(stream, encoding), READ_CHUNK)


class _Lines:
    """Physical lines of the body, hashing every byte read; an overlong line is
    consumed and reported as ``None``. Past a limit of ``Limits`` (bytes,
    lines, time) it raises ``PayloadTooLarge`` naming that limit."""

    def __init__(self, stream: IO[bytes], limits: Limits) -> None:
        self.stream = stream
        self.limits = limits
        self.hasher = hashlib.sha256()
        self.number = 0
        self.size = 0
        self.deadline = time.monotonic() + limits.max_import_seconds

    def _count(self, data: bytes) -> None:
        self.hasher.update(data)
        self.size += len(data)
        if self.size > self.limits.max_import_bytes:
            raise _over("bytes", f"the file inflates to more than {self.limits.max_import_bytes} bytes "
                        "(PULSE_MAX_IMPORT_BYTES)")
        if time.monotonic() > self.deadline:
            raise _over("duration", f"the import took more than {self.limits.max_import_seconds} s "
                        "(PULSE_MAX_IMPORT_SECONDS)")

    def __iter__(self) -> Iterator[bytes | None]:
        read, count, max_lines = self.stream.readline, self._count, self.limits.max_import_lines
        while True:
            line = read(MAX_LINE_BYTES + 1)
            if not line:
                return
            self.number += 1
            if self.number > max_lines:
                raise _over("lines", f"the file has more than {max_lines} lines (PULSE_MAX_IMPORT_LINES)")
            count(line)
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):
                    line = read(READ_CHUNK)
                    count(line)
                yield None
                continue
            yield line

    def drain(self) -> str:
        while chunk := self.stream.read(READ_CHUNK):
            self.number += chunk.count(b"\n")
            if self.number > self.limits.max_import_lines:
                raise _over("lines", f"the file has more than {self.limits.max_import_lines} lines "
                            "(PULSE_MAX_IMPORT_LINES)")
            self._count(chunk)
        return self.hasher.hexdigest()

    def row_id(self, namespace: uuid.UUID) -> str:
        return str(uuid.uuid5(namespace, self.hasher.copy().hexdigest()))


def _over(limit: str, detail: str) -> PayloadTooLarge:
    return PayloadTooLarge(detail, [FieldError(limit, detail)])


def csv_header(line: bytes) -> list[str]:
    try:
        names = next(csv.reader([line.decode("utf-8-sig")]))
    except (UnicodeDecodeError, csv.Error, StopIteration) as exc:
        raise InvalidInput.field("header", "the first line must be a CSV header") from exc
    names = [n.strip() for n in names]
    unknown = [n for n in names if n not in CSV_COLUMNS]
    if unknown:
        raise InvalidInput.field("header", f"unknown column {unknown[0][:64]!r}; use {', '.join(CSV_COLUMNS)}")
    if "event_type" not in names or not ({"user_id", "anonymous_id"} & set(names)):
        raise InvalidInput.field("header", "needs event_type and user_id (or anonymous_id)")
    if len(set(names)) != len(names):
        raise InvalidInput.field("header", "a column appears twice")
    return names


def csv_event(names: list[str], text: str) -> dict[str, Any]:
    cells = next(csv.reader([text]), [])
    if len(cells) != len(names):
        raise EventInvalid([FieldError("row", f"has {len(cells)} cells, the header has {len(names)}")])
    event: dict[str, Any] = {}
    for name, cell in zip(names, cells, strict=True):
        if cell == "":
            continue
        if name == "properties":
            try:
                event[name] = orjson.loads(cell)
            except orjson.JSONDecodeError as exc:
                raise EventInvalid([FieldError("properties", "must be a JSON object")]) from exc
        else:
            event[name] = cell
    return event


def ndjson_event(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise EventInvalid([FieldError("line", f"is not valid JSON ({exc.msg})")]) from exc


class ImportLedger:
    """The files already imported, by project and SHA-256."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def find(self, project_id: str, sha256: str) -> ImportResult | None:
        rows = self.db.run(
            "SELECT rows, accepted, rejected, imported_at FROM imports"
            " WHERE project_id = CAST(:p AS uuid) AND sha256 = :h", p=project_id, h=sha256)
        if not rows:
            return None
        count, accepted, rejected, at = rows[0]
        return ImportResult(sha256, count, accepted, rejected, duplicate=True,
                            imported_at=at.astimezone(UTC).isoformat())

    def record(self, project_id: str, result: ImportResult) -> bool:
        """Record a finished import; False when the file was recorded already."""
        rows = self.db.run(
            "INSERT INTO imports (project_id, sha256, rows, accepted, rejected)"
            " VALUES (CAST(:p AS uuid), :h, :n, :a, :r) ON CONFLICT DO NOTHING RETURNING 1",
            p=project_id, h=result.sha256, n=result.rows, a=result.accepted, r=result.rejected)
        return bool(rows)


class Importer:
    def __init__(self, ingestor: Ingestor, ledger: ImportLedger, limits: Limits) -> None:
        self.ingestor = ingestor
        self.ledger = ledger
        self.limits = limits

    def run(self, project_id: str, stream: IO[bytes], fmt: str, declared: str | None = None) -> ImportResult:
        lines = _Lines(stream, self.limits)
        if declared is not None:
            known = self.ledger.find(project_id, declared)
            if known is not None:
                if lines.drain() != declared:
                    raise InvalidInput.field("Content-Digest", "does not match the body")
                return known
        result = self._ingest(project_id, lines, fmt)
        if declared is not None and result.sha256 != declared:
            raise InvalidInput.field("Content-Digest", "does not match the body (its rows were imported "
                                     f"under sha256 {result.sha256})")
        if not self.ledger.record(project_id, result):
            known = self.ledger.find(project_id, result.sha256)
            return known or result
        return result

    def _ingest(self, project_id: str, lines: _Lines, fmt: str) -> ImportResult:
        result = ImportResult()
        pending: list[dict[str, str]] = []
        try:
            return self._read(project_id, lines, fmt, result, pending)
        except PayloadTooLarge as exc:  # a limit: keep what was read, say how much
            if pending:
                self._submit(project_id, pending, result)
            exc.extensions.update({"rows": result.rows, "accepted": result.accepted, "rejected": result.rejected})
            raise

    def _read(self, project_id: str, lines: _Lines, fmt: str, result: ImportResult,
              pending: list[dict[str, str]]) -> ImportResult:
        namespace = uuid.UUID(project_id)
        names: list[str] | None = None
        now = datetime.now(UTC)
        for line in lines:
            if line is None:
                result.rows += 1
                self._reject(result, lines.number, [FieldError("line", f"is longer than {MAX_LINE_BYTES} bytes")])
                continue
            if fmt == "csv" and names is None:
                names = csv_header(line)
                continue
            try:
                text = line.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                result.rows += 1
                self._reject(result, lines.number, [FieldError("line", "is not valid UTF-8")])
                continue
            if not text.strip():
                continue
            result.rows += 1
            try:
                raw = csv_event(names or [], text) if fmt == "csv" else ndjson_event(text)
                if isinstance(raw, dict) and raw.get("event_id") is None:
                    raw["event_id"] = lines.row_id(namespace)
                pending.append(normalize_event(raw, self.limits, now))
            except EventInvalid as exc:
                self._reject(result, lines.number, exc.errors)
                continue
            if len(pending) >= self.limits.max_batch_events:
                self._submit(project_id, pending, result)
                pending.clear()
                now = datetime.now(UTC)
        if fmt == "csv" and names is None:
            raise InvalidInput.field("header", "the file is empty: the first line must be a CSV header")
        if pending:
            self._submit(project_id, pending, result)
            pending.clear()
        result.sha256 = lines.hasher.hexdigest()
        return result

    def _submit(self, project_id: str, rows: list[dict[str, str]], result: ImportResult) -> None:
        self.ingestor.submit(project_id, list(rows), "import")
        result.accepted += len(rows)

    @staticmethod
    def _reject(result: ImportResult, line: int, errors: list[FieldError]) -> None:
        result.rejected += 1
        for error in errors:
            if len(result.errors) < MAX_ERRORS_LISTED:
                result.errors.append({"line": line, "field": error.field, "error": error.as_dict()["error"]})
            else:
                result.errors_truncated = True
