"""Streaming ``GET /v1/export`` to a file (``pulse export``), counting rows as
the bytes arrive. The file is written under a temporary name beside the
target and renamed when the last byte is in, so an interrupted export never
leaves a truncated file under the final name."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

import urllib3

CHUNK = 1 << 16


class RowCounter:
    """Rows in an export body as it streams: NDJSON lines; CSV records (newlines
    outside quotes) after the header; the JSON array's rows (one a line)."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.newlines = 0
        self.quoted = False
        self.bytes = 0

    def feed(self, data: bytes) -> int:
        """Count ``data``; the rows it completed."""
        before = self.rows
        self.bytes += len(data)
        if self.fmt == "csv":
            pieces = data.split(b'"')
            for i, piece in enumerate(pieces):
                if not self.quoted:
                    self.newlines += piece.count(b"\n")
                if i < len(pieces) - 1:
                    self.quoted = not self.quoted
        elif self.fmt in ("ndjson", "json"):
            self.newlines += data.count(b"\n")
        return self.rows - before

    @property
    def rows(self) -> int:
        if self.fmt == "csv":
            return max(0, self.newlines - 1)
        if self.fmt == "json":  # "[" row ",\n" row ... "\n]\n"; no rows is "[\n]\n"
            return 0 if self.bytes <= 4 else max(0, self.newlines - 1)
        return self.newlines


@dataclass
class Exported:
    path: str
    rows: int
    bytes: int


class ExportFailed(RuntimeError):
    pass


def export_file(host: str, api_key: str, params: Sequence[tuple[str, str]], output: str | None,
                progress: Callable[[int, int], None] = lambda _bytes, _rows: None,
                timeout_s: float = 3600) -> Exported:
    """Download the export to ``output`` (a path, ``-`` for stdout, or None for
    the name Pulse gives in ``Content-Disposition``)."""
    fmt = dict(params).get("format", "csv")
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=10, read=timeout_s))
    response = http.request("GET", host.rstrip("/") + "/v1/export?" + urlencode(list(params)),
                            headers={"X-API-Key": api_key}, preload_content=False)
    try:
        if response.status != 200:
            body = response.read(64 * 1024)
            try:
                detail: Any = json.loads(body).get("detail", body.decode(errors="replace"))
            except (ValueError, AttributeError):
                detail = body.decode(errors="replace")
            raise ExportFailed(f"HTTP {response.status}: {detail}")
        name = output or _attachment_name(response.headers.get("Content-Disposition", "")) or f"export.{fmt}"
        counter = RowCounter(fmt)
        if name == "-":
            _copy(response, sys.stdout.buffer, counter, progress)
        else:
            target = Path(name)
            partial = target.with_name(f".{target.name}.part")
            try:
                with partial.open("wb") as out:
                    _copy(response, out, counter, progress)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            os.replace(partial, target)
        rows = counter.rows if fmt != "parquet" or name == "-" else _parquet_rows(Path(name))
        return Exported(name, rows, counter.bytes)
    finally:
        response.release_conn()


def _copy(response: Any, out: IO[bytes], counter: RowCounter, progress: Callable[[int, int], None]) -> None:
    for chunk in response.stream(CHUNK):
        out.write(chunk)
        rows = counter.feed(chunk)
        progress(len(chunk), rows)
    out.flush()


def _attachment_name(header: str) -> str | None:
    match = re.search(r'filename="?([^";/\\]+)"?', header)
    return match.group(1) if match else None


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)
