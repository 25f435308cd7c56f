"""Batches that overlap: clients re-send events, the re-sends land in other
batches delivered at the same moment, a record is delivered several times at
once, and several persist replicas claim the same ids in different orders.
Counts stay exact and no delivery fails (see the protocol notes in
pulse/core/persisting.py for why claims cannot deadlock)."""

from __future__ import annotations

import random
import threading
import uuid
from typing import Any

from pulse.core.events import validate_events
from pulse.core.ingestion import encode_batch
from pulse.core.persisting import Persister
from pulse.settings import Limits
from tests.conftest import Api, Project, make_event, wait_persisted
from tests.integration.test_metrics import raw_source, scrape, value


def stored(pulse: Any, project_id: str) -> tuple[int, int]:
    rows = pulse.services.ch.rows(
        "SELECT count(), uniqExact(event_id) FROM events WHERE project_id = {p:UUID}", {"p": project_id})
    return int(rows[0][0]), int(rows[0][1])


def run_all(work: list[Any]) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(len(work))

    def run(job: Any) -> None:
        start.wait()
        try:
            job()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return errors


def failed_attempts(samples: dict[Any, float], route: str) -> float:
    return sum(v for (name, labels), v in samples.items()
               if name == "pulse_dispatch_failed_attempts_total" and dict(labels)["route"] == route)


def test_concurrent_batches_with_shuffled_overlapping_ids_fail_no_delivery(pulse: Any, project: Any) -> None:
    rng = random.Random(12)
    pool = [make_event(user_id=f"u{n % 50}") for n in range(2000)]
    batches = [rng.sample(pool, 250) for _ in range(24)]  # every id in ~3 batches, in shuffled orders
    redelivered = encode_batch(project.project_id, validate_events(rng.sample(pool, 200), Limits()).rows)
    source = raw_source(pulse).name
    before = scrape(pulse.url("persist"))
    answers: list[int] = []

    def client(mine: list[list[dict[str, Any]]]) -> None:
        for batch in mine:
            answers.append(project.api.post("/v1/events", {"events": batch}).status)

    def redeliver() -> None:  # the same record in the log three times: delivered at once
        for _ in range(3):
            pulse.services.producer.send(pulse.settings.raw_topic, project.project_id, redelivered)

    assert run_all([lambda m=batches[n::6]: client(m) for n in range(6)] + [redeliver]) == []
    assert answers == [202] * len(batches)
    wait_persisted(pulse)
    after = scrape(pulse.url("persist"))

    def moved(outcome: str) -> float:
        labels = {"route": source, "outcome": outcome}
        return value(after, "pulse_dispatch_deliveries_total", **labels) - value(
            before, "pulse_dispatch_deliveries_total", **labels)

    sent = {e["event_id"] for batch in batches for e in batch} | {
        e["event_id"] for e in redelivered.json()["events"]}
    assert stored(pulse, project.project_id) == (len(sent), len(sent))
    assert failed_attempts(after, source) - failed_attempts(before, source) == 0
    records = ingested(after, before, "count")  # concurrent requests may share a record
    assert ingested(after, before, "sum") == len(batches)
    assert [moved("delivered"), moved("exhausted"), moved("rejected")] == [records + 3, 0, 0]


def ingested(after: Any, before: Any, series: str) -> float:
    """Records ingest sent between two scrapes ("count"), or the requests they carried ("sum")."""
    name = f"pulse_ingest_record_requests_{series}"
    return value(after, name) - value(before, name)


def test_small_requests_sent_at_once_share_records_and_every_count_stays_exact(pulse: Any, project: Any) -> None:
    """Concurrent 50-event requests go out several to a record (pulse.core.ingestion):
    ids re-sent in requests sent at the same moment (so within one record, or
    in records persisted at once) and another project's requests at the same
    moment change no count, and no record mixes the projects."""
    from pulse.local.demo import create_demo_key

    other_id, other_key = create_demo_key(pulse.services, f"test-{uuid.uuid4().hex[:8]}")
    other = Project(other_id, other_key, Api(pulse.gateway_url, other_key))
    rng = random.Random(14)
    mine = [make_event(user_id=f"u{n % 40}") for n in range(1600)]
    theirs = [make_event(user_id=f"u{n % 40}") for n in range(400)]
    clients, rounds = 8, 4
    requests = [[mine[(r * clients + c) * 50:(r * clients + c + 1) * 50] for r in range(rounds)] for c in range(clients)]
    for c in range(clients):  # 5 events of the request the next client sends in the same round
        for r in range(rounds):
            neighbour = requests[(c + 1) % clients][r]
            requests[c][r] = requests[c][r] + rng.sample(neighbour[:50], 5)
            rng.shuffle(requests[c][r])
    their_requests = [[theirs[(r * 2 + c) * 50:(r * 2 + c + 1) * 50] for r in range(rounds)] for c in range(2)]
    source = raw_source(pulse).name
    before = scrape(pulse.url("persist"))
    answers: list[int] = []

    def client(api: Api, batches: list[list[dict[str, Any]]]) -> None:
        for batch in batches:
            answers.append(api.post("/v1/events", {"events": batch}).status)

    work = [lambda b=batches: client(project.api, b) for batches in requests]
    work += [lambda b=batches: client(other.api, b) for batches in their_requests]
    assert run_all(work) == []
    assert answers == [202] * (clients + 2) * rounds
    wait_persisted(pulse)
    after = scrape(pulse.url("persist"))

    assert stored(pulse, project.project_id) == (len(mine), len(mine))
    assert stored(pulse, other.project_id) == (len(theirs), len(theirs))
    for owner, events in ((project, mine), (other, theirs)):
        ids = pulse.services.ch.rows("SELECT toString(event_id) FROM events WHERE project_id = {p:UUID}",
                                     {"p": owner.project_id})
        assert {row[0] for row in ids} == {e["event_id"] for e in events}
    assert ingested(after, before, "sum") == (clients + 2) * rounds
    records = ingested(after, before, "count")
    assert records < (clients + 2) * rounds  # requests did share records
    assert failed_attempts(after, source) - failed_attempts(before, source) == 0
    delivered = value(after, "pulse_dispatch_deliveries_total", route=source, outcome="delivered") - value(
        before, "pulse_dispatch_deliveries_total", route=source, outcome="delivered")
    assert delivered == records


def test_replicas_claiming_the_same_ids_in_different_orders_neither_deadlock_nor_double(
        pulse: Any, project: Any) -> None:
    """Four persisters, each with its own claim transactions and lock session, as
    four replicas would be: the case where only the global key order prevents a
    deadlock."""
    rows = validate_events([make_event() for _ in range(1500)], Limits()).rows
    replicas = [Persister(pulse.services.db, pulse.services.ch) for _ in range(4)]
    received_at = "2026-01-01 00:00:00.000"
    outcomes: list[Any] = []
    sent: set[str] = set()
    same_id, same_rows = str(uuid.uuid4()), random.Random(13).sample(rows, 100)
    sent.update(r["event_id"] for r in same_rows)

    def sender(n: int) -> None:
        rng = random.Random(n)
        for _ in range(6):
            batch = rng.sample(rows, 200)
            sent.update(r["event_id"] for r in batch)
            outcomes.append(replicas[n % 4].persist(str(uuid.uuid4()), project.project_id, received_at, batch))

    def same_batch(n: int) -> None:  # one batch delivered to every replica at once
        outcomes.append(replicas[n].persist(same_id, project.project_id, received_at, same_rows))

    try:
        errors = run_all([lambda n=n: sender(n) for n in range(12)] + [lambda n=n: same_batch(n) for n in range(4)])
    finally:
        for replica in replicas:
            replica.locks.close()
    assert errors == []
    assert len(outcomes) == 12 * 6 + 4
    assert stored(pulse, project.project_id) == (len(sent), len(sent))
    ledger = pulse.services.db.run(
        "SELECT count(*) FROM event_ledger WHERE project_id = CAST(:p AS uuid)", p=project.project_id)[0][0]
    assert ledger == len(sent)
    first_deliveries = [o for o in outcomes if not o.redelivered]
    assert len(first_deliveries) == 12 * 6 + 1  # the batch sent to four replicas was stored by one
    assert sum(o.inserted for o in first_deliveries) == len(sent)  # each event owned by exactly one batch
