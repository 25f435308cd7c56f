"""Capacity inputs for docs/scaling.md: CPU per event of each part of Pulse,
measured on ``pulse bench``'s own workload, and bytes on disk per event.

Runs the batched part of ``pulse bench`` (pulse.bench: the same events, batch
size and client processes, Pulse embedded with ingest in a process of its
own) and reads, right before and right after it, the CPU time of:

- the ingest process(es): the ingest function;
- the Pulse process: persist, the dispatcher that delivers Kafka records to
  it, the gateway, and chDB's work for the inserts (``events``, its seven
  materialized views, background merges);
- Postgres (the ledger; its server and every backend) and the
  Kafka-protocol broker (Tansu).

The chDB part is then measured on its own: the same rows inserted straight
into a fresh chDB in batches of the size persist writes (``--insert-rows``),
by the same client code (``ClickHouse.insert_json_rows``); the Pulse process
less that is persist, the dispatcher and the gateway. In the cluster, the
first runs in persist's pods and the second on the ClickHouse servers.

CPU seconds are what a run costs whatever else the machine does; divided by
the events they give microseconds of one core per event, and their inverse
the events per second one core sustains. The wall-clock rate is printed too,
but on a shared machine only the CPU figures carry over. Then it prints the
bytes on disk per event of every table (``system.parts``), after merges.

    .venv/bin/python bench/capacity.py [--events 200000] [--batch 1000] [--clients 4]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "functions"))

from pulse.bench import _run  # noqa: E402
from pulse.core.events import EVENT_COLUMNS  # noqa: E402
from pulse.local.demo import sample_events  # noqa: E402
from pulse.local.runtime import Runtime  # noqa: E402
from pulse.settings import Settings  # noqa: E402

STORAGE = ("SELECT table, sum(rows), sum(bytes_on_disk), sum(data_uncompressed_bytes) FROM system.parts"
           " WHERE active AND database = currentDatabase() GROUP BY table ORDER BY sum(bytes_on_disk) DESC")


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def _postgres(scratch: Path) -> list[psutil.Process]:
    """The embedded Postgres server under ``scratch`` and all its backends."""
    for proc in psutil.process_iter(["cmdline"]):
        if str(scratch) in " ".join(proc.info["cmdline"] or []) and "postgres" in proc.name().lower():
            return [proc, *proc.children(recursive=True)]
    return []


def snapshot(runtime: Runtime, scratch: Path) -> dict[str, float]:
    me = psutil.Process()
    ingest = {p.process.pid for p in runtime.processes if p.process} if runtime.processes else set()
    out = {"pulse process (persist, dispatcher, gateway, chDB)": _cpu(me), "ingest": 0.0, "kafka broker": 0.0,
           "postgres": 0.0}
    for child in me.children(recursive=True):
        try:
            if child.pid in ingest:
                out["ingest"] += _cpu(child)
            elif "tansu" in child.name().lower():
                out["kafka broker"] += _cpu(child)
        except psutil.Error:
            continue
    for proc in _postgres(scratch):
        try:
            out["postgres"] += _cpu(proc)
        except psutil.Error:
            continue
    return out


def chdb_insert_cpu(rows: list[bytes], batch_rows: int) -> float:
    """CPU seconds of this process for inserting ``rows`` (JSONEachRow lines) into a
    fresh embedded ClickHouse with Pulse's migrations, ``batch_rows`` per insert."""
    from pulse.core.persisting import INSERT_COLUMNS
    from pulse.storage.clickhouse import ClickHouse
    from pulse.storage.migrations import migrate_clickhouse

    scratch = Path(tempfile.mkdtemp(prefix="pulse-capacity-chdb-"))
    ch = ClickHouse(f"chdb://{scratch}/clickhouse")
    migrate_clickhouse(ch, Settings(state_dir=scratch))
    me = psutil.Process()
    before = _cpu(me)
    for start in range(0, len(rows), batch_rows):
        ch.insert_json_rows("events", INSERT_COLUMNS, b"\n".join(rows[start:start + batch_rows]))
    spent = _cpu(me) - before
    ch.close()
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--insert-rows", type=int, default=8000,
                        help="rows per insert when measuring chDB alone (persist's group commit writes 8-10k)")
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="pulse-capacity-"))
    runtime = Runtime(Settings(state_dir=scratch, gateway_port=0, ingest_processes=1)).start()
    logging.getLogger().setLevel(logging.WARNING)  # one line per request would cost CPU of its own
    try:
        events = sample_events(args.events, days=30, seed=11)
        before = snapshot(runtime, scratch)
        result = _run(runtime, events, args.batch, args.clients)
        after = snapshot(runtime, scratch)
        assert runtime.services is not None
        ch = runtime.services.ch
        time.sleep(1)
        storage_now = ch.rows(STORAGE)
        stored = [bytes(line) for line in ch.stream(
            "SELECT project_id, batch_id, received_at, " + ", ".join(EVENT_COLUMNS)
            + " FROM events", None, "JSONEachRow")]
        ch.command("OPTIMIZE TABLE events FINAL")
        storage = ch.rows(STORAGE)
        runtime.services.db.run("VACUUM ANALYZE event_ledger")
        ledger_bytes, ledger_rows = runtime.services.db.run(
            "SELECT pg_total_relation_size('event_ledger'), (SELECT count(*) FROM event_ledger)")[0]
    finally:
        runtime.stop()
    lines = b"".join(stored).splitlines()
    chdb_s = chdb_insert_cpu(lines, args.insert_rows)

    n = result["events"]
    print(f"capacity: {n:,} events in batches of {args.batch} from {args.clients} clients;"
          f" {result['events_per_s']:,.0f} events/s end to end (wall clock, shared machine)")
    print(f"{'part':<62}{'CPU s':>8}{'µs/event':>10}{'events/s/core':>15}")

    def line(role: str, spent: float) -> None:
        rate = f"{n / spent:>15,.0f}" if spent > 0 else f"{'-':>15}"
        print(f"{role:<62}{spent:>8.2f}{1e6 * spent / n:>10.1f}{rate}")

    total = 0.0
    for role in after:
        spent = after[role] - before[role]
        total += spent
        line(role, spent)
    pulse = after[next(iter(after))] - before[next(iter(after))]
    line(f"  of which chDB inserts alone ({args.insert_rows} rows per insert)", chdb_s)
    line("  of which persist, dispatcher, gateway (the rest)", pulse - chdb_s)
    line("all of Pulse (without the clients)", total)
    events_rows = next((int(r[1]) for r in storage if r[0] == "events"), n)
    print(f"\nbytes on disk per event ({events_rows:,} events; events merged into one part per partition):")
    print(f"{'table':<22}{'rows':>12}{'on disk':>14}{'uncompressed':>16}{'B/event':>10}")
    for table, rows, disk, raw in storage:
        print(f"{table:<22}{int(rows):>12,}{int(disk):>14,}{int(raw):>16,}{int(disk) / events_rows:>10.1f}")
    all_disk = sum(int(r[2]) for r in storage)
    print(f"{'all tables':<22}{'':>12}{all_disk:>14,}{'':>16}{all_disk / events_rows:>10.1f}")
    as_loaded = sum(int(r[2]) for r in storage_now)
    print(f"(as loaded, before merging events: {as_loaded / events_rows:.1f} B/event)")
    print(f"Postgres dedup ledger: {int(ledger_rows):,} rows, {int(ledger_bytes):,} B with its indexes,"
          f" {int(ledger_bytes) / max(1, int(ledger_rows)):.0f} B/event (kept ledger_retention_days)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
