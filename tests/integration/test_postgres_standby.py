"""What Pulse's Postgres pool does when its primary moves (a CloudNativePG
switchover, docs/scaling.md): the old primary closes its connections, and
for a moment the read-write address may reach a server that is read-only."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from pulse.errors import Unavailable
from pulse.storage.postgres import Database


@pytest.fixture
def scratch(pulse: Any) -> Iterator[tuple[Database, str]]:
    name = f"standby_{uuid.uuid4().hex[:10]}"
    pulse.services.db.run(f"CREATE DATABASE {name}")  # a generated identifier, not input
    url = pulse.settings.postgres_url.replace("@/postgres?", f"@/{name}?")
    db = Database(url)
    yield db, name
    db.close()
    pulse.services.db.run(f"DROP DATABASE {name} WITH (FORCE)")


def test_connections_closed_by_the_old_primary_are_replaced(pulse: Any, scratch: tuple[Database, str]) -> None:
    db, name = scratch
    db.run("CREATE TABLE t (n int)")
    pids = {db.run("SELECT pg_backend_pid()")[0][0] for _ in range(3)}
    closed = pulse.services.db.run("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                   " WHERE datname = :d", d=name)[0][0]
    assert closed >= 1
    db.run("INSERT INTO t VALUES (1)")  # the dead pooled connection is dropped, the call retried
    assert db.run("SELECT count(*) FROM t") == [[1]]
    assert db.run("SELECT pg_backend_pid()")[0][0] not in pids


def test_a_write_that_reaches_a_read_only_server_is_unavailable(pulse: Any, scratch: tuple[Database, str]) -> None:
    db, name = scratch
    db.run("CREATE TABLE t (n int)")
    pulse.services.db.run(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    pulse.services.db.run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d", d=name)
    with pytest.raises(Unavailable, match="read-only"):
        db.run("INSERT INTO t VALUES (1)")
    with pytest.raises(Unavailable, match="read-only"):
        db.transaction(lambda conn: conn.run("INSERT INTO t VALUES (2)"))
    assert db.run("SELECT count(*) FROM t") == [[0]]  # reads still answer
    pulse.services.db.run(f"ALTER DATABASE {name} SET default_transaction_read_only = off")
    pulse.services.db.run("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d", d=name)
    db.run("INSERT INTO t VALUES (3)")  # the new primary: writes go on
    assert db.run("SELECT n FROM t") == [[3]]
