"""ClickHouse access through clickhouse-connect: a server by ``http(s)://`` URL,
or the embedded chDB engine by ``chdb:///abs/path``. Same client API, same SQL.

Calls borrow a client from a small pool and give it back, so a server that
starts a thread per request does not grow a client per thread (chDB allows
several clients in one process on one path; only one process may hold a
path). Every value goes in as a bound parameter (``{name:Type}``); callers
never format values into SQL.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pulse.errors import Unavailable
from pulse.group_commit import Announcement, GroupCommit
from pulse.settings import CHDB_RELEASE_MS, CLUSTER_NAME

__all__ = ["Announcement", "ClickHouse", "insert_group"]

if TYPE_CHECKING:  # the client library is imported when the first client opens
    from clickhouse_connect.driver.client import Client

CHUNK = 1 << 16
# Formats chDB streams block by block (their blocks concatenate into one valid stream).
CHDB_STREAMED = frozenset({"CSV", "TSV", "TabSeparated", "JSONEachRow", "RowBinary", "Native"})
# Inserts on a cluster: the Distributed table writes every shard's rows before
# it answers (nothing is left queued on the node that took the insert), and
# each shard's rows are on a majority of its replicas (both, with two) before
# persist marks the batch done.
CLUSTER_INSERT_SETTINGS = {"distributed_foreground_insert": 1, "insert_quorum": "auto"}


@dataclass(frozen=True)
class Layout:
    """Where the tables are: one node (``cluster`` empty), or the shards and
    replicas of a ClickHouse cluster, in the form pulse.storage.migrations
    gives them (a sharded table's own rows on each node are ``<name>_local``).
    ``every_replica`` is the table function that reads a table on every node
    of the cluster; a stand-in for a cluster can name its own."""

    cluster: str = ""
    every_replica: str = "clusterAllReplicas('{cluster}', {table})"

    def __post_init__(self) -> None:
        if self.cluster and not CLUSTER_NAME.match(self.cluster):
            raise ValueError(f"not a ClickHouse cluster name: {self.cluster[:100]!r}")

    def local(self, table: str) -> str:
        """The name under which each node keeps its own rows of a sharded table."""
        return f"{table}_local" if self.cluster else table

    def on_every_replica(self, table: str) -> str:
        """A table expression reading ``table`` (``system.<name>``, or a table of the
        current database) on every node: on one node, the table itself."""
        if not self.cluster:
            return table
        where = table if "." in table else f"currentDatabase(), {table}"
        return self.every_replica.format(cluster=self.cluster, table=where)


# The embedded engine's caches, each a share of one budget (``PULSE_CHDB_CACHE_MB``).
# ClickHouse's own defaults are sized for a server (5 GiB of marks, 5 GiB of primary
# index, ...) and grow as queries read parts, which in one process beside Pulse's
# functions shows as memory that only rises. Caches left out keep their defaults
# (the uncompressed and query caches are off, the page cache has no size).
CACHE_SHARES = {
    "mark_cache_size": 0.40,
    "primary_index_cache_size": 0.20,
    "index_mark_cache_size": 0.10,
    "query_condition_cache_size": 0.10,
    "compiled_expression_cache_size": 0.10,
    "skipping_index_cache_size": 0.05,
    "vector_similarity_index_cache_size": 0.05,
}
# What ``memory()`` reports, from system.metrics: the caches and all the engine tracks.
MEMORY_METRICS = ("MemoryTracking", "MarkCacheBytes", "PrimaryIndexCacheBytes", "IndexMarkCacheBytes",
                  "UncompressedCacheBytes", "QueryConditionCacheBytes", "CompiledExpressionCacheBytes",
                  "QueryCacheBytes")


def embedded_caches(total_mb: int) -> dict[str, int]:
    """Engine options bounding the embedded engine's caches to ``total_mb`` in all."""
    return {name: int(total_mb * share * 2**20) for name, share in CACHE_SHARES.items()}


# The embedded engine allocates through its own jemalloc, which reads its options from this
# variable when the library loads (its built-in ``dirty_decay_ms:5000`` keeps what a query
# freed for 5 s; with a funnel every second over millions of events, that is several
# queries' working sets at once, so the process's memory follows the last seconds' peaks).
ALLOCATOR_ENV = "JE_MALLOC_CONF"


def embedded_allocator(release_ms: int = CHDB_RELEASE_MS) -> None:
    """Have the embedded engine's allocator give freed memory back to the system
    within ``release_ms`` (``PULSE_CHDB_RELEASE_MS``), unless the operator set
    ``JE_MALLOC_CONF`` themselves. Takes effect only before the engine's library is
    loaded (the first embedded client in the process); later calls change nothing."""
    if "chdb" not in sys.modules:
        os.environ.setdefault(ALLOCATOR_ENV, f"dirty_decay_ms:{release_ms}")


class ClickHouse:
    def __init__(self, url: str, max_idle: int = 16, linger_s: float = 0.2, layout: Layout | None = None,
                 engine_options: dict[str, int] | None = None, release_ms: int = CHDB_RELEASE_MS) -> None:
        self.url = url
        self.layout = layout or Layout()
        self._database: str | None = None
        self.embedded = urlsplit(url).scheme == "chdb"
        # Start-up options of the embedded engine (the first client in the process starts it).
        self.engine_options = engine_options if self.embedded else None
        if self.embedded:
            embedded_allocator(release_ms)
        self._idle: queue.LifoQueue[Client] = queue.LifoQueue()
        self._max_idle = max_idle
        self._closed = False
        self._lock = threading.Lock()
        self._groups: dict[tuple[str, tuple[str, ...]], GroupCommit[bytes, None]] = {}
        self._group_max_bytes = 32 * 1024 * 1024
        self.linger_s = linger_s

    def _open(self) -> Client:
        import clickhouse_connect

        try:
            if self.engine_options:
                return clickhouse_connect.get_client(dsn=self.url, chdb_options=self.engine_options)
            return clickhouse_connect.get_client(dsn=self.url)
        except Exception as exc:  # noqa: BLE001 - any failure to open is "unreachable"
            raise Unavailable("clickhouse is unreachable") from exc

    @contextmanager
    def borrow(self) -> Iterator[Client]:
        """A client for the work inside; returned to the pool afterwards."""
        try:
            client = self._idle.get_nowait()
        except queue.Empty:
            client = self._open()
        try:
            yield client
        finally:
            with self._lock:
                keep = not self._closed and self._idle.qsize() < self._max_idle
            if keep:
                self._idle.put(client)
            else:
                _close_quietly(client)

    @property
    def database(self) -> str:
        """The database this client works in (asked once)."""
        if self._database is None:
            self._database = str(self.rows("SELECT currentDatabase()")[0][0])
        return self._database

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        with self.borrow() as client:
            return client.command(sql, parameters=parameters)

    def rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self.borrow() as client:
            return [tuple(row) for row in client.query(sql, parameters=parameters).result_rows]

    def dicts(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.borrow() as client:
            result = client.query(sql, parameters=parameters)
        names = result.column_names
        return [dict(zip(names, row, strict=True)) for row in result.result_rows]

    def insert_grouped(self, table: str, columns: Sequence[str], body: bytes,
                       announcement: Announcement | None = None) -> None:
        """``insert_json_rows``, combined with the inserts other threads are making
        into the same table at the same moment (group commit): one insert of many
        batches costs far less than many small ones, since every insert writes a
        new part per table and view. Returns when this caller's rows are written;
        if the combined insert fails, every caller in it gets the error.
        ``announcement`` (from ``announce_insert``) ends as the rows are queued."""
        self._group(table, columns).submit(body, announcement)

    def announce_insert(self, table: str, columns: Sequence[str]) -> Announcement:
        """Say that this caller will soon ``insert_grouped`` into the table, so the
        group being written waits for it (up to ``linger_s``) rather than leaving
        it to an insert of its own. Use it as a ``with`` block around the work
        that leads to the insert: leaving the block ends it if the insert did not."""
        return self._group(table, columns).announce()

    def _group(self, table: str, columns: Sequence[str]) -> GroupCommit[bytes, None]:
        key = (table, tuple(columns))
        with self._lock:
            group = self._groups.get(key)
            if group is None:
                write = lambda body: self.insert_json_rows(table, list(columns), body)  # noqa: E731
                group = self._groups[key] = insert_group(write, self._group_max_bytes, self.linger_s)
            return group

    # Writes that every node must have before they count (pulse.core.persons) -------

    def nodes(self) -> int:
        """The nodes of the store: 1 on one node; on a cluster every replica of every
        shard, each one asked (a node that does not answer makes this ``Unavailable``)."""
        if not self.layout.cluster:
            return 1
        every = self.layout.on_every_replica("system.one")
        return int(self._on_the_cluster("a node of the cluster does not answer", lambda: self.rows(
            f"SELECT count() FROM {every} SETTINGS skip_unavailable_shards = 0"))[0][0])

    def insert_on_every_node(self, table: str, columns: Sequence[str], select: str,
                             parameters: dict[str, Any] | None = None) -> int:
        """``INSERT INTO table (columns) SELECT ...`` into a table that each node keeps by
        itself (not replicated: a Join table), on every node. On a cluster: one insert
        per node, node k of ``layout.on_every_replica(table)`` by ``insert_shard_id = k``,
        each synchronous; a node that cannot be written makes this ``Unavailable``
        after the others were written (writing the same rows again is harmless: the
        caller's work is redone). Returns how many nodes were written."""
        names = ", ".join(columns)
        if not self.layout.cluster:
            self.command(f"INSERT INTO {table} ({names}) {select}", parameters)
            return 1
        count = self.nodes()
        target = self.layout.on_every_replica(table)
        for node in range(1, count + 1):
            self._on_the_cluster(f"node {node} of {count} did not take the write to {table}", lambda node=node: (
                self.command(f"INSERT INTO FUNCTION {target} ({names}) SETTINGS insert_shard_id = {node} {select}",
                             parameters)))
        return count

    def insert_replicated_everywhere(self, table: str, columns: Sequence[str], select: str,
                                     parameters: dict[str, Any] | None = None) -> None:
        """``INSERT INTO table (columns) SELECT ...`` into a replicated table that every
        node has (one replication group of all nodes): on a cluster it returns once
        every node has the rows (``insert_quorum`` = the number of nodes); a node that
        is down makes it ``Unavailable``."""
        names = ", ".join(columns)
        if not self.layout.cluster:
            self.command(f"INSERT INTO {table} ({names}) {select}", parameters)
            return
        count = self.nodes()
        self._on_the_cluster(f"not every node took the write to {table}", lambda: self.command(
            f"INSERT INTO {table} ({names}) SETTINGS insert_quorum = {count} {select}", parameters))

    def insert_select(self, table: str, select: str, parameters: dict[str, Any] | None = None) -> None:
        """``INSERT INTO table SELECT ...`` of rows computed again (a rollup rebuilt after a
        deletion): on a cluster written on every shard, on a majority of its replicas,
        before it returns (as persist's inserts), and never taken for a retried insert
        (replicated tables drop a block equal to a recent one; rows written again after
        their deletion are no retry)."""
        settings = (" SETTINGS insert_deduplicate = 0, " + ", ".join(
            f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in CLUSTER_INSERT_SETTINGS.items())
            if self.layout.cluster else "")
        self.command(f"INSERT INTO {table}{settings} {select}", parameters)

    def mutate(self, table: str, command: str, parameters: dict[str, Any] | None = None) -> None:
        """``ALTER TABLE table <command>`` (a DELETE with ``mutations_sync = 2``) carried out
        on every copy of the table's rows before it returns. On a cluster, by where the
        table is (as the migrations placed it; each node has the same tables):

        - sharded (``<table>_local`` exists): ``<table>_local ON CLUSTER`` (a Distributed
          table takes no mutation); one replica of each shard runs it, replication
          passes it on, ``mutations_sync = 2`` waits for every replica;
        - a replicated table every node has: the table itself (one replication group:
          replication passes the mutation to every node);
        - any other (a Join table, each node's own): the table ``ON CLUSTER`` (every node).
        """
        target = table
        if self.layout.cluster:
            engines = dict(self.rows("SELECT name, engine FROM system.tables WHERE database = currentDatabase()"
                                     " AND name IN ({t:String}, {l:String})",
                                     {"t": table, "l": self.layout.local(table)}))
            on = f" ON CLUSTER '{self.layout.cluster}'"
            if self.layout.local(table) in engines:
                target = self.layout.local(table) + on
            elif not engines.get(table, "").endswith("MergeTree"):
                target = table + on
        self._on_the_cluster(f"the change to {table} did not reach every node", lambda: self.command(
            f"ALTER TABLE {target} {command}", parameters))

    def _on_the_cluster(self, what: str, work: Any) -> Any:
        """``work()``; on a cluster, any failure is ``Unavailable`` (a node down, a quorum
        not reached): the caller's work is redone later (a 503, a redelivery, a job
        resumed). One node: errors pass as they are."""
        if not self.layout.cluster:
            return work()
        try:
            return work()
        except Unavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - the cause is kept (logged, never answered)
            raise Unavailable(f"clickhouse: {what}") from exc

    def insert_json_rows(self, table: str, columns: Sequence[str], body: bytes) -> None:
        """Insert ``JSONEachRow`` bytes; ClickHouse parses them, no Python per row.

        Returns only when the rows are written (synchronous insert)."""
        settings: dict[str, Any] = {"async_insert": 0}
        if self.layout.cluster:
            settings.update(CLUSTER_INSERT_SETTINGS)
        with self.borrow() as client:
            client.raw_insert(table, list(columns), insert_block=body, fmt="JSONEachRow", settings=settings)

    def stream(self, sql: str, parameters: dict[str, Any] | None, fmt: str) -> Iterator[bytes]:
        """Bytes of a result formatted by ClickHouse itself (CSV, JSON, Parquet...),
        as they come: a server streams every format; chDB streams the formats
        whose blocks concatenate (``CHDB_STREAMED``), and Parquet is written
        here from its Arrow stream, a row group per block. Only other formats
        are answered in one piece."""
        with self.borrow() as client:
            if self.embedded and fmt == "Parquet":
                yield from _parquet(client.query_arrow_stream(sql, parameters=parameters),
                                    lambda: client.raw_query(sql, parameters=parameters, fmt=fmt))
                return
            if self.embedded and fmt not in CHDB_STREAMED:
                data = client.raw_query(sql, parameters=parameters, fmt=fmt)
                for start in range(0, len(data), CHUNK):
                    yield data[start:start + CHUNK]
                return
            with client.raw_stream(sql, parameters=parameters, fmt=fmt) as source:
                read = getattr(source, "read", None)
                if read is None:
                    yield from source
                    return
                while chunk := read(CHUNK):
                    yield chunk

    def memory(self) -> dict[str, float]:
        """The engine's memory by kind (``MEMORY_METRICS``), in bytes; for a server too."""
        return {str(name): float(value) for name, value in self.rows(
            "SELECT metric, value FROM system.metrics WHERE has({names:Array(String)}, metric)",
            {"names": list(MEMORY_METRICS)})}

    def ping(self) -> bool:
        try:
            return self.rows("SELECT 1") == [(1,)]
        except Exception:  # noqa: BLE001 - readiness reports any failure as not ready
            return False

    def close(self) -> None:
        with self._lock:
            self._closed = True
        while True:
            try:
                _close_quietly(self._idle.get_nowait())
            except queue.Empty:
                return


def insert_group(write: Callable[[bytes], None], max_bytes: int, linger_s: float) -> GroupCommit[bytes, None]:
    """Inserts of ``JSONEachRow`` bodies written as one (``max_bytes`` at most per insert)."""

    def combined(bodies: list[bytes]) -> list[None]:
        write(b"\n".join(bodies))
        return [None] * len(bodies)

    return GroupCommit(combined, max_size=max_bytes, size=len, linger_s=linger_s)


def _close_quietly(client: Client) -> None:
    with suppress(Exception):  # the client is being thrown away
        client.close()


class _Spool:
    """A write-only file that hands over what was written since the last take."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.closed = False
        self.position = 0

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def _parquet(batches: Any, empty: Any) -> Iterator[bytes]:
    """Parquet from an Arrow batch stream; ``empty()`` answers a result with no rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    spool = _Spool()
    writer = None
    with batches as stream:
        for batch in stream:
            table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
            if writer is None:
                writer = pq.ParquetWriter(spool, table.schema, compression="zstd")
            writer.write_table(table)
            if data := spool.take():
                yield data
    if writer is None:
        yield empty()
        return
    writer.close()
    yield spool.take()
