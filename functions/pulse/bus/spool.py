"""A write-ahead spool of ingest's records, for a broker that keeps them in
memory only (the embedded Tansu).

ingest appends each record to a spool file and answers 202 only when the
spool has it on disk *and* the broker acknowledged a record naming it. In
the broker the record travels by reference (a claim check): its CloudEvent
attributes plus ``pulsespool`` (``<segment>:<offset>:<length>``), with no
data; persist reads the data from the spool (``read``), which is on the same
machine in embedded mode. So the broker, which never frees a record, holds a
few hundred bytes per batch rather than the batch, and the batch's bytes
cross no socket between processes. The The ``fsync`` is shared by every request that reaches it at the same
moment (group commit, pulse.group_commit), so its cost is paid per group, not
per request. On start, ``pulse up`` hands whatever the spools hold to persist
before it accepts new events; persist is idempotent (a batch already done is
only reported), so a record that did reach the broker and persist before the
crash is not stored twice, and one that did not is stored now. While running,
a segment that no longer takes appends is deleted once every batch in it is
persisted.

Files: ``<dir>/<owner>-<sequence>.spool``, one owner per ingest process. Each
record is a frame: length and CRC-32C of the payload (little-endian u32 each),
then the payload: the CloudEvent's attributes as a JSON object, a newline, and
its data. Frames are written whole under a lock, in order, so a frame that
fails its length or CRC check (a write cut short by a power loss) is the end
of what was synced: nothing after it was acknowledged.

A record the dispatcher dead-letters goes to the dead-letter topic with its
data read back from the spool (so that topic stands alone), and a marker file
``dead/<batch id>`` lets the segment go as if the batch were persisted; so
does a record the broker did not acknowledge (ingest answered 503, the client
sends its events again), so that a broker outage does not pin segments.

Bounds: a segment takes appends for ``segment_s`` seconds or up to
``segment_bytes``; the spool holds at most ``max_bytes`` (appends beyond are
refused: ingest answers 503), which persist falling behind would otherwise
turn into unbounded disk use.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import crc32c
import orjson

from pulse import telemetry
from pulse.bus.cloudevents import CloudEvent
from pulse.errors import InvalidInput, Unavailable
from pulse.group_commit import GroupCommit

log = logging.getLogger("pulse.spool")
HEADER = struct.Struct("<II")
SUFFIX = ".spool"
ATTRIBUTE = "pulsespool"  # the CloudEvent extension naming a spooled record: <segment>:<offset>:<length>
SEGMENT_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*\.spool$")
BATCH_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
DEAD = "dead"


def encode(event: CloudEvent) -> bytes:
    payload = orjson.dumps(dict(event.attributes)) + b"\n" + event.data
    return HEADER.pack(len(payload), crc32c.crc32c(payload)) + payload


def _decode(payload: bytes) -> CloudEvent:
    attributes, _, body = payload.partition(b"\n")
    return CloudEvent(MappingProxyType(orjson.loads(attributes)), body)


def reference(event: CloudEvent, ref: str) -> CloudEvent:
    """The record the broker carries for a spooled one: its attributes and where it is."""
    return CloudEvent(MappingProxyType({**event.attributes, ATTRIBUTE: ref}), b"")


def read(directory: Path, ref: str) -> CloudEvent | None:
    """The spooled record a reference names; None if its segment is gone
    (deleted once every batch in it was persisted). InvalidInput for a
    reference that cannot name a record of this spool."""
    name, _, rest = ref.partition(":")
    offset_text, _, length_text = rest.partition(":")
    if not SEGMENT_NAME.match(name) or not offset_text.isdigit() or not length_text.isdigit():
        raise InvalidInput.field(ATTRIBUTE, "is not <segment>:<offset>:<length>")
    offset, length = int(offset_text), int(length_text)
    try:
        with open(directory / name, "rb") as file:
            frame = os.pread(file.fileno(), length, offset)
    except FileNotFoundError:
        return None
    if len(frame) != length or length < HEADER.size:
        raise InvalidInput.field(ATTRIBUTE, "names no whole record")
    size, checksum = HEADER.unpack_from(frame, 0)
    payload = frame[HEADER.size:]
    if size != len(payload) or crc32c.crc32c(payload) != checksum:
        raise InvalidInput.field(ATTRIBUTE, "names no whole record")
    return _decode(payload)


def resolve(directory: Path, event: CloudEvent) -> CloudEvent | None:
    """``event`` itself, or the spooled record it names (None if that is gone)."""
    ref = event.get(ATTRIBUTE)
    if not ref:
        return event
    spooled = read(directory, ref)
    if spooled is not None and spooled.id != event.id:
        raise InvalidInput.field(ATTRIBUTE, "names another record")
    return spooled


def mark_dead(directory: Path, batch_id: str) -> None:
    """The batch was dead-lettered: its segment may go as if it were persisted."""
    if BATCH_ID.match(batch_id):
        (directory / DEAD).mkdir(exist_ok=True)
        (directory / DEAD / batch_id).touch()


def read_segment(path: Path) -> Iterator[CloudEvent]:
    """The records of one segment, up to the first frame cut short."""
    data = path.read_bytes()
    position = 0
    while position + HEADER.size <= len(data):
        length, checksum = HEADER.unpack_from(data, position)
        start, end = position + HEADER.size, position + HEADER.size + length
        payload = data[start:end]
        if end > len(data) or crc32c.crc32c(payload) != checksum:
            log.warning("spool segment %s ends with a frame cut short at byte %d", path.name, position)
            return
        yield _decode(payload)
        position = end


def segments(directory: Path) -> list[Path]:
    """Every segment in the spool directory, oldest first per owner."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob(f"*{SUFFIX}"), key=lambda p: (p.stem.rsplit("-", 1)[0], _sequence(p)))


def _sequence(path: Path) -> int:
    tail = path.stem.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


@dataclass(eq=False)
class _Segment:
    path: Path
    fd: int
    opened: float
    size: int = 0
    unsynced: int = 0  # appends waiting for their fsync round (the file is open while any wait)
    sealed: bool = False  # takes no more appends
    batch_ids: list[str] = field(default_factory=list)


class Spool:
    """Appends for one owner; with ``persisted`` (batch ids → those persisted), a
    thread trims the segments every ``trim_every_s``."""

    def __init__(self, directory: Path, owner: str, segment_s: float = 5.0,
                 segment_bytes: int = 64 << 20, max_bytes: int = 1 << 30,
                 persisted: Callable[[list[str]], set[str]] | None = None, trim_every_s: float = 1.0) -> None:
        self.directory = directory
        self.owner = owner
        self.segment_s = segment_s
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sequence = itertools.count(1)
        self._segments: list[_Segment] = []
        self._syncs: GroupCommit[tuple[_Segment, ...], None] = GroupCommit(self._sync)
        directory.mkdir(parents=True, exist_ok=True)
        self._closing = threading.Event()
        self._trimmer: threading.Thread | None = None
        if persisted is not None:
            self._trimmer = threading.Thread(target=self._trim_loop, args=(persisted, trim_every_s),
                                             name=f"spool-trim-{owner}", daemon=True)
            self._trimmer.start()

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(s.size for s in self._segments)

    def append(self, event: CloudEvent) -> str:
        """The record's reference, once it is on disk; Unavailable if the spool is full."""
        ref, segment = self.write(event)
        self.sync(segment)
        return ref

    def write(self, event: CloudEvent) -> tuple[str, _Segment]:
        """Append the record (not yet synced): its reference, and what ``sync`` takes."""
        frame = encode(event)
        with self._lock:
            if sum(s.size for s in self._segments) + len(frame) > self.max_bytes:
                raise Unavailable(f"the ingest spool holds {self.max_bytes} bytes not yet persisted", 2)
            segment = self._current()
            try:
                if os.write(segment.fd, frame) != len(frame):
                    raise OSError("short write")
            except OSError as exc:
                segment.sealed = True  # a frame cut short ends its segment: later ones go to a new file
                raise Unavailable(f"the ingest spool cannot write: {exc}", 2) from exc
            ref = f"{segment.path.name}:{segment.size}:{len(frame)}"
            segment.size += len(frame)
            segment.unsynced += 1
            segment.batch_ids.append(event.id)
        return ref, segment

    def settle(self, batch_id: str) -> None:
        """The batch will not be persisted from here (refused): its segment need not wait for it."""
        mark_dead(self.directory, batch_id)

    def sync(self, *segments: _Segment) -> None:
        """Returns once what ``write`` appended is on disk: one segment per
        ``write`` (what each returned)."""
        with telemetry.SPOOL_SYNC_LATENCY.time():
            self._syncs.submit(segments)

    def _current(self) -> _Segment:
        live = self._segments[-1] if self._segments and not self._segments[-1].sealed else None
        if live is not None and (live.size >= self.segment_bytes or
                                 time.monotonic() - live.opened >= self.segment_s):
            live.sealed = True
            live = None
        if live is None:
            path = self.directory / f"{self.owner}-{next(self._sequence):08d}{SUFFIX}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
            _sync_directory(self.directory)  # the new file's name survives a power loss too
            live = _Segment(path, fd, time.monotonic())
            self._segments.append(live)
        return live

    def _sync(self, waiting: list[tuple[_Segment, ...]]) -> list[None]:
        """One fsync per segment for the appends of this round (all written before it began)."""
        appends = [segment for segments in waiting for segment in segments]
        try:
            for segment in dict.fromkeys(appends):
                os.fdatasync(segment.fd)
        finally:
            with self._lock:
                for segment in appends:
                    segment.unsynced -= 1
        return [None] * len(waiting)

    def trim(self, persisted: Callable[[list[str]], set[str]]) -> int:
        """Delete the sealed segments whose batches are all persisted; seal the
        live one first if it is older than ``segment_s``. The number deleted."""
        with self._lock:
            live = self._segments[-1] if self._segments and not self._segments[-1].sealed else None
            if live is not None and time.monotonic() - live.opened >= self.segment_s:
                live.sealed = True
            candidates = [s for s in self._segments if s.sealed and s.unsynced == 0]
        removed = 0
        dead = self.directory / DEAD
        for segment in candidates:
            waiting = set(segment.batch_ids) - {b for b in segment.batch_ids if (dead / b).exists()}
            if waiting and len(persisted(sorted(waiting))) < len(waiting):
                continue
            with self._lock:
                self._segments.remove(segment)
            os.close(segment.fd)
            segment.path.unlink(missing_ok=True)
            for batch_id in set(segment.batch_ids) - waiting:
                (dead / batch_id).unlink(missing_ok=True)
            removed += 1
        return removed

    def _trim_loop(self, persisted: Callable[[list[str]], set[str]], every_s: float) -> None:
        while not self._closing.wait(every_s):
            try:
                self.trim(persisted)
            except Exception:  # noqa: BLE001 - tried again next time; the spool only grows meanwhile
                log.warning("could not trim the spool", exc_info=True)

    def close(self) -> None:
        """Close the files; segments stay on disk until persisted (or replayed)."""
        self._closing.set()
        if self._trimmer is not None:
            self._trimmer.join(10)
        with self._lock:
            for segment in self._segments:
                os.close(segment.fd)
            self._segments = []


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
