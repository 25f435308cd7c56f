"""At start, before ingest takes requests: every record the ingest spools
hold (pulse.bus.spool) goes to persist, then the spool files are deleted.

A record whose batch is already done (it reached persist before the stop), or
was dead-lettered (a ``dead`` marker), is skipped; any other goes through persist's own idempotent steps, as a
redelivery would, so a batch that persist was working on when the process
died is completed, not stored twice. Records go to persist from several
threads at once, so persist groups their claims and inserts as it does for
the dispatcher. A record persist refuses as malformed goes to the
dead-letter topic, as the dispatcher would send it. A failure of anything
else (Postgres down) stops the start and leaves the spool as it was, for the
next start.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pulse.bus import spool
from pulse.bus.cloudevents import INGESTED, CloudEvent
from pulse.core.persisting import persisted_batches
from pulse.errors import InvalidInput
from pulse.persist import Persist

log = logging.getLogger("pulse.recovery")
THREADS = 16


def replay_spool(directory: Path, persist: Persist,
                 dead_letter: Callable[[CloudEvent, InvalidInput, str], None]) -> int:
    """The number of records persisted now (not found done)."""
    replayed = 0
    dead = directory / spool.DEAD
    for path in spool.segments(directory):
        events = list(spool.read_segment(path))
        done = persisted_batches(persist.services.db, [event.id for event in events])
        done |= {event.id for event in events if (dead / event.id).exists()}
        todo = [(index, event) for index, event in enumerate(events) if event.id not in done]

        def one(item: tuple[int, CloudEvent], source: str = path.name) -> None:
            index, event = item
            try:
                if event.type != INGESTED:
                    raise InvalidInput.field("type", f"expected {INGESTED}, got {event.type}")
                persist.persist_one(event)
            except InvalidInput as exc:
                dead_letter(event, exc, f"{source}:{index}")

        with ThreadPoolExecutor(THREADS, thread_name_prefix="spool-replay") as pool:
            list(pool.map(one, todo))
        replayed += len(todo)
        log.info("spool segment replayed", extra={"fields": {
            "segment": path.name, "records": len(events), "persisted_now": len(todo)}})
        path.unlink()
    if dead.is_dir():  # markers of batches in the segments just deleted
        shutil.rmtree(dead)
    return replayed
