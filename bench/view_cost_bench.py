"""What one materialized view costs persist's inserts: CPU per event of
inserting generated events into a scratch embedded ClickHouse (chDB) through
the events table and every view, then the same with one view dropped (by
default ``session_spans_mv``, migration 0031), in the same run. The figure is
this process's CPU time (chDB's threads run in it, background merges
included) over the inserts, per event; the ratio is the comparable part.

    python bench/view_cost_bench.py --events 200000 --batch 4000 [--view session_spans_mv]

It opens its own chDB path, so run it as its own process. Both runs start from
empty tables (truncated in between).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "functions"))

from pulse.settings import Settings  # noqa: E402
from pulse.storage.clickhouse import ClickHouse  # noqa: E402
from pulse.storage.migrations import migrate_clickhouse  # noqa: E402

PROJECT = "5e0f6c1a-0000-4000-8000-000000000003"
INSERT = """
INSERT INTO events (project_id, event_id, event_type, user_id, anonymous_id, session_id, occurred_at,
                    received_at, properties, path, country, batch_id)
SELECT {project:UUID}, generateUUIDv4(number), ['page_view', 'click', 'signup', 'purchase'][number % 4 + 1],
       concat('user-', toString(cityHash64(number, {seed:UInt64}) % 20000)), '',
       concat('s-', toString(intDiv(number + {offset:UInt64}, 10))),
       toDateTime64({start:DateTime64(3, 'UTC')}, 3, 'UTC') + toIntervalSecond(cityHash64(number, 3) % 2592000),
       now64(3), '{{"plan":"pro"}}', ['/', '/pricing', '/docs'][number % 3 + 1], ['DE', 'US', 'UA'][number % 3 + 1],
       generateUUIDv4(0)
FROM numbers({rows:UInt64})
"""


def run(ch: ClickHouse, events: int, batch: int) -> float:
    start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0).replace(tzinfo=None)
    started = time.process_time()
    for offset in range(0, events, batch):
        ch.command(INSERT, {"project": PROJECT, "seed": offset, "offset": offset, "start": start, "rows": batch})
    return (time.process_time() - started) / events * 1e6


def empty(ch: ClickHouse) -> None:
    for (table,) in ch.rows("SELECT name FROM system.tables WHERE database = currentDatabase()"
                            " AND engine LIKE '%MergeTree' AND name != 'schema_migrations'"):
        ch.command(f"TRUNCATE TABLE {table}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=4000)
    parser.add_argument("--view", default="session_spans_mv")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pulse-view-bench-") as tmp:
        ch = ClickHouse(f"chdb://{Path(tmp).resolve()}/clickhouse")
        migrate_clickhouse(ch, Settings(state_dir=Path(tmp)))
        run(ch, args.batch, args.batch)  # warm
        empty(ch)
        every = run(ch, args.events, args.batch)
        empty(ch)
        ch.command(f"DROP VIEW {args.view}")
        without = run(ch, args.events, args.batch)
        ch.close()
    print(f"{args.events:,} events in {args.batch:,}-row inserts: every view {every:.1f} µs CPU/event,"
          f" without {args.view} {without:.1f} µs/event; the view adds {every - without:.1f} µs/event"
          f" ({(every - without) / without * 100:.0f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
