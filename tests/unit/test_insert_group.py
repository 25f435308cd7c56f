"""Group commit of ClickHouse inserts: pure logic, with a recording writer."""

from __future__ import annotations

import threading
import time

from pulse.storage.clickhouse import _InsertGroup


class Writer:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.lock = threading.Lock()

    def __call__(self, body: bytes) -> None:
        with self.lock:
            self.writes.append(body)


def test_a_lone_insert_is_written_at_once() -> None:
    group, writer = _InsertGroup(1 << 20, linger_s=60), Writer()
    group.insert(b"a", writer)  # nobody announced: no waiting for the 60 s linger
    assert writer.writes == [b"a"]


def test_the_leader_waits_for_announced_inserts_and_writes_them_together() -> None:
    group, writer = _InsertGroup(1 << 20, linger_s=60), Writer()
    announcements = [group.announce() for _ in range(3)]
    threads = [threading.Thread(target=group.insert, args=(body, writer, a))
               for body, a in zip([b"1", b"2", b"3"], announcements, strict=True)]
    threads[0].start()
    time.sleep(0.2)
    assert writer.writes == []  # two more are announced: the leader waits
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(writer.writes) == 1
    assert sorted(writer.writes[0].split(b"\n")) == [b"1", b"2", b"3"]
    assert group.announced == 0


def test_an_announcement_withdrawn_without_insert_releases_the_leader() -> None:
    group, writer = _InsertGroup(1 << 20, linger_s=60), Writer()
    first = group.announce()
    second = group.announce()
    leader = threading.Thread(target=group.insert, args=(b"x", writer, first))
    leader.start()
    time.sleep(0.2)
    assert writer.writes == []
    with second:  # e.g. a redelivered batch found done: it never inserts
        pass
    leader.join(30)
    assert writer.writes == [b"x"]
    assert group.announced == 0


def test_an_announced_insert_that_never_comes_delays_the_leader_by_the_linger_at_most() -> None:
    group, writer = _InsertGroup(1 << 20, linger_s=0.3), Writer()
    group.announce()  # never inserted nor withdrawn
    leader = threading.Thread(target=group.insert, args=(b"y", writer))
    leader.start()
    leader.join(30)
    assert not leader.is_alive()
    assert writer.writes == [b"y"]


def test_a_failed_write_reaches_every_caller_in_the_group() -> None:
    group = _InsertGroup(1 << 20, linger_s=60)
    announcement = group.announce()
    errors: list[BaseException] = []

    def failing(body: bytes) -> None:
        raise RuntimeError("disk full")

    def insert(body: bytes, a: object) -> None:
        try:
            group.insert(body, failing, a)  # type: ignore[arg-type]
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=insert, args=(b"1", None)),
               threading.Thread(target=insert, args=(b"2", announcement))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [str(e) for e in errors] == ["disk full", "disk full"]
