"""Soak: hold a steady ingest rate for N minutes against `pulse up` and watch
throughput, latency and memory over time, so leaks and slow drifts show.

    python bench/soak.py --minutes 2 --rate 20 --batch 50 --clients 4

Starts `pulse up --demo` in a scratch state directory (its own process: the
five functions, gateway, dispatcher and chDB; the Tansu broker and Postgres
as their processes), paces POST /v1/events at --rate requests/s, and every
--every seconds prints: requests and events acknowledged in the window,
p50/p99 latency of one POST, consumer lag, RSS of Pulse, the broker and
Postgres. At the end it waits until every acknowledged event is counted by
the stats API and prints totals, with the first window as the baseline the
last one is compared with (latency and RSS ratios). Not a test: it asserts
nothing about time; it does fail if an acknowledged event is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psutil
import urllib3


@dataclass
class Window:
    started: float
    latencies: list[float] = field(default_factory=list)
    events: int = 0
    errors: int = 0


class Load:
    """Clients pacing POSTs to a shared schedule of --rate requests per second."""

    def __init__(self, url: str, key: str, rate: float, batch: int, clients: int) -> None:
        self.url, self.key, self.rate, self.batch, self.clients = url, key, rate, batch, clients
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.window = Window(time.monotonic())
        self.acked = 0
        self.next_slot = time.monotonic()

    def _slot(self) -> float:
        with self.lock:
            slot = max(self.next_slot, time.monotonic())
            self.next_slot = slot + 1.0 / self.rate
            return slot

    def run(self) -> None:
        http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=30), maxsize=1)
        headers = {"X-API-Key": self.key, "Content-Type": "application/json"}
        while not self.stop.is_set():
            delay = self._slot() - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                return
            now = datetime.now(UTC).isoformat()
            body = orjson.dumps({"events": [
                {"event_id": str(uuid.uuid4()), "event_type": f"soak_{n % 5}", "user_id": f"u{n % 97}",
                 "occurred_at": now, "properties": {"n": n}} for n in range(self.batch)]})
            started = time.perf_counter()
            try:
                status = http.request("POST", self.url + "/v1/events", body=body, headers=headers).status
            except urllib3.exceptions.HTTPError:
                status = 0
            elapsed = time.perf_counter() - started
            with self.lock:
                if status == 202:
                    self.window.latencies.append(elapsed)
                    self.window.events += self.batch
                    self.acked += self.batch
                else:
                    self.window.errors += 1

    def take_window(self) -> Window:
        with self.lock:
            window, self.window = self.window, Window(time.monotonic())
        return window


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mb(processes: list[psutil.Process]) -> float:
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total / 2**20


def start_pulse(state: Path, port: int) -> tuple[subprocess.Popen[str], str, str, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "pulse.cli", "up", "--demo", "--demo-events", "100", "--port", str(port),
         "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=open(state.parent / "pulse.log", "w"), text=True,  # noqa: SIM115 - held for the life of the process
        env={**os.environ, "PULSE_LOG_LEVEL": "WARNING"})
    url = key = persist = ""
    assert process.stdout is not None
    for line in process.stdout:
        if match := re.match(r"Pulse is up: (\S+)", line):
            url = match.group(1)
        elif match := re.match(r"\s+persist\s+(\S+)", line):
            persist = match.group(1)
        elif match := re.match(r"API key \(ingest \+ read\): (\S+)", line):
            key = match.group(1)
        if url and key and persist:
            return process, url, key, persist
    raise RuntimeError(f"pulse up did not start; see {state.parent / 'pulse.log'}")


def consumer_lag(http: urllib3.PoolManager, persist_url: str) -> float:
    text = http.request("GET", persist_url + "/metrics").data.decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("pulse_consumer_lag{") and 'topic="pulse.events.raw"' in line)


def counted(http: urllib3.PoolManager, url: str, key: str) -> int:
    answer = http.request("GET", url + "/v1/stats/top-events?limit=100", headers={"X-API-Key": key})
    rows = orjson.loads(answer.data)
    rows = rows if isinstance(rows, list) else rows.get("results", [])
    return sum(int(r["count"]) for r in rows if str(r["event_type"]).startswith("soak_"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--batch", type=int, default=50, help="events per request")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--every", type=float, default=15.0, help="seconds per report line")
    parser.add_argument("--port", type=int, default=0, help="gateway port (0: any free one)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pulse-soak-"))
    port = args.port or _free_port()
    pulse, url, key, persist_url = start_pulse(workdir / "state", port)
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=30))
    me = psutil.Process(pulse.pid)
    broker = [c for c in me.children(recursive=True) if "tansu" in " ".join(c.cmdline())]
    postgres = [p for p in psutil.process_iter(["cmdline"])
                if "postgres" in " ".join(p.info["cmdline"] or []) and str(workdir) in " ".join(p.info["cmdline"] or [])]
    postgres = postgres + [c for p in postgres for c in p.children(recursive=True)]
    load = Load(url, key, args.rate, args.batch, args.clients)
    threads = [threading.Thread(target=load.run, daemon=True) for _ in range(args.clients)]
    print(f"soak: {args.rate:g} req/s x {args.batch} events for {args.minutes:g} min, {args.clients} clients,"
          f" against {url}", flush=True)
    print(f"{'t(s)':>6} {'req':>6} {'events/s':>9} {'err':>4} {'p50 ms':>7} {'p99 ms':>7} {'lag':>6}"
          f" {'pulse MB':>9} {'broker MB':>10} {'postgres MB':>12}", flush=True)
    rows: list[dict[str, float]] = []
    all_latencies: list[float] = []
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        deadline = started + args.minutes * 60
        while time.monotonic() < deadline:
            time.sleep(min(args.every, max(0.0, deadline - time.monotonic())))
            window = load.take_window()
            span = max(1e-9, time.monotonic() - window.started)
            row = {"t": time.monotonic() - started, "requests": len(window.latencies),
                   "events_s": window.events / span, "errors": window.errors,
                   "p50": percentile(window.latencies, 0.5) * 1000, "p99": percentile(window.latencies, 0.99) * 1000,
                   "lag": consumer_lag(http, persist_url), "pulse": rss_mb([me]),
                   "broker": rss_mb(broker), "postgres": rss_mb(postgres)}
            rows.append(row)
            all_latencies.extend(window.latencies)
            print(f"{row['t']:6.0f} {row['requests']:6.0f} {row['events_s']:9.0f} {row['errors']:4.0f}"
                  f" {row['p50']:7.1f} {row['p99']:7.1f} {row['lag']:6.0f} {row['pulse']:9.0f}"
                  f" {row['broker']:10.0f} {row['postgres']:12.0f}", flush=True)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(30)
    held = time.monotonic() - started
    drain_deadline = time.monotonic() + 120
    while (seen := counted(http, url, key)) < load.acked and time.monotonic() < drain_deadline:
        time.sleep(0.5)
    pulse.send_signal(signal.SIGTERM)
    pulse.wait(120)

    first, last = rows[0], rows[-1]
    print(f"\nheld {held:.0f} s: {load.acked} events acknowledged ({load.acked / held:.0f} events/s,"
          f" {len(all_latencies) / held:.1f} req/s), {seen} counted by the stats API,"
          f" {sum(r['errors'] for r in rows):.0f} errors")
    print(f"latency of one POST: p50 {percentile(all_latencies, 0.5) * 1000:.1f} ms,"
          f" p99 {percentile(all_latencies, 0.99) * 1000:.1f} ms;"
          f" last window p99 / first window p99 = {last['p99'] / first['p99']:.2f}")
    for name in ("pulse", "broker", "postgres"):
        print(f"RSS {name}: {first[name]:.0f} MB -> {last[name]:.0f} MB"
              f" (x{last[name] / max(first[name], 1e-9):.2f}; peak {max(r[name] for r in rows):.0f} MB)")
    if seen != load.acked:
        print(f"MISSING: {load.acked - seen} acknowledged events not counted", file=sys.stderr)
        return 1
    return 0


def _free_port() -> int:
    from pulse.local.embedded import free_port

    return free_port()


if __name__ == "__main__":
    sys.exit(main())
