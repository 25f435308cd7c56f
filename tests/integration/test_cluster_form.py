"""The ClickHouse migrations in their cluster form (pulse.storage.migrations.ClusterForm):
rendered for a cluster of shards and replicas, parsed by the ClickHouse engine,
and run on a two-shard stand-in beside the one-node form, where every answer
aggregate gives must be the same (tests/integration/cluster_standin.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pulse.settings import Settings, SettingsError
from pulse.storage.clickhouse import Layout
from pulse.storage.migrations import ClusterForm, MigrationError, cluster_statements, load, placements

CLUSTER = Layout("events")
SETTINGS = Settings()


def _rendered() -> list[tuple[str, list[str]]]:
    return [(m.name, statements) for m, statements in cluster_statements(CLUSTER, "pulse", SETTINGS)]


def _one_node_tables() -> set[str]:
    """The tables the queries see on one node after every migration."""
    tables: set[str] = set()
    for migration in load("clickhouse"):
        for statement in migration.statements({"events_ttl_days": "1"}):
            created = re.match(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", statement)
            dropped = re.match(r"DROP TABLE (?:IF EXISTS )?(\w+)", statement)
            if created:
                tables.add(created.group(1))
            if dropped:
                tables.discard(dropped.group(1))
    return tables


def test_every_statement_runs_on_the_cluster_and_sharded_tables_keep_their_names() -> None:
    statements = [s for _, ss in _rendered() for s in ss]
    assert statements
    for statement in statements:
        assert statement.startswith("INSERT") or " ON CLUSTER 'events'" in statement, statement
    distributed = {}
    local_engines = {}
    everywhere, gone = set(), set()
    for statement in statements:
        e = re.match(r"CREATE TABLE IF NOT EXISTS (\w+) ON CLUSTER 'events' \(", statement)
        if e and not e.group(1).endswith("_local"):
            everywhere.add(e.group(1))
        d = re.match(r"CREATE TABLE IF NOT EXISTS (\w+) ON CLUSTER 'events' AS (\w+)\nENGINE = "
                     r"Distributed\('events', 'pulse', '(\w+)', (.+)\)$", statement, re.S)
        if d:
            assert d.group(2) == d.group(3) == f"{d.group(1)}_local"
            distributed[d.group(1)] = d.group(4)
        t = re.match(r"CREATE TABLE IF NOT EXISTS (\w+_local) ON CLUSTER 'events' .*ENGINE = (Replicated\w+)"
                     r"\('/clickhouse/tables/\{uuid\}/\{shard\}', '\{replica\}'", statement, re.S)
        if t:
            local_engines[t.group(1)] = t.group(2)
        if statement.startswith("DROP TABLE"):
            dropped = re.match(r"DROP TABLE (?:IF EXISTS )?(\w+)", statement).group(1)
            distributed.pop(dropped, None)
            if dropped in everywhere:
                everywhere.discard(dropped)
                gone.add(dropped)
    # every table the queries name exists under that name: sharded, or whole on every node
    assert set(distributed) | everywhere == _one_node_tables() | {"schema_migrations"}
    assert everywhere | gone == {t for t, p in placements().items() if p.everywhere}
    assert set(distributed) >= {"events", "actor_hours", "actor_type_hours", "page_hours", "type_spans", "page_spans"}
    assert all(local_engines[f"{t}_local"].startswith("Replicated") for t in distributed)
    # every table a user's rows are in is sharded by the same number
    by_user = {t for t, p in placements().items() if p.key == "actor"}
    assert {distributed[t] for t in by_user & set(distributed)} == {"sipHash64(actor_key)", placements()[
        "events"].shard_by}
    assert "reinterpretAsUInt128(sipHash128(if(user_id != '', user_id, anonymous_id)))" in distributed["events"]


def test_views_read_and_write_the_local_tables() -> None:
    statements = [s for _, ss in _rendered() for s in ss]
    views = [s for s in statements if s.startswith("CREATE MATERIALIZED VIEW")]
    assert len(views) == 8
    for view in views:
        target = re.search(r" TO (\w+) AS", view).group(1)
        sources = re.findall(r"\bFROM (\w+)", view)
        assert target.endswith("_local") and sources == ["events_local"], view
    for changed in (s for s in statements if " MODIFY QUERY" in s):
        assert re.findall(r"\bFROM (\w+)", changed) == ["events_local"], changed


def test_backfills_run_on_each_shard_and_are_not_taken_for_retries() -> None:
    inserts = [s for _, ss in _rendered() for s in ss if s.startswith("INSERT")]
    assert len(inserts) == 11
    for insert in inserts:
        assert insert.endswith("insert_deduplicate = 0"), insert
        # every source and target keeps a user's rows together, or is a plain sum
        assert "parallel_distributed_insert_select = 2" in insert, insert


def test_exchange_swaps_the_local_tables_and_drop_removes_both() -> None:
    statements = dict(_rendered())["0005_country_order.sql"]
    assert ("EXCHANGE TABLES actor_type_hours_local AND actor_type_hours_reordered_local ON CLUSTER 'events'"
            in statements)
    assert "DROP TABLE actor_type_hours_reordered ON CLUSTER 'events' SYNC" in statements
    assert "DROP TABLE actor_type_hours_reordered_local ON CLUSTER 'events' SYNC" in statements
    alter = dict(_rendered())["0002_actor_key.sql"]
    assert [s.split(" ADD")[0].split(" MATERIALIZE")[0] for s in alter] == [
        "ALTER TABLE events_local ON CLUSTER 'events'", "ALTER TABLE events ON CLUSTER 'events'",
        "ALTER TABLE events_local ON CLUSTER 'events'"]


@pytest.mark.parametrize(("statements", "message"), [
    (["CREATE TABLE nowhere (a UInt8) ENGINE = MergeTree ORDER BY a"], "no place on a cluster"),
    (["CREATE TABLE events (a UInt8) ENGINE = Log"], "only MergeTree tables are sharded"),
    (["RENAME TABLE events TO old_events"], "no cluster form"),
    (["ALTER TABLE events DROP COLUMN a"], "not created by an earlier statement"),
    (["CREATE TABLE events (a UInt8) ENGINE = MergeTree ORDER BY a",
      "ALTER TABLE events ADD COLUMN b UInt8, MODIFY SETTING x = 1"], "separate statements"),
    (["CREATE TABLE events (a UInt8) ENGINE = MergeTree ORDER BY a",
      "CREATE TABLE type_hours (a UInt8) ENGINE = MergeTree ORDER BY a",
      "EXCHANGE TABLES events AND type_hours"], "placed differently"),
    (["CREATE TABLE events (a UInt8) ENGINE = MergeTree ORDER BY a",
      "CREATE MATERIALIZED VIEW v TO schema_migrations AS SELECT a FROM events"], "writes a sharded table"),
    (["CREATE TABLE events (a UInt8) ENGINE = MergeTree ORDER BY a",
      "INSERT INTO events SELECT 1 SETTINGS max_threads = 1"], "SETTINGS"),
])
def test_statements_without_a_cluster_form_stop_the_run(statements: list[str], message: str) -> None:
    form = ClusterForm(CLUSTER, "pulse", placements())
    with pytest.raises(MigrationError, match=message):
        for statement in statements:
            form.render(statement)


def test_every_node_tables_and_joins() -> None:
    form = ClusterForm(CLUSTER, "pulse", {**placements(), "overrides": placements()["schema_migrations"]})
    (join,) = form.render("CREATE TABLE IF NOT EXISTS overrides (k UInt128, p UInt128) ENGINE = Join(ANY, LEFT, k)")
    assert join == ("CREATE TABLE IF NOT EXISTS overrides ON CLUSTER 'events' (k UInt128, p UInt128)\n"
                    "ENGINE = Join(ANY, LEFT, k)")
    (table,) = form.render("CREATE TABLE schema_migrations (v String) ENGINE = ReplacingMergeTree(v) ORDER BY v")
    assert "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{uuid}/all', '{replica}', v)" in table


def test_the_cluster_setting_is_checked() -> None:
    assert Settings.from_values({"clickhouse_cluster": "events"}).clickhouse_cluster == "events"
    with pytest.raises(SettingsError, match="PULSE_CLICKHOUSE_CLUSTER"):
        Settings.from_values({"clickhouse_cluster": "events'; DROP TABLE x"})
    with pytest.raises(SettingsError, match="embedded ClickHouse is one node"):
        Settings.from_values({"clickhouse_cluster": "events", "clickhouse_url": "chdb:///tmp/x"})
    assert Layout("events").on_every_replica("system.parts") == "clusterAllReplicas('events', system.parts)"
    assert Layout().on_every_replica("system.parts") == "system.parts"


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    script = Path(__file__).with_name("cluster_standin.py")
    done = subprocess.run([sys.executable, str(script), str(tmp_path_factory.mktemp("standin"))],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_cluster_form_parses_in_the_clickhouse_engine(standin: dict[str, Any]) -> None:
    assert standin["parsed"] == sum(len(ss) for _, ss in _rendered()) and standin["unparsed"] == []


def test_migrations_apply_on_the_standin_in_two_steps(standin: dict[str, Any]) -> None:
    applied = standin["applied"]
    assert applied["first"]["one"] == applied["first"]["two"] == ["0001_events.sql", "0002_actor_key.sql"]
    assert applied["later"]["one"] == applied["later"]["two"] and "0005_country_order.sql" in applied["later"]["two"]
    assert applied["again"] == []
    tables = {name: (engine, key) for name, engine, key in standin["tables"]}
    assert tables["actor_type_hours_local"] == ("SummingMergeTree", "project_id, country, hour, event_type, actor_key")
    assert not any("reordered" in name for name in tables)


def test_each_shard_holds_its_own_users(standin: dict[str, Any]) -> None:
    per_shard = dict(standin["users_per_shard"])
    assert set(per_shard) == {"1", "2"} and all(int(n) > 300 for n in per_shard.values())
    assert standin["split_users"] == 0
    assert standin["events"]["one"] == standin["events"]["two"] == [["18000", "18000"]]


def test_rollups_backfilled_and_fed_by_views_match_the_one_node_form(standin: dict[str, Any]) -> None:
    for table, (one, two) in standin["rollups"].items():
        assert one == two and len(one) > 1000, table
    one, two = standin["spans_final"]
    assert one == two and all(r[2] == r[3] for r in two)


def test_every_answer_is_the_same_over_distributed_tables(standin: dict[str, Any]) -> None:
    one, two = standin["answers"]
    assert len(one) == 624
    assert [k for k in one if one[k] != two[k]] == []
    assert sum(1 for k in one if k.startswith("funnel/") and one[k]["steps"][2]["users"] > 0) >= 4
    # the first project counts persons (a<n> and u<n> are one, on different shards, and more by chains and
    # forced merges), as many as the links make
    assert two["overview/p0/whole/all"]["unique_users"] == _persons() < two["overview/p1/whole/all"]["unique_users"]
    assert two["overview/p0/whole/all"]["bot_events_excluded"] > 0


def test_insights_are_the_same_over_distributed_tables(standin: dict[str, Any]) -> None:
    """Breakdowns, funnel orders and their persons, paths, stickiness, lifecycle and
    cohort filters, with persons whose identifiers sit on both shards."""
    one, two = standin["insights"]
    assert len(one) == 76
    assert [k for k in one if one[k] != two[k]] == []
    assert sum(1 for k in one if k.startswith("people/") and one[k]) >= 6
    assert sum(1 for k in one if k.startswith("paths/") and one[k]["edges"]) >= 6


def test_persist_finds_a_batch_stored_on_any_replica(standin: dict[str, Any]) -> None:
    assert standin["stored"]["one"] == standin["stored"]["two"]
    assert len(standin["stored"]["two"]) == standin["batch_events"] > 0


def _persons(deleted: frozenset[str] = frozenset()) -> int:
    """Persons of the stand-in's first project, from the links it applies (every user u<n>
    has events; a<n> is its anonymous id): the groups that union-find makes."""
    from tests.integration.cluster_standin import CHAINED, DOWN, FORCED, LINKED

    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    pairs = [(f"a{n}", f"u{n}") for n in LINKED + CHAINED + [n + 8 for n in CHAINED]]
    pairs += [(f"u{n}", f"u{n + 8}") for n in CHAINED] + [(f"u{a}", f"u{b}") for a, b in FORCED] + [DOWN]
    for a, b in pairs:
        parent[root(a)] = root(b)
    users = {f"u{n}" for n in range(0, 400, 2)} - deleted
    return len({root(u) for u in users})


def _history(user: dict[str, Any]) -> dict[str, Any]:
    """A person's history as asked by one of its identifiers, without the one asked."""
    return {k: v for k, v in user.items() if k != "user_id"}


def test_identity_writes_reach_every_node_of_the_cluster_form(standin: dict[str, Any]) -> None:
    """Each write of links goes to every node (node k by insert_shard_id = k), person
    properties wait for every replica, and both forms hold the same links throughout."""
    identity = standin["identity"]
    assert identity["nodes"] == 2
    writes = identity["link_writes"]
    assert len(writes) >= 8 and all(len(w) == 1 for w in writes)
    target = "remote('localhost,127.0.0.1', currentDatabase(), person_links)"
    assert [w[0] for w in writes] == [[target, str(k)] for _ in range(len(writes) // 2) for k in (1, 2)]
    (properties,) = identity["property_writes"]
    assert properties.startswith("INSERT INTO person_properties (project_id, person_key, properties, version)"
                                 " SETTINGS insert_quorum = 2 SELECT")
    one, two = identity["links"]
    assert one == two and len(one) == 230  # 150 + 25 chains of 3 + 5 forced merges
    assert identity["links_after"][0] == identity["links_after"][1]
    assert identity["links_rewritten"] == identity["links_after"] and len(identity["links_after"][0]) == 227
    assert identity["rewritten"]["one"] == identity["rewritten"]["two"] > 0
    assert identity["differ"] is False


def test_a_node_that_does_not_answer_stops_the_write_until_a_redelivery(standin: dict[str, Any]) -> None:
    identity = standin["identity"]
    assert identity["down"].startswith("clickhouse: a node of the cluster does not answer")
    # Postgres had applied the merge (the user side survives a forced merge); the redelivery wrote it
    assert identity["down_primary"] == "u66"
    one, two = standin["persons"]
    assert one["user/u64"] == two["user/u64"] and _history(one["user/u64"]) == _history(one["user/u66"])
    assert one["user/u64"]["events"] > 0


def test_person_figures_are_the_same_over_distributed_tables(standin: dict[str, Any]) -> None:
    one, two = standin["persons"]
    assert len(one) == 23 and [k for k in one if one[k] != two[k]] == []
    assert one["overview/pro"]["unique_users"] > 0 and one["overview/first"]["unique_users"] == 1
    # a chain and a forced merge: every identifier of the person gives the person's history
    assert _history(one["user/u14"]) == _history(one["user/a6"]) and _history(one["user/u0"]) == _history(one["user/u2"])
    assert one["overview/first"]["events"] == one["user/u2"]["events"]  # person.first = 2: u2's, with u0's events
    assert _history(one["user/u100"]) != _history(one["user/u2"])


def test_a_deletion_and_retention_reach_every_shard_and_node(standin: dict[str, Any]) -> None:
    identity = standin["identity"]
    members, gone = identity["deleted"]["two"]
    assert members == ["a14", "a6", "u14", "u6"] and identity["deleted"]["one"] == [members, gone] and gone > 0
    assert all(n == 0 for _, n in identity["left"]["two"]) and identity["left"]["one"] == identity["left"]["two"]
    assert identity["expired"]["one"] == identity["expired"]["two"] > 0
    # sharded tables through their local tables on every shard; the Join table on every node; the
    # replicated tables every node has, through replication
    on = " ON CLUSTER 'pulse'"
    assert identity["deletion_ddl"] == sorted(
        [f"{t}_local{on}" for t in ("actor_hours", "actor_type_hours", "events", "page_hours", "page_spans",
                                    "path_hours", "session_spans", "type_hours", "type_spans")]
        + ["cohort_members", f"person_links{on}", "person_properties"])
    one, two = identity["after"]
    assert len(one) == 179 and [k for k in one if one[k] != two[k]] == []
    assert two["overview/p0/whole/all"]["unique_users"] == _persons(frozenset({"u6", "u14"}))
    assert [two[f"user/{i}"] for i in ("u14", "a6")] == [f"no events from user '{i}' in this range" for i in ("u14", "a6")]
    assert standin["events_after"]["one"] == standin["events_after"]["two"]
