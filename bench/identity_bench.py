"""Identity on a cluster: what each way of giving every node the identity links
costs, on query_bench's data (N events over a year, 30 % of users identified
after a week of anonymous events; their links as persist writes them).

Two designs, both exact once the write has returned (pulse.core.persons):

(a) the Join table ``person_links`` on every node, written on each node by
    persist (``ClickHouse.insert_on_every_node``: one insert per node);
    queries look up ``joinGetOrNull`` (what Pulse does).
(b) a replicated table of the links read through a dictionary on every node
    (``dictGetOrNull``); a write inserts the rows (replication copies them)
    and must then reload the dictionary on every node before it counts.

Printed: the CPU of the lookup in two unique-person queries (over the events
table and over the hourly rollup, per day of the year); the time one
identity write of 10 links takes with 1, 2 and 4 nodes; and what one reload
of the dictionary costs with the bench's links and with ten times as many. Nodes here are the
local shards of ``remote('localhost,127.0.0.1,...')`` inside one chDB: the
SQL each design runs per node is measured, the network round trip to each node
of a real cluster (and for (b) the ``ON CLUSTER`` queue through Keeper) is not.

    python bench/identity_bench.py --events 1000000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import query_bench  # noqa: E402  (puts functions/ on the path)

from pulse.core import persons  # noqa: E402
from pulse.settings import Settings  # noqa: E402
from pulse.storage.clickhouse import ClickHouse, Layout  # noqa: E402
from pulse.storage.migrations import migrate_clickhouse  # noqa: E402
from pulse.storage.persons import LINK_COLUMNS, WRITE_OVERRIDES  # noqa: E402

PROJECT = query_bench.PROJECT
DICTIONARY = ("CREATE DICTIONARY IF NOT EXISTS links_dict (link_key UInt128, person_key UInt128) PRIMARY KEY link_key"
              " SOURCE(CLICKHOUSE(TABLE 'links_log')) LAYOUT(COMPLEX_KEY_HASHED()) LIFETIME(0)")
BY_DICTIONARY = persons.PERSON.replace(f"joinGetOrNull('{persons.OVERRIDES}', 'person_key',", "dictGetOrNull("
                                       "'links_dict', 'person_key', tuple(").replace("), actor_key)", ")), actor_key)")
QUERIES = {
    "events: persons per day": "SELECT toDate(occurred_at) AS d, uniqExact({who}) FROM events"
                               " WHERE project_id = {{p:UUID}} GROUP BY d",
    "actor_hours: persons per day": "SELECT toDate(hour) AS d, uniqExact({who}) FROM actor_hours"
                                    " WHERE project_id = {{p:UUID}} GROUP BY d",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=360)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="pulse-identity-bench-"))
    ch = ClickHouse(f"chdb://{state}/clickhouse")
    migrate_clickhouse(ch, Settings(state_dir=state))
    start = (datetime.now(UTC) - timedelta(days=args.days)).replace(hour=0, minute=0, second=0, microsecond=0)
    identified = round(0.3 / 0.9 * 1000)
    ch.command(query_bench.LOAD_SQL, {"project": PROJECT, "start": start.replace(tzinfo=None), "users": args.users,
                                      "days": args.days, "events": args.events, "per_session": 10,
                                      "identified": identified})
    ch.command(query_bench.OVERRIDES_SQL, {"project": PROJECT, "users": args.users, "identified": identified})
    ch.command("CREATE TABLE links_log (link_key UInt128, person_key UInt128) ENGINE = ReplacingMergeTree"
               " ORDER BY link_key")
    ch.command("INSERT INTO links_log SELECT link_key, person_key FROM person_links")
    ch.command(DICTIONARY)
    links = ch.rows("SELECT count() FROM person_links")[0][0]
    print(f"{args.events:,} events, {links:,} links; repeat {args.repeat}; CPU ms of this process (chDB runs in it)")

    print(f"\n{'read: the lookup in':<32}{'join cpu ms':>12}{'dict cpu ms':>12}{'dict/join':>10}")
    params = {"p": PROJECT}
    for name, sql in QUERIES.items():
        join = query_bench.measure(lambda sql=sql: ch.rows(sql.format(who=persons.PERSON), params), args.repeat)
        dictionary = query_bench.measure(lambda sql=sql: ch.rows(sql.format(who=BY_DICTIONARY), params), args.repeat)
        assert ch.rows(sql.format(who=persons.PERSON), params) == ch.rows(sql.format(who=BY_DICTIONARY), params)
        print(f"{name:<32}{join[2]:>12.1f}{dictionary[2]:>12.1f}{dictionary[2] / join[2]:>9.2f}x")

    print(f"\n{'write: one batch of 10 links':<32}{'nodes':>6}{'median ms':>11}{'cpu ms':>8}{'vs (a) 1 node':>15}")
    base = 0.0
    for nodes in (1, 2, 4):
        every = ",".join(["localhost", "127.0.0.1"] * (nodes // 2)) if nodes > 1 else ""
        node_ch = ClickHouse(ch.url, layout=Layout("bench", every_replica=f"remote('{every}', {{table}})")
                             if nodes > 1 else Layout())

        def fan_out(node_ch: ClickHouse = node_ch) -> None:
            names = [f"i{uuid.uuid4().hex}" for _ in range(20)]
            node_ch.insert_on_every_node(persons.OVERRIDES, LINK_COLUMNS, WRITE_OVERRIDES,
                                         {"p": PROJECT, "members": names[:10], "primaries": names[10:]})

        def reload_everywhere(nodes: int = nodes) -> None:
            ch.command("INSERT INTO links_log SELECT reinterpretAsUInt128(sipHash128(toString(rand64()))),"
                       " reinterpretAsUInt128(sipHash128(toString(rand64()))) FROM numbers(10)")
            for _ in range(nodes):  # each node reloads its own copy of the dictionary
                ch.command("SYSTEM RELOAD DICTIONARY links_dict")

        a = query_bench.measure(fan_out, args.repeat)
        b = query_bench.measure(reload_everywhere, args.repeat)
        base = base or a[0]
        print(f"{'(a) insert on every node':<32}{nodes:>6}{a[0]:>11.1f}{a[2]:>8.1f}{a[0] / base:>14.1f}x")
        print(f"{'(b) insert, reload every node':<32}{nodes:>6}{b[0]:>11.1f}{b[2]:>8.1f}{b[0] / base:>14.1f}x")
        node_ch.close()
    print(f"\n{'(b) one reload of the dictionary':<32}{'links':>10}{'median ms':>11}{'cpu ms':>8}")
    for factor in (1, 10):
        if factor > 1:  # as many links again as the store grows (other projects, more users)
            ch.command("INSERT INTO links_log SELECT reinterpretAsUInt128(sipHash128(toString(number), 'x')),"
                       " reinterpretAsUInt128(sipHash128(toString(number), 'y')) FROM numbers({n:UInt64})",
                       {"n": links * (factor - 1)})
        reload = query_bench.measure(lambda: ch.command("SYSTEM RELOAD DICTIONARY links_dict"), args.repeat)
        print(f"{'':<32}{links * factor:>10,}{reload[0]:>11.1f}{reload[2]:>8.1f}")
    ch.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
