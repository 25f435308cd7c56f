"""Uploading a CSV or NDJSON file to ``POST /v1/import`` (used by ``pulse import``).

The file is hashed first and its SHA-256 declared (``Content-Digest``), so a
file Pulse already imported is answered ``duplicate`` before any row is
ingested; then it is streamed from disk, never held in memory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import urllib3

CHUNK = 1 << 20
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


class _Reading:
    """A file that reports how many bytes were read."""

    def __init__(self, f: IO[bytes], report: Callable[[int], None]) -> None:
        self.f = f
        self.report = report
        self.done = 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(CHUNK if size is None or size < 0 else size)
        self.done += len(data)
        self.report(self.done)
        return data

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(CHUNK):
            yield chunk


def progress_bar(total: int, out: IO[str] = sys.stderr) -> Callable[[int], None]:
    started = time.monotonic()
    last = [0.0]

    def report(done: int) -> None:
        now = time.monotonic()
        if now - last[0] < 0.2 and done < total:
            return
        last[0] = now
        share = done / total if total else 1.0
        filled = int(share * 30)
        rate = done / max(now - started, 1e-6) / 1e6
        out.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {share:6.1%} {done / 1e6:8.1f} MB {rate:6.1f} MB/s")
        if done >= total:
            out.write("  (waiting for Pulse to finish)\n")
        out.flush()

    return report


def import_file(path: Path, host: str, api_key: str, fmt: str | None = None,
                progress: Callable[[int], None] | None = None, timeout_s: float = 3600) -> tuple[int, Any]:
    """Upload ``path``; (HTTP status, decoded answer)."""
    fmt = fmt or guess_format(path)
    digest = sha256_of(path)
    size = path.stat().st_size
    headers = {
        "X-API-Key": api_key,
        "Content-Type": MEDIA_TYPES[fmt],
        "Content-Length": str(size),
        "Content-Digest": "sha-256=:" + base64.b64encode(bytes.fromhex(digest)).decode() + ":",
    }
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=10, read=timeout_s))
    with path.open("rb") as f:
        body = _Reading(f, progress or (lambda _done: None))
        response = http.request("POST", host.rstrip("/") + "/v1/import", body=body, headers=headers,
                                chunked=False, preload_content=True)
    try:
        answer = json.loads(response.data)
    except ValueError:
        answer = response.data.decode(errors="replace")
    return response.status, answer
