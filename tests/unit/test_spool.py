"""ingest's write-ahead spool (pulse.bus.spool) on a real directory: records
come back as written, a frame cut short ends a segment, segments go once
their batches are persisted, and a full spool refuses."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pulse.bus import spool
from pulse.bus.cloudevents import INGESTED, CloudEvent
from pulse.errors import InvalidInput, Unavailable


def record(n: int) -> CloudEvent:
    return CloudEvent.new(INGESTED, "/test", f'{{"n": {n}, "text": "line\\nbreak"}}'.encode(), partitionkey="p")


def test_records_come_back_as_written_in_order(tmp_path: Path) -> None:
    written = [record(n) for n in range(50)]
    box = spool.Spool(tmp_path, "owner")
    threads = [threading.Thread(target=box.append, args=(event,)) for event in written[:25]]
    for thread in threads:  # appends from many threads share their fsyncs
        thread.start()
    for thread in threads:
        thread.join(30)
    for event in written[25:]:
        box.append(event)
    box.close()
    read = [event for path in spool.segments(tmp_path) for event in spool.read_segment(path)]
    assert sorted(read, key=lambda e: e.id) == sorted(written, key=lambda e: e.id)
    assert read[25:] == written[25:]
    assert all(dict(e.attributes) == dict(w.attributes) and e.data == w.data
               for e, w in zip(read[25:], written[25:], strict=True))


def test_a_frame_cut_short_ends_the_segment(tmp_path: Path) -> None:
    box = spool.Spool(tmp_path, "owner")
    for n in range(3):
        box.append(record(n))
    box.close()
    [path] = spool.segments(tmp_path)
    whole = path.read_bytes()
    path.write_bytes(whole[:-5])  # the last write cut short
    assert [e.data for e in spool.read_segment(path)] == [record(n).data for n in range(2)]
    corrupt = bytearray(whole)
    corrupt[len(spool.encode(record(0))) + 12] ^= 0xFF  # a flipped byte in the second frame
    path.write_bytes(bytes(corrupt))
    assert len(list(spool.read_segment(path))) == 1


def test_a_segment_goes_once_every_batch_in_it_is_persisted(tmp_path: Path) -> None:
    box = spool.Spool(tmp_path, "owner", segment_s=3600)
    events = [record(n) for n in range(4)]
    for event in events[:2]:
        box.append(event)
    box._segments[-1].sealed = True  # the next append starts a second segment
    for event in events[2:]:
        box.append(event)
    persisted: set[str] = {events[0].id}
    assert box.trim(lambda ids: persisted & set(ids)) == 0  # half of the first segment is persisted
    persisted.add(events[1].id)
    assert box.trim(lambda ids: persisted & set(ids)) == 1
    assert [e.id for p in spool.segments(tmp_path) for e in spool.read_segment(p)] == [e.id for e in events[2:]]
    persisted.update(e.id for e in events)
    assert box.trim(lambda ids: persisted & set(ids)) == 0  # the live segment stays until it is sealed
    box.segment_s = 0
    assert box.trim(lambda ids: persisted & set(ids)) == 1
    assert spool.segments(tmp_path) == [] and box.bytes == 0
    box.close()


def test_a_full_spool_refuses_rather_than_grows(tmp_path: Path) -> None:
    one = len(spool.encode(record(0)))
    box = spool.Spool(tmp_path, "owner", max_bytes=2 * one)
    box.append(record(0))
    box.append(record(1))
    with pytest.raises(Unavailable) as refused:
        box.append(record(2))
    assert refused.value.status == 503 and refused.value.retry_after_s >= 1
    box.close()


def test_the_broker_carries_a_reference_and_persist_reads_the_record_back(tmp_path: Path) -> None:
    box = spool.Spool(tmp_path, "owner")
    events = [record(n) for n in range(3)]
    refs = [box.append(event) for event in events]
    carried = spool.reference(events[1], refs[1])
    assert carried.data == b"" and carried.id == events[1].id
    back = spool.resolve(tmp_path, carried)
    assert back is not None and back.data == events[1].data and dict(back.attributes) == dict(events[1].attributes)
    assert spool.resolve(tmp_path, events[0]) is events[0]  # a record carried whole is itself
    with pytest.raises(InvalidInput):  # a reference to another record's place
        spool.resolve(tmp_path, spool.reference(events[0], refs[2]))
    for bad in ("../etc/passwd:0:10", refs[0].rsplit(":", 1)[0] + ":3", "x.spool:a:b"):
        with pytest.raises(InvalidInput):
            spool.read(tmp_path, bad)
    box._segments[-1].sealed = True
    assert box.trim(lambda ids: set(ids)) == 1  # every batch persisted: the segment goes
    assert spool.resolve(tmp_path, carried) is None  # and a late redelivery learns it is gone
    box.close()


def test_a_dead_lettered_or_refused_batch_lets_its_segment_go(tmp_path: Path) -> None:
    box = spool.Spool(tmp_path, "owner")
    poison, refused, fine = record(1), record(2), record(3)
    for event in (poison, refused, fine):
        box.append(event)
    box._segments[-1].sealed = True
    assert box.trim(lambda ids: {fine.id} & set(ids)) == 0
    spool.mark_dead(tmp_path, poison.id)  # the dispatcher dead-lettered it
    assert box.trim(lambda ids: {fine.id} & set(ids)) == 0
    box.settle(refused.id)  # the broker never acknowledged it: the client was answered 503
    assert box.trim(lambda ids: {fine.id} & set(ids)) == 1
    assert not (tmp_path / spool.DEAD / poison.id).exists()
    box.close()
