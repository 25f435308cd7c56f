"""Soak: hold a mixed load on `pulse up` for N minutes and watch throughput,
latency and memory over time, so leaks and slow drifts show.

    python bench/soak.py                    # 60 min: 2,000 events/s from 2 writers, 2 readers
    python bench/soak.py --minutes 10       # shorter

Starts `pulse up --demo` in a scratch state directory, then:
- writers post --batch-event batches (500) paced to --rate events/s (2,000)
  in all, about --resend (2 %) of the records re-sends of events already
  sent (same event_id), and a request that is not answered 202 is sent again
  as clients do;
- readers each cycle overview, dau, top-events, retention and funnel, one
  request every --read-every seconds (0.25).
Every --every seconds (30) it prints: events acknowledged per second, p50/p99
of one POST and of one read, 5xx answers, consumer lag, and memory: RSS of
the main process, the ingest process(es), the broker and Postgres (PSS, so
that shared pages count once), their sum,
and the embedded ClickHouse engine's tracked memory and mark cache (from
``pulse_clickhouse_memory_bytes``), and how many reads were under way while
memory was sampled (their working sets are in that sample). At the end it waits until every distinct
acknowledged event is counted, then prints the verdicts: count exact, no
5xx, reads' p99 under 300 ms, and the memory sum of the last 20 minutes (the
last third of a shorter run) within ±5 % of its mean.

Not a test: it asserts nothing about time; it exits 1 if an acknowledged
event is missing or counted twice.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
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

TYPES = ("soak_view", "soak_signup", "soak_buy")
READS = ("overview", "dau", "top-events", "retention", "funnel")


@dataclass
class Window:
    started: float
    writes: list[float] = field(default_factory=list)
    reads: list[float] = field(default_factory=list)
    events: int = 0
    write_5xx: int = 0
    read_5xx: int = 0
    other_errors: int = 0


class Load:
    """Writers pacing batches to a shared schedule; readers cycling the stats API."""

    def __init__(self, url: str, key: str, args: argparse.Namespace) -> None:
        self.url, self.key, self.args = url, key, args
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.window = Window(time.monotonic())
        self.acked_ids: set[str] = set()
        self.next_slot = time.monotonic()
        self.recent: list[dict[str, object]] = []
        self.rng = random.Random(7)  # noqa: S311 - reproducible load
        self.in_flight = 0  # reads under way (a memory sample taken meanwhile holds their working sets)
        self.read_times: dict[str, list[float]] = {name: [] for name in READS}

    def _slot(self) -> float:
        with self.lock:
            slot = max(self.next_slot, time.monotonic())
            self.next_slot = slot + self.args.batch / self.args.rate
            return slot

    def _batch(self) -> list[dict[str, object]]:
        now = datetime.now(UTC).isoformat()
        with self.lock:
            resends = [self.rng.choice(self.recent) for _ in range(int(self.args.batch * self.args.resend))
                       if self.recent]
            fresh = [{"event_id": str(uuid.uuid4()), "event_type": self.rng.choice(TYPES),
                      "user_id": f"u{self.rng.randrange(3000)}", "occurred_at": now,
                      "properties": {"n": self.rng.randrange(100)}}
                     for _ in range(self.args.batch - len(resends))]
            self.recent = (self.recent + fresh)[-20_000:]
        events = fresh + resends
        self.rng.shuffle(events)
        return events

    def write(self) -> None:
        http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=60), maxsize=1)
        headers = {"X-API-Key": self.key, "Content-Type": "application/json"}
        while not self.stop.is_set():
            delay = self._slot() - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                return
            events = self._batch()
            body = orjson.dumps({"events": events})
            while not self.stop.is_set():  # sent again until acknowledged, as clients do
                started = time.perf_counter()
                try:
                    status = http.request("POST", self.url + "/v1/events", body=body, headers=headers).status
                except urllib3.exceptions.HTTPError:
                    status = 0
                elapsed = time.perf_counter() - started
                with self.lock:
                    if status == 202:
                        self.window.writes.append(elapsed)
                        self.window.events += len(events)
                        self.acked_ids.update(str(e["event_id"]) for e in events)
                    elif status >= 500:
                        self.window.write_5xx += 1
                    else:
                        self.window.other_errors += 1
                if status == 202:
                    break
                self.stop.wait(1.0)

    def read(self, offset: int) -> None:
        http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=60), maxsize=1)
        headers = {"X-API-Key": self.key, "Content-Type": "application/json"}
        funnel = orjson.dumps({"steps": list(TYPES), "window_seconds": 86400})
        turn = offset
        while not self.stop.wait(self.args.read_every):
            name = READS[turn % len(READS)]
            turn += 1
            with self.lock:
                self.in_flight += 1
            started = time.perf_counter()
            try:
                if name == "funnel":
                    status = http.request("POST", self.url + "/v1/stats/funnel", body=funnel, headers=headers).status
                else:
                    status = http.request("GET", f"{self.url}/v1/stats/{name}", headers=headers).status
            except urllib3.exceptions.HTTPError:
                status = 0
            elapsed = time.perf_counter() - started
            with self.lock:
                self.in_flight -= 1
                if status == 200:
                    self.window.reads.append(elapsed)
                    self.read_times[name].append(elapsed)
                elif status >= 500:
                    self.window.read_5xx += 1
                else:
                    self.window.other_errors += 1

    def take_window(self) -> Window:
        with self.lock:
            window, self.window = self.window, Window(time.monotonic())
        return window


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def pss_mb(processes: list[psutil.Process]) -> float:
    """Proportional set size: pages shared between processes (Postgres's shared
    buffers, a library) count once in a sum, split among those that map them."""
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_full_info().pss
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


def scrape(http: urllib3.PoolManager, persist_url: str) -> tuple[float, dict[str, float]]:
    """(consumer lag of the raw topic, the engine's memory by kind in MB) from the main process."""
    text = http.request("GET", persist_url + "/metrics").data.decode()
    lag = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("pulse_consumer_lag{") and 'topic="pulse.events.raw"' in line)
    memory = {match.group(1): float(match.group(2)) / 2**20
              for match in re.finditer(r'^pulse_clickhouse_memory_bytes\{kind="(\w+)"\} (\S+)$', text, re.M)}
    return lag, memory


def counted(http: urllib3.PoolManager, url: str, key: str) -> int:
    answer = http.request("GET", url + "/v1/stats/top-events?limit=100", headers={"X-API-Key": key})
    rows = orjson.loads(answer.data)
    rows = rows if isinstance(rows, list) else rows.get("results", [])
    return sum(int(r["count"]) for r in rows if str(r["event_type"]).startswith("soak_"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=2000.0, help="events per second, all writers together")
    parser.add_argument("--batch", type=int, default=500, help="events per request")
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--resend", type=float, default=0.02, help="share of each batch re-sent from earlier ones")
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--read-every", type=float, default=0.25, help="seconds between one reader's requests")
    parser.add_argument("--every", type=float, default=30.0, help="seconds per report line")
    parser.add_argument("--port", type=int, default=0, help="gateway port (0: any free one)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pulse-soak-"))
    port = args.port or _free_port()
    pulse, url, key, persist_url = start_pulse(workdir / "state", port)
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=30))
    main_process = psutil.Process(pulse.pid)
    children = main_process.children(recursive=True)
    broker = [c for c in children if "tansu" in " ".join(c.cmdline())]
    ingest = [c for c in children if c not in broker and "multiprocessing" in " ".join(c.cmdline())]
    postgres = [p for p in psutil.process_iter(["cmdline"])
                if "postgres" in " ".join(p.info["cmdline"] or []) and str(workdir) in " ".join(p.info["cmdline"] or [])]
    postgres = postgres + [c for p in postgres for c in p.children(recursive=True)]
    load = Load(url, key, args)
    threads = [threading.Thread(target=load.write, daemon=True) for _ in range(args.writers)]
    threads += [threading.Thread(target=load.read, args=(n,), daemon=True) for n in range(args.readers)]
    print(f"soak: {args.rate:g} events/s in {args.batch}-event batches ({args.resend:.0%} re-sent) from"
          f" {args.writers} writers, {args.readers} readers every {args.read_every:g} s, {args.minutes:g} min,"
          f" against {url}", flush=True)
    print(f"{'t(s)':>6} {'events/s':>9} {'w p50':>6} {'w p99':>6} {'r p50':>6} {'r p99':>6} {'5xx':>4} {'lag':>5}"
          f" {'main':>6} {'ingest':>7} {'broker':>7} {'pg':>5} {'sum MB':>7} {'ch MB':>6} {'marks':>6} {'reads':>5}", flush=True)
    rows: list[dict[str, float]] = []
    writes: list[float] = []
    reads: list[float] = []
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        deadline = started + args.minutes * 60
        while time.monotonic() < deadline:
            time.sleep(min(args.every, max(0.0, deadline - time.monotonic())))
            window = load.take_window()
            span = max(1e-9, time.monotonic() - window.started)
            lag, engine = scrape(http, persist_url)
            busy = load.in_flight
            row = {"t": time.monotonic() - started, "events_s": window.events / span,
                   "w50": percentile(window.writes, 0.5) * 1000, "w99": percentile(window.writes, 0.99) * 1000,
                   "r50": percentile(window.reads, 0.5) * 1000, "r99": percentile(window.reads, 0.99) * 1000,
                   "5xx": window.write_5xx + window.read_5xx, "errors": window.other_errors, "lag": lag,
                   "main": pss_mb([main_process]), "ingest": pss_mb(ingest), "broker": pss_mb(broker),
                   "postgres": pss_mb(postgres), "ch": engine.get("MemoryTracking", 0.0),
                   "marks": engine.get("MarkCacheBytes", 0.0)}
            row["sum"] = row["main"] + row["ingest"] + row["broker"] + row["postgres"]
            row["busy"] = max(busy, load.in_flight)
            rows.append(row)
            writes.extend(window.writes)
            reads.extend(window.reads)
            print(f"{row['t']:6.0f} {row['events_s']:9.0f} {row['w50']:6.0f} {row['w99']:6.0f} {row['r50']:6.0f}"
                  f" {row['r99']:6.0f} {row['5xx']:4.0f} {row['lag']:5.0f} {row['main']:6.0f} {row['ingest']:7.0f}"
                  f" {row['broker']:7.0f} {row['postgres']:5.0f} {row['sum']:7.0f} {row['ch']:6.0f}"
                  f" {row['marks']:6.1f} {row['busy']:5.0f}", flush=True)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(60)
    held = time.monotonic() - started
    expected = len(load.acked_ids)
    drain_deadline = time.monotonic() + 300
    while (seen := counted(http, url, key)) != expected and time.monotonic() < drain_deadline:
        time.sleep(0.5)
    pulse.send_signal(signal.SIGTERM)
    pulse.wait(120)

    tail_s = 20 * 60 if held >= 50 * 60 else held / 3
    tail = [r["sum"] for r in rows if r["t"] >= held - tail_s] or [rows[-1]["sum"]]
    mean, spread = flatness(tail)
    idle = [r["sum"] for r in rows if r["t"] >= held - tail_s and not r["busy"]]
    server_errors = sum(r["5xx"] for r in rows)
    read_p99 = percentile(reads, 0.99) * 1000
    print(f"\nheld {held:.0f} s: {expected} distinct events acknowledged ({sum(r['events_s'] for r in rows) / len(rows):.0f}"
          f" events/s), {seen} counted; {server_errors:.0f} answers 5xx, {sum(r['errors'] for r in rows):.0f} other"
          " errors")
    print(f"one POST: p50 {percentile(writes, 0.5) * 1000:.0f} ms, p99 {percentile(writes, 0.99) * 1000:.0f} ms;"
          f" one read: p50 {percentile(reads, 0.5) * 1000:.0f} ms, p99 {read_p99:.0f} ms")
    for name, times in load.read_times.items():
        print(f"  {name}: {len(times)} reads, p50 {percentile(times, 0.5) * 1000:.0f} ms,"
              f" p99 {percentile(times, 0.99) * 1000:.0f} ms")
    for name in ("main", "ingest", "broker", "postgres", "sum", "ch"):
        print(f"memory {name}: {rows[0][name]:.0f} MB -> {rows[-1][name]:.0f} MB (peak {max(r[name] for r in rows):.0f})")
    print(f"verdicts: count {'exact' if seen == expected else f'OFF BY {seen - expected:+d}'};"
          f" 5xx {server_errors or 'none'};"
          f" reads p99 {read_p99:.0f} ms {'< 300' if read_p99 < 300 else '>= 300'};"
          f" memory sum over the last {tail_s / 60:.0f} min within ±{100 * spread:.1f} % of {mean:.0f} MB"
          f" ({'flat' if spread <= 0.05 else 'NOT flat'})")
    if idle:  # what the processes keep between queries, without the working sets of reads under way
        idle_mean, idle_spread = flatness(idle)
        print(f"  of which the {len(idle)} samples taken with no read under way: within ±{100 * idle_spread:.1f} %"
              f" of {idle_mean:.0f} MB")
    return 0 if seen == expected else 1


def flatness(values: list[float]) -> tuple[float, float]:
    """(mean, the largest distance of a value from it as a share of it)."""
    mean = sum(values) / len(values)
    return mean, max(abs(v - mean) / mean for v in values)


def _free_port() -> int:
    from pulse.local.embedded import free_port

    return free_port()


if __name__ == "__main__":
    sys.exit(main())
