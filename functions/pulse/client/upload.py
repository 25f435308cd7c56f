"""Uploading a CSV or NDJSON file to ``POST /v1/import`` (``pulse import``).

A file is sent in parts of about ``PART_BYTES``, cut at line ends, each part
one request: a CSV part after the first starts with the file's header line,
so each is a valid import of its own. Each part declares its SHA-256
(``Content-Digest``), so a part Pulse has already imported is answered
``duplicate`` and nothing of it is ingested again; a file no larger than one
part is sent as it is, byte for byte.

Resuming: the parts Pulse answered are written to a checkpoint file (under
``$XDG_STATE_HOME/pulse/imports``, one per file, address and key) as they
complete. Run the same command again after an interruption and those parts
are skipped; the part that was in flight is sent again whole. Its rows that
already reached Pulse are harmless: a row without an ``event_id`` gets the
same id from the same part bytes (see pulse.core.importing), and the dedup
ledger stores each id once. The part size is part of the plan, recorded in the
checkpoint: resume with the same ``--part-bytes``.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import urllib3

CHUNK = 1 << 20
PART_BYTES = 8 << 20
MEDIA_TYPES = {"csv": "text/csv", "ndjson": "application/x-ndjson"}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def guess_format(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("ndjson", "jsonl"):
        return "ndjson"
    if suffix == "csv":
        return "csv"
    raise ValueError(f"{path.name}: cannot tell the format from the extension; pass --format csv|ndjson")


def content_digest(hex_sha256: str) -> str:
    return "sha-256=:" + base64.b64encode(bytes.fromhex(hex_sha256)).decode() + ":"


class _Reading:
    """A body that reports each piece read."""

    def __init__(self, pieces: Iterator[bytes], report: Callable[[bytes], None]) -> None:
        self.pieces = pieces
        self.report = report
        self.pending = b""

    def read(self, size: int = -1) -> bytes:
        want = CHUNK if size is None or size < 0 else size
        while len(self.pending) < want:
            piece = next(self.pieces, b"")
            if not piece:
                break
            self.pending += piece
        data, self.pending = self.pending[:want], self.pending[want:]
        if data:
            self.report(data)
        return data

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(CHUNK):
            yield chunk


def _post(host: str, api_key: str, fmt: str, digest: str, size: int, pieces: Iterator[bytes],
          report: Callable[[bytes], None], timeout_s: float) -> tuple[int, Any]:
    headers = {"X-API-Key": api_key, "Content-Type": MEDIA_TYPES[fmt], "Content-Length": str(size),
               "Content-Digest": content_digest(digest)}
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=10, read=timeout_s))
    response = http.request("POST", host.rstrip("/") + "/v1/import", body=_Reading(pieces, report),
                            headers=headers, chunked=False, preload_content=True)
    try:
        answer = json.loads(response.data)
    except ValueError:
        answer = response.data.decode(errors="replace")
    return response.status, answer


def _file_pieces(path: Path, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(start)
        left = (end if end is not None else path.stat().st_size) - start
        while left > 0 and (chunk := f.read(min(CHUNK, left))):
            left -= len(chunk)
            yield chunk


def import_file(path: Path, host: str, api_key: str, fmt: str | None = None,
                report: Callable[[bytes], None] | None = None, timeout_s: float = 3600) -> tuple[int, Any]:
    """Upload ``path`` whole, in one request; (HTTP status, decoded answer)."""
    return _post(host, api_key, fmt or guess_format(path), sha256_of(path), path.stat().st_size,
                 _file_pieces(path), report or (lambda _data: None), timeout_s)


@dataclass(frozen=True)
class Part:
    index: int
    start: int  # byte offsets in the file
    end: int
    first_line: int  # the file's line number of the part's first line
    lines: int  # lines of the file in the part (the header of a later CSV part not counted)
    sha256: str  # of the bytes sent: the header line first, for a later CSV part


@dataclass
class Plan:
    path: Path
    fmt: str
    sha256: str
    size: int
    header: bytes
    part_bytes: int
    parts: list[Part] = field(default_factory=list)

    @property
    def rows(self) -> int:
        """Lines after the header (blank lines included; Pulse does not count those)."""
        return max(0, sum(p.lines for p in self.parts) - (1 if self.fmt == "csv" else 0))

    def body(self, part: Part) -> tuple[int, Iterator[bytes]]:
        prefix = self.header if (self.fmt == "csv" and part.index > 0) else b""
        pieces = _file_pieces(self.path, part.start, part.end)
        return len(prefix) + part.end - part.start, itertools.chain([prefix], pieces) if prefix else pieces

    def file_line(self, part: Part, line: int) -> int:
        """The file's line number of a part's line ``line`` (as Pulse numbers them)."""
        return part.first_line + line - 1 - (1 if self.fmt == "csv" and part.index > 0 else 0)


def plan(path: Path, fmt: str, part_bytes: int = PART_BYTES) -> Plan:
    """Read the file once: its SHA-256, its parts cut at line ends, each part's digest."""
    if part_bytes < 1024:
        raise ValueError("a part must be at least 1024 bytes")
    whole = hashlib.sha256()
    out = Plan(path, fmt, "", path.stat().st_size, b"", part_bytes)
    with path.open("rb") as f:
        if fmt == "csv":
            out.header = f.readline()
            f.seek(0)
        start, line = 0, 1
        if out.size == 0:
            out.parts.append(Part(0, 0, 0, 1, 0, hashlib.sha256().hexdigest()))
        while start < out.size:
            hasher = hashlib.sha256(out.header if fmt == "csv" and out.parts else b"")
            f.seek(start)
            end, lines = start, 0
            while end - start < part_bytes:
                data = f.read(min(CHUNK, part_bytes - (end - start)))
                if not data:
                    break
                hasher.update(data)
                whole.update(data)
                end += len(data)
                lines += data.count(b"\n")
            if end < out.size and not _at_line_end(f, end):
                rest = f.readline()  # finish the line the part stopped in
                hasher.update(rest)
                whole.update(rest)
                end += len(rest)
                lines += rest.endswith(b"\n")
            if end == out.size and not _at_line_end(f, end):
                lines += 1  # the last line has no newline
            out.parts.append(Part(len(out.parts), start, end, line, lines, hasher.hexdigest()))
            start, line = end, line + lines
    out.sha256 = whole.hexdigest()
    return out


def _at_line_end(f: IO[bytes], offset: int) -> bool:
    f.seek(offset - 1)
    at_end = f.read(1) == b"\n"
    f.seek(offset)
    return at_end


def checkpoint_path(plan_: Plan, host: str, api_key: str, state_home: Path | None = None) -> Path:
    """Where the progress of this file, to this Pulse with this key, is kept."""
    base = state_home or Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    name = hashlib.sha256(f"{host.rstrip('/')}\n{api_key}\n{plan_.sha256}\n{plan_.part_bytes}".encode()).hexdigest()
    return base / "pulse" / "imports" / f"{name[:32]}.json"


@dataclass
class Outcome:
    status: str = "imported"  # imported | duplicate | failed
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicate_parts: int = 0
    resumed_parts: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    failure: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Checkpoint:
    """The answers of the parts done so far, in a small JSON file."""

    def __init__(self, path: Path, plan_: Plan) -> None:
        self.path = path
        self.plan = plan_
        self.done: dict[int, dict[str, Any]] = {}
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except ValueError:
                saved = {}
            if saved.get("sha256") == plan_.sha256 and saved.get("part_bytes") == plan_.part_bytes:
                self.done = {int(k): v for k, v in saved.get("parts", {}).items()}

    def record(self, part: Part, answer: dict[str, Any]) -> None:
        self.done[part.index] = {k: answer.get(k) for k in ("status", "rows", "accepted", "rejected", "errors")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"file": str(self.plan.path), "sha256": self.plan.sha256,
                                         "part_bytes": self.plan.part_bytes, "parts": self.done}))
        os.replace(temporary, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def import_parts(plan_: Plan, host: str, api_key: str, checkpoint: Checkpoint,
                 report: Callable[[bytes], None] = lambda _data: None,
                 part_done: Callable[[Part], None] = lambda _part: None, timeout_s: float = 3600) -> Outcome:
    """Send every part not yet done (``report`` sees each piece sent, ``part_done``
    each part answered or done before); stop at the first part Pulse refuses."""
    outcome = Outcome()
    for part in plan_.parts:
        answer = checkpoint.done.get(part.index)
        if answer is not None:
            outcome.resumed_parts += 1
        else:
            size, pieces = plan_.body(part)
            status, answer = _post(host, api_key, plan_.fmt, part.sha256, size, pieces, report, timeout_s)
            if status != 200 or not isinstance(answer, dict):
                outcome.status = "failed"
                detail = answer.get("detail") if isinstance(answer, dict) else str(answer)[:300]
                outcome.failure = f"part {part.index + 1} of {len(plan_.parts)}: HTTP {status}: {detail}"
                return outcome
            checkpoint.record(part, answer)
        part_done(part)
        outcome.rows += int(answer.get("rows") or 0)
        outcome.accepted += int(answer.get("accepted") or 0)
        outcome.rejected += int(answer.get("rejected") or 0)
        if answer.get("status") == "duplicate":
            outcome.duplicate_parts += 1
        outcome.errors += [{**e, "line": plan_.file_line(part, int(e["line"]))} for e in answer.get("errors") or []]
    if plan_.parts and outcome.duplicate_parts == len(plan_.parts):
        outcome.status = "duplicate"
    checkpoint.remove()
    return outcome
