"""Postgres access: a small thread-safe pool of pg8000 connections.

URLs: ``postgresql://user:pass@host:5432/db`` over TCP, or a Unix socket
directory in the ``host`` query parameter (``postgresql://postgres@/postgres?host=/dir``),
which is how the embedded server is reached.

A connection that broke (server restarted, network) is dropped and the call
is tried once more on a fresh one, so a Postgres restart costs one failed
attempt at most, never a stuck function. Callers keep their statements
idempotent or inside ``transaction()``, so a retry is harmless.

With a standby (CloudNativePG, docs/scaling.md), a switchover closes every
connection to the old primary and moves the read-write Service to the new
one: a call in flight fails once and is retried on a fresh connection; a
write that reaches a server no longer primary (SQLSTATE 25006, read-only)
drops the pool and is ``Unavailable`` (503, or a redelivery for persist),
never a 500.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import pg8000.native
from pg8000.exceptions import DatabaseError, InterfaceError
from pg8000.native import Connection

from pulse.errors import Unavailable

T = TypeVar("T")
READ_ONLY = "25006"  # read_only_sql_transaction: a standby, or a primary being demoted



def connect_kwargs(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    kwargs: dict[str, Any] = {
        "user": unquote(parts.username or "postgres"),
        "database": unquote(parts.path.lstrip("/")) or "postgres",
        "timeout": 30,
    }
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    socket_dir = query.get("host", [None])[0]
    if socket_dir and socket_dir.startswith("/"):
        port = parts.port or 5432
        kwargs["unix_sock"] = f"{socket_dir}/.s.PGSQL.{port}"
        # No TLS over a local socket (as libpq); pg8000 would otherwise build a TLS
        # context per connection (~10 ms of CPU) only to be told no.
        kwargs["ssl_context"] = False
    else:
        kwargs["host"] = parts.hostname or "localhost"
        kwargs["port"] = parts.port or 5432
    return kwargs


class Database:
    def __init__(self, url: str, max_connections: int = 32) -> None:
        self._kwargs = connect_kwargs(url)
        self._idle: queue.LifoQueue[Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._closed = False
        self._sessions: list[Connection] = []
        self._sessions_lock = threading.Lock()

    def _open(self) -> Connection:
        try:
            return pg8000.native.Connection(**self._kwargs)
        except (InterfaceError, OSError) as exc:
            raise Unavailable("postgres is unreachable") from exc

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        if not self._slots.acquire(timeout=30):
            raise Unavailable("postgres: no free connection")
        conn: Connection | None = None
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._open()
            yield conn
        except (InterfaceError, OSError):
            if conn is not None:
                _close_quietly(conn)
            conn = None
            raise
        finally:
            if conn is not None:
                if self._closed:
                    _close_quietly(conn)
                else:
                    self._idle.put(conn)
            self._slots.release()

    def call(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` on a pooled connection; once more on a new one if the first broke."""
        for attempt in (1, 2):
            try:
                with self.connection() as conn:
                    return work(conn)
            except (InterfaceError, OSError) as exc:
                self._drain()
                if attempt == 2:
                    raise Unavailable("postgres connection failed") from exc
            except DatabaseError as exc:
                if _is_shutdown(exc) and attempt == 1:
                    self._drain()
                    continue
                if _sqlstate(exc) == READ_ONLY:
                    self._drain()
                    raise Unavailable("postgres is read-only: its primary is moving (switchover or failover)") from exc
                raise
        raise AssertionError("unreachable")

    def session(self) -> Connection:
        """A connection of the caller's own, outside the pool (for session state
        such as advisory locks); ended by ``end_session``, or at the latest by ``close``."""
        conn = self._open()
        with self._sessions_lock:
            self._sessions.append(conn)
        return conn

    def end_session(self, conn: Connection) -> None:
        with self._sessions_lock:
            self._sessions = [c for c in self._sessions if c is not conn]
        _close_quietly(conn)

    def run(self, sql: str, **params: Any) -> list[list[Any]]:
        return self.call(lambda conn: conn.run(sql, **params) or [])

    def transaction(self, work: Callable[[Connection], T]) -> T:
        return self.call(lambda conn: in_transaction(conn, lambda: work(conn)))

    def ping(self) -> bool:
        try:
            return self.run("SELECT 1") == [[1]]
        except Exception:  # noqa: BLE001 - readiness reports any failure as not ready
            return False

    def _drain(self) -> None:
        while True:
            try:
                _close_quietly(self._idle.get_nowait())
            except queue.Empty:
                return

    def close(self) -> None:
        self._closed = True
        self._drain()
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for conn in sessions:
            _close_quietly(conn)


def in_transaction(conn: Connection, work: Callable[[], T]) -> T:
    """``work`` between BEGIN and COMMIT on ``conn``; rolled back if it raises."""
    conn.run("BEGIN")
    try:
        result = work()
    except BaseException:
        with suppress(InterfaceError, OSError, DatabaseError):
            conn.run("ROLLBACK")
        raise
    conn.run("COMMIT")
    return result


def _sqlstate(exc: DatabaseError) -> str:
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return str(info.get("C", ""))


def _is_shutdown(exc: DatabaseError) -> bool:
    # 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now
    return _sqlstate(exc).startswith("57P")


def _close_quietly(conn: Connection) -> None:
    with suppress(Exception):  # the connection is being thrown away
        conn.close()
