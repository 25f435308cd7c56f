"""ClickHouse access through clickhouse-connect: a server by ``http(s)://`` URL,
or the embedded chDB engine by ``chdb:///abs/path``. Same client API, same SQL.

Each thread gets its own client (chDB allows several in one process on one
path; only one process may hold a path). Every value goes in as a bound
parameter (``{name:Type}``); callers never format values into SQL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from pulse.errors import Unavailable


class ClickHouse:
    def __init__(self, url: str) -> None:
        self.url = url
        self.embedded = urlsplit(url).scheme == "chdb"
        self._local = threading.local()
        self._clients: list[Client] = []
        self._lock = threading.Lock()

    @property
    def client(self) -> Client:
        client = getattr(self._local, "client", None)
        if client is None:
            try:
                client = clickhouse_connect.get_client(dsn=self.url)
            except Exception as exc:  # noqa: BLE001 - any failure to open is "unreachable"
                raise Unavailable(f"clickhouse is unreachable: {exc}") from exc
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        return self.client.command(sql, parameters=parameters)

    def rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return list(self.client.query(sql, parameters=parameters).result_rows)

    def dicts(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        result = self.client.query(sql, parameters=parameters)
        names = result.column_names
        return [dict(zip(names, row, strict=True)) for row in result.result_rows]

    def insert_json_rows(self, table: str, columns: Sequence[str], body: bytes) -> None:
        """Insert ``JSONEachRow`` bytes; ClickHouse parses them, no Python per row.

        Returns only when the rows are written (synchronous insert)."""
        self.client.raw_insert(
            table, list(columns), insert_block=body, fmt="JSONEachRow",
            settings={"async_insert": 0},
        )

    def stream(self, sql: str, parameters: dict[str, Any] | None, fmt: str) -> Iterator[bytes]:
        """Bytes of a result formatted by ClickHouse itself (CSV, JSON, Parquet...)."""
        if self.embedded:
            # chDB answers in one piece; yield it in slices so callers stream uniformly.
            data = self.client.raw_query(sql, parameters=parameters, fmt=fmt)
            for start in range(0, len(data), 1 << 16):
                yield data[start:start + (1 << 16)]
            return
        with self.client.raw_stream(sql, parameters=parameters, fmt=fmt) as chunks:
            yield from chunks

    def ping(self) -> bool:
        try:
            return self.rows("SELECT 1") == [(1,)]
        except Exception:  # noqa: BLE001 - readiness reports any failure as not ready
            return False

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing at shutdown
                pass
