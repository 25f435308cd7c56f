"""``pulse bench``: ingest throughput end to end, with a baseline in the same run.

Starts Pulse embedded in a scratch state directory, then:
1. batched: N events in B-event batches from C client processes through the
   gateway; end-to-end events/s is from the first POST until every row is
   queryable in ClickHouse; p50/p99 of one POST;
2. baseline: the same kind of events posted one per request from the same
   number of clients (a subset: that path is slow by nature).
It prints both and their ratio. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import urllib3

from pulse.local.demo import create_demo_key, sample_events
from pulse.local.runtime import Runtime
from pulse.settings import Settings


def _post_all(args: tuple[str, str, list[bytes]]) -> list[float]:
    url, key, bodies = args
    http = urllib3.PoolManager(maxsize=1)
    latencies = []
    for body in bodies:
        started = time.perf_counter()
        response = http.request("POST", url, body=body,
                                headers={"X-API-Key": key, "Content-Type": "application/json"})
        latencies.append(time.perf_counter() - started)
        if response.status != 202:
            raise RuntimeError(f"POST failed: {response.status} {response.data[:200]!r}")
    return latencies


def _count(runtime: Runtime, project_id: str) -> int:
    if runtime.services is None:
        raise RuntimeError("the runtime is not started")
    rows = runtime.services.ch.rows("SELECT count() FROM events WHERE project_id = {p:UUID}", {"p": project_id})
    return int(rows[0][0])


def _run(runtime: Runtime, events: list[dict[str, Any]], batch: int, clients: int) -> dict[str, float]:
    if runtime.services is None:
        raise RuntimeError("the runtime is not started")
    project_id, key = create_demo_key(runtime.services, "bench")
    bodies = [orjson.dumps({"events": events[i:i + batch]}) if batch > 1 else orjson.dumps(events[i])
              for i in range(0, len(events), batch)]
    shares = [bodies[n::clients] for n in range(clients)]
    url = runtime.gateway_url + "/v1/events"
    context = multiprocessing.get_context("spawn")
    with context.Pool(clients) as pool:
        pool.map(_post_all, [(url, key, []) for _ in range(clients)])  # warm the workers up
        started = time.perf_counter()
        latencies = [lat for part in pool.map(_post_all, [(url, key, s) for s in shares]) for lat in part]
        posted = time.perf_counter()
    deadline = posted + 600
    while _count(runtime, project_id) < len(events):
        if time.perf_counter() > deadline:
            raise RuntimeError("events did not all arrive within 10 minutes")
        time.sleep(0.1)
    done = time.perf_counter()
    latencies.sort()
    return {
        "events": len(events),
        "requests": len(bodies),
        "accept_s": posted - started,
        "end_to_end_s": done - started,
        "events_per_s": len(events) / (done - started),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def run_bench(settings: Settings, args: argparse.Namespace) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="pulse-bench-"))
    runtime = Runtime(settings.with_(state_dir=scratch, gateway_port=0)).start()
    try:
        events = sample_events(args.events, days=30, seed=11)
        print(f"pulse bench: {args.events} events, batches of {args.batch}, {args.clients} client processes")
        batched = _run(runtime, events, args.batch, args.clients)
        baseline_events = sample_events(args.baseline_events, days=30, seed=12)
        baseline = _run(runtime, baseline_events, 1, args.clients)
    finally:
        runtime.stop()
    print(f"{'':<22}{'events':>9}{'requests':>10}{'accept s':>10}{'e2e s':>8}{'events/s':>11}"
          f"{'p50 ms':>9}{'p99 ms':>9}")
    for name, r in (("batched", batched), ("baseline (1/request)", baseline)):
        print(f"{name:<22}{r['events']:>9.0f}{r['requests']:>10.0f}{r['accept_s']:>10.2f}{r['end_to_end_s']:>8.2f}"
              f"{r['events_per_s']:>11.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}")
    print(f"batched / baseline end-to-end events/s: {batched['events_per_s'] / baseline['events_per_s']:.1f}x")
    return 0
