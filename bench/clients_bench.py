"""Benchmarks of the client-facing paths, each with a baseline from the same run.

    .venv/bin/python bench/clients_bench.py [--rows 1000000] [--segment-events 100000]

Starts Pulse embedded in a scratch state directory (its own chDB path), then:
1. import: a generated CSV of --rows rows through ``POST /v1/import`` (the
   ``pulse import`` upload), rows/s until the answer and until every row is
   queryable; baseline: the same rows as ``POST /v1/events`` 1000-event batches.
2. export: every row through ``GET /v1/export`` as CSV, NDJSON and Parquet,
   rows/s and the process's peak RSS growth while streaming; baseline: the
   same CSV fetched from chDB in one piece (``raw_query``), as a non-streamed
   export would.
3. Segment: --segment-events events as ``/v1/batch`` bodies of 500 messages vs
   ``/v1/events`` bodies of 500 events, from --clients processes; events/s
   until every request was answered.
Not a test: it prints figures and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import urllib3

from pulse.client.upload import import_file
from pulse.local.demo import create_demo_key
from pulse.local.runtime import Runtime
from pulse.settings import Settings

PAGE = 4096


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 1e6


class PeakRss:
    """The largest RSS seen while the block runs, sampled every 10 ms."""

    def __enter__(self) -> PeakRss:
        self.before = rss_mb()
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())

    @property
    def growth(self) -> float:
        return self.peak - self.before


def count(runtime: Runtime, project_id: str) -> int:
    assert runtime.services is not None
    return int(runtime.services.ch.rows("SELECT count() FROM events WHERE project_id = {p:UUID}",
                                        {"p": project_id})[0][0])


def wait_rows(runtime: Runtime, project_id: str, expected: int, timeout_s: float = 1800) -> float:
    deadline = time.perf_counter() + timeout_s
    while count(runtime, project_id) < expected:
        if time.perf_counter() > deadline:
            raise RuntimeError("rows did not all arrive in time")
        time.sleep(0.2)
    return time.perf_counter()


def rows(n: int, seed: str) -> list[dict[str, Any]]:
    base = datetime.now(UTC) - timedelta(hours=6)
    return [{"event_id": str(uuid.uuid4()), "occurred_at": (base + timedelta(milliseconds=i)).isoformat(),
             "user_id": f"u{i % 5000}", "event_type": f"{seed}-{i % 20}", "properties": {"n": i, "plan": "pro"}}
            for i in range(n)]


def write_csv(events: list[dict[str, Any]], path: Path) -> None:
    with path.open("w") as f:
        f.write("event_id,occurred_at,user_id,event_type,properties\n")
        for e in events:
            props = orjson.dumps(e["properties"]).decode().replace('"', '""')
            f.write(f'{e["event_id"]},{e["occurred_at"]},{e["user_id"]},{e["event_type"]},"{props}"\n')


def post_all(args: tuple[str, dict[str, str], list[bytes], int]) -> int:
    url, headers, bodies, expected = args
    http = urllib3.PoolManager(maxsize=1, retries=False)
    for body in bodies:
        response = http.request("POST", url, body=body, headers=headers)
        if response.status != expected:
            raise RuntimeError(f"POST {url}: {response.status} {response.data[:200]!r}")
    return len(bodies)


def bench_import(runtime: Runtime, n: int, work: Path) -> dict[str, float]:
    assert runtime.services is not None
    events = rows(n, "imp")
    path = work / "import.csv"
    write_csv(events, path)
    project_id, key = create_demo_key(runtime.services, "bench-import")
    started = time.perf_counter()
    status, answer = import_file(path, runtime.gateway_url, key)
    answered = time.perf_counter()
    if status != 200 or answer["accepted"] != n:
        raise RuntimeError(f"import failed: {status} {str(answer)[:300]}")
    done = wait_rows(runtime, project_id, n)

    base_id, base_key = create_demo_key(runtime.services, "bench-import-baseline")
    baseline = rows(n, "base")
    bodies = [orjson.dumps({"events": baseline[i:i + 1000]}) for i in range(0, n, 1000)]
    b_started = time.perf_counter()
    post_all((runtime.gateway_url + "/v1/events", {"X-API-Key": base_key, "Content-Type": "application/json"},
              bodies, 202))
    b_answered = time.perf_counter()
    b_done = wait_rows(runtime, base_id, n)
    return {"rows": n, "mb": path.stat().st_size / 1e6,
            "import_accept_rows_s": n / (answered - started), "import_e2e_rows_s": n / (done - started),
            "events_accept_rows_s": n / (b_answered - b_started), "events_e2e_rows_s": n / (b_done - b_started),
            "project_id": project_id, "key": key}  # type: ignore[dict-item]


def bench_export(runtime: Runtime, project_id: str, key: str, n: int) -> dict[str, dict[str, float]]:
    assert runtime.services is not None
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=1800))
    today = datetime.now(UTC).date()
    window = f"from={today - timedelta(days=1)}&to={today + timedelta(days=1)}"
    out = {}
    for fmt in ("csv", "ndjson", "parquet"):
        with PeakRss() as peak:
            started = time.perf_counter()
            response = http.request("GET", f"{runtime.gateway_url}/v1/export?format={fmt}&{window}",
                                    headers={"X-API-Key": key}, preload_content=False)
            size = 0
            for chunk in response.stream(1 << 16):
                size += len(chunk)
            response.release_conn()
            elapsed = time.perf_counter() - started
        out[fmt] = {"rows_s": n / elapsed, "mb": size / 1e6, "peak_rss_growth_mb": peak.growth}
    from pulse.core import exporting

    request = exporting.parse_request({"format": ["csv"], "from": [str(today - timedelta(days=1))],
                                       "to": [str(today + timedelta(days=1))]}, project_id, 731)
    sql, params = exporting.query(request)
    with PeakRss() as peak:
        started = time.perf_counter()
        with runtime.services.ch.borrow() as client:
            data = client.raw_query(sql, parameters=params, fmt="CSV")
        elapsed = time.perf_counter() - started
        size = len(data)
        del data
    out["csv_in_one_piece"] = {"rows_s": n / elapsed, "mb": size / 1e6, "peak_rss_growth_mb": peak.growth}
    return out


def bench_segment(runtime: Runtime, n: int, clients: int) -> dict[str, float]:
    assert runtime.services is not None
    seg_id, seg_key = create_demo_key(runtime.services, "bench-segment")
    ev_id, ev_key = create_demo_key(runtime.services, "bench-events")
    now = datetime.now(UTC).isoformat()
    messages = [{"type": "track", "event": f"e{i % 20}", "userId": f"u{i % 5000}", "messageId": str(uuid.uuid4()),
                 "timestamp": now, "properties": {"n": i}} for i in range(n)]
    seg_bodies = [orjson.dumps({"batch": messages[i:i + 500], "sentAt": now}) for i in range(0, n, 500)]
    events = rows(n, "ev")
    ev_bodies = [orjson.dumps({"events": events[i:i + 500]}) for i in range(0, n, 500)]
    auth = "Basic " + base64.b64encode(f"{seg_key}:".encode()).decode()
    results = {}
    context = multiprocessing.get_context("spawn")
    with context.Pool(clients) as pool:
        for name, url, headers, bodies, status, project in (
            ("segment", "/v1/batch", {"Authorization": auth, "Content-Type": "application/json"}, seg_bodies, 200,
             seg_id),
            ("events", "/v1/events", {"X-API-Key": ev_key, "Content-Type": "application/json"}, ev_bodies, 202,
             ev_id),
        ):
            started = time.perf_counter()
            pool.map(post_all, [(runtime.gateway_url + url, headers, bodies[c::clients], status)
                                for c in range(clients)])
            results[f"{name}_accept_events_s"] = n / (time.perf_counter() - started)
            wait_rows(runtime, project, n)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to import and export")
    parser.add_argument("--segment-events", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pulse-clients-bench-") as scratch:
        work = Path(scratch)
        runtime = Runtime(Settings(state_dir=work / "state", gateway_port=0)).start()
        try:
            imp = bench_import(runtime, args.rows, work)
            print(f"import {args.rows} rows ({imp['mb']:.0f} MB CSV):")
            print(f"  POST /v1/import      {imp['import_accept_rows_s']:>10,.0f} rows/s answered, "
                  f"{imp['import_e2e_rows_s']:>10,.0f} rows/s until queryable")
            print(f"  POST /v1/events x1000 {imp['events_accept_rows_s']:>9,.0f} rows/s answered, "
                  f"{imp['events_e2e_rows_s']:>10,.0f} rows/s until queryable  (baseline)")
            print(f"  ratio import/baseline: {imp['import_accept_rows_s'] / imp['events_accept_rows_s']:.2f} answered, "
                  f"{imp['import_e2e_rows_s'] / imp['events_e2e_rows_s']:.2f} end to end")
            exp = bench_export(runtime, str(imp["project_id"]), str(imp["key"]), args.rows)
            print(f"export {args.rows} rows (peak RSS growth of the whole process while streaming):")
            for name, figures in exp.items():
                label = name if name != "csv_in_one_piece" else "csv, one piece (baseline)"
                print(f"  {label:<26} {figures['rows_s']:>10,.0f} rows/s  {figures['mb']:>7.0f} MB  "
                      f"peak +{figures['peak_rss_growth_mb']:.0f} MB")
            base = exp["csv_in_one_piece"]["peak_rss_growth_mb"]
            print(f"  memory ratio streamed csv / one piece: "
                  f"{exp['csv']['peak_rss_growth_mb'] / base if base > 0 else float('nan'):.2f}")
            seg = bench_segment(runtime, args.segment_events, args.clients)
            print(f"ingest {args.segment_events} events in 500-event requests from {args.clients} clients:")
            print(f"  POST /v1/batch (Segment) {seg['segment_accept_events_s']:>10,.0f} events/s")
            print(f"  POST /v1/events          {seg['events_accept_events_s']:>10,.0f} events/s  (baseline)")
            print(f"  ratio segment/events: {seg['segment_accept_events_s'] / seg['events_accept_events_s']:.2f}")
        finally:
            runtime.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
