"""Group commit: what many threads ask for at once, done as one operation.

A caller ``submit``s an item and waits for its result. Whoever finds no round
running leads one: it takes what is queued (up to ``max_size``), calls
``work(items)`` once and hands every caller its own result; if ``work``
raises, every caller of that round gets the error. Callers that arrive while
a round runs queue for the next, so rounds grow with the load by themselves
and a caller alone never waits for anyone. A leader whose own item is done
hands the lead to the first caller still waiting, so nobody serves the rounds
of others for long.

A caller may ``announce`` an item it is about to submit (as a ``with`` block
around the work that leads to it). A leader then waits, up to ``linger_s``,
for the announced items before running the round: worth it when each run has
a fixed cost whatever its size (every ClickHouse insert writes a new part).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Announcement:
    """An item a caller means to submit; leaving the ``with`` block, or the
    submit itself, ends it."""

    def __init__(self, group: GroupCommit[Any, Any]) -> None:
        self.group = group
        self.live = True

    def __enter__(self) -> Announcement:
        return self

    def __exit__(self, *exc: object) -> None:
        self.group.withdraw(self)


class _Ticket(Generic[T, R]):
    __slots__ = ("item", "result", "error", "finished", "lead", "wake")

    def __init__(self, item: T) -> None:
        self.item = item
        self.result: R | None = None
        self.error: BaseException | None = None
        self.finished = False
        self.lead = False
        self.wake = threading.Event()


class GroupCommit(Generic[T, R]):
    def __init__(self, work: Callable[[list[T]], Sequence[R]], *, max_size: int = 1 << 62,
                 size: Callable[[T], int] = lambda item: 1, linger_s: float = 0.0) -> None:
        self.work = work
        self.max_size = max_size
        self.size = size
        self.linger_s = linger_s
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._queue: deque[_Ticket[T, R]] = deque()
        self._busy = False
        self.announced = 0
        self.rounds = 0  # rounds run so far (for tests and metrics)

    def announce(self) -> Announcement:
        with self._lock:
            self.announced += 1
        return Announcement(self)

    def withdraw(self, announcement: Announcement) -> None:
        with self._lock:
            self._take_back(announcement)

    def _take_back(self, announcement: Announcement | None) -> None:
        if announcement is not None and announcement.live:
            announcement.live = False
            self.announced -= 1
            self._changed.notify_all()

    def submit(self, item: T, announcement: Announcement | None = None) -> R:
        ticket: _Ticket[T, R] = _Ticket(item)
        with self._lock:
            self._queue.append(ticket)
            self._take_back(announcement)
            ticket.lead = not self._busy
            self._busy = True
            self._changed.notify_all()
        if not ticket.lead:
            ticket.wake.wait()
        while not ticket.finished:  # leading: rounds until our own item is done
            self._round()
        if ticket.lead:
            self._hand_over()
        if ticket.error is not None:
            raise ticket.error
        return ticket.result  # type: ignore[return-value]

    def _round(self) -> None:
        with self._lock:
            deadline = time.monotonic() + self.linger_s
            while (self.announced and sum(self.size(t.item) for t in self._queue) < self.max_size
                   and (left := deadline - time.monotonic()) > 0):
                self._changed.wait(left)
            taken: list[_Ticket[T, R]] = []
            total = 0
            while self._queue and (not taken or total + self.size(self._queue[0].item) <= self.max_size):
                ticket = self._queue.popleft()
                taken.append(ticket)
                total += self.size(ticket.item)
            self.rounds += 1
        try:
            results = self.work([t.item for t in taken])
            if len(results) != len(taken):
                raise RuntimeError(f"group work returned {len(results)} results for {len(taken)} items")
            for ticket, result in zip(taken, results, strict=True):
                ticket.result = result
        except BaseException as exc:  # noqa: BLE001 - handed to every caller of the round
            for ticket in taken:
                ticket.error = exc
        for ticket in taken:
            ticket.finished = True
            if not ticket.lead:
                ticket.wake.set()

    def _hand_over(self) -> None:
        with self._lock:
            if self._queue:
                successor = self._queue[0]
                successor.lead = True
                successor.wake.set()
            else:
                self._busy = False
