"""Group commit (pulse.group_commit) and the ClickHouse insert group built on it:
pure logic, with a recording writer."""

from __future__ import annotations

import threading
import time

from pulse.group_commit import GroupCommit
from pulse.storage.clickhouse import insert_group


class Writer:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.lock = threading.Lock()

    def __call__(self, body: bytes) -> None:
        with self.lock:
            self.writes.append(body)


def test_a_lone_insert_is_written_at_once() -> None:
    writer = Writer()
    group = insert_group(writer, 1 << 20, linger_s=60)
    group.submit(b"a")  # nobody announced: no waiting for the 60 s linger
    assert writer.writes == [b"a"]


def test_the_leader_waits_for_announced_inserts_and_writes_them_together() -> None:
    writer = Writer()
    group = insert_group(writer, 1 << 20, linger_s=60)
    announcements = [group.announce() for _ in range(3)]
    threads = [threading.Thread(target=group.submit, args=(body, a))
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
    writer = Writer()
    group = insert_group(writer, 1 << 20, linger_s=60)
    first = group.announce()
    second = group.announce()
    leader = threading.Thread(target=group.submit, args=(b"x", first))
    leader.start()
    time.sleep(0.2)
    assert writer.writes == []
    with second:  # e.g. a redelivered batch found done: it never inserts
        pass
    leader.join(30)
    assert writer.writes == [b"x"]
    assert group.announced == 0


def test_an_announced_insert_that_never_comes_delays_the_leader_by_the_linger_at_most() -> None:
    writer = Writer()
    group = insert_group(writer, 1 << 20, linger_s=0.3)
    group.announce()  # never inserted nor withdrawn
    leader = threading.Thread(target=group.submit, args=(b"y",))
    leader.start()
    leader.join(30)
    assert not leader.is_alive()
    assert writer.writes == [b"y"]


def test_a_failed_write_reaches_every_caller_in_the_group() -> None:
    def failing(body: bytes) -> None:
        raise RuntimeError("disk full")

    group = insert_group(failing, 1 << 20, linger_s=60)
    announcement = group.announce()
    errors: list[BaseException] = []

    def insert(body: bytes, a: object) -> None:
        try:
            group.submit(body, a)  # type: ignore[arg-type]
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=insert, args=(b"1", None)),
               threading.Thread(target=insert, args=(b"2", announcement))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [str(e) for e in errors] == ["disk full", "disk full"]


def test_callers_arriving_during_a_round_share_the_next_one_and_each_gets_its_own_result() -> None:
    entered, release = threading.Event(), threading.Event()
    rounds: list[list[int]] = []

    def work(items: list[int]) -> list[int]:
        rounds.append(list(items))
        if len(rounds) == 1:
            entered.set()
            release.wait(30)
        return [item * 10 for item in items]

    group: GroupCommit[int, int] = GroupCommit(work)
    results: dict[int, int] = {}

    def call(n: int) -> None:
        results[n] = group.submit(n)

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert entered.wait(30)
    others = [threading.Thread(target=call, args=(n,)) for n in range(1, 6)]
    for thread in others:
        thread.start()
    while len(group._queue) < 5:  # all five queued behind the running round
        time.sleep(0.01)
    release.set()
    for thread in [first, *others]:
        thread.join(30)
    assert rounds[0] == [0] and sorted(rounds[1]) == [1, 2, 3, 4, 5] and len(rounds) == 2
    assert results == {n: n * 10 for n in range(6)}


def test_a_round_takes_at_most_max_size_and_the_rest_follow() -> None:
    entered, release = threading.Event(), threading.Event()
    rounds: list[list[int]] = []

    def work(items: list[int]) -> list[None]:
        rounds.append(list(items))
        if len(rounds) == 1:
            entered.set()
            release.wait(30)
        return [None] * len(items)

    group: GroupCommit[int, None] = GroupCommit(work, max_size=10, size=lambda n: n)
    first = threading.Thread(target=group.submit, args=(1,))
    first.start()
    assert entered.wait(30)
    others = [threading.Thread(target=group.submit, args=(n,)) for n in (4, 4, 4, 9)]
    for thread in others:
        thread.start()
    while len(group._queue) < 4:
        time.sleep(0.01)
    release.set()
    for thread in [first, *others]:
        thread.join(30)
    assert all(sum(r) <= 10 for r in rounds)
    assert sorted(n for r in rounds for n in r) == [1, 4, 4, 4, 9]
    assert not group._busy and not group._queue
