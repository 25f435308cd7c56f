"""``pulse bench``: ingest end to end on traffic as clients send it, against a
synchronous baseline measured in the same run.

Traffic: events spread over ``--days`` (56) from a user population of one
per 20 events, posted in batches by concurrent client processes; about
``--resend`` (2 %) of the records are re-sends of an event already sent (same
``event_id``, same content), half of them landing in a batch posted at the
same moment by another client, half in a later batch. Workloads (``--workloads``):

- ``b500``: 500-event batches, 4 clients, one project;
- ``b1000``: 1000-event batches, 4 clients;
- ``b50``: 50-event batches, 4 clients;
- ``c16``: 500-event batches, 16 clients;
- ``tenants``: one large project (500-event batches, 8 clients) and 20 small
  ones (50-event batches, 8 clients) sending at once.

For each, Pulse (``pulse up`` in this process, ingest in its own) and then
the baseline: one process that, per request, runs the same validation, the
same ledger claim and the same ClickHouse insert (pulse.core) and answers
once the rows are queryable, with no broker and no dispatcher, on its own
chDB path and the same Postgres. Pulse's end to end is from the first POST
until every distinct event is counted in ClickHouse; the baseline's until its
last answer (its rows are queryable then). Printed per workload: events/s,
the ratio, p50/p99 of one POST, 5xx answers the clients saw, deliveries that
failed inside Pulse (the dispatcher's ``pulse_dispatch_failed_attempts_total``),
whether the count is exact, and CPU seconds per 100,000 events of each process.

Not a test: nothing here asserts a time. Figures are comparable within a run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

from pulse.local.demo import create_demo_key, sample_events
from pulse.settings import Settings

WORKLOADS = ("b500", "b1000", "b50", "c16", "tenants")


@dataclass(frozen=True)
class Stream:
    """One client's requests in order: the API key and body of each."""

    keys: list[str]
    bodies: list[bytes]


@dataclass
class Traffic:
    name: str
    description: str
    streams: list[Stream]
    records: int
    distinct: dict[str, int]  # project → distinct events

    @property
    def events(self) -> int:
        return sum(self.distinct.values())


@dataclass
class Outcome:
    seconds: float = 0.0
    ingest: dict[str, float] = field(default_factory=dict)  # ingest_totals over the run
    accept_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    failed_deliveries: float = 0.0
    counted: int = 0
    cpu: dict[str, float] = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500 or status == 0)


# Traffic ------------------------------------------------------------------------

def with_resends(events: list[dict[str, Any]], batch: int, clients: int, share: float,
                 rng: random.Random, limit: int = 1000) -> list[list[dict[str, Any]]]:
    """Batches in sending order (round-robin over the clients), with ``share`` of
    the records re-sends of earlier events: half into a batch another client
    sends at the same moment as the original, half into a later one. Batches
    keep room for their re-sends under the request limit; a batch that would
    still go over it passes the extra records to a batch of its own."""
    room = batch if batch * (1 + 3 * share) <= limit else int(limit / (1 + 3 * share))
    batches = [events[i:i + room] for i in range(0, len(events), room)]
    for _ in range(round(len(events) * share)):
        source = rng.randrange(len(batches))
        event = rng.choice(batches[source])
        if rng.random() < 0.5 and clients > 1:  # a batch of the same round, another client
            first = source - source % clients
            target = first + rng.choice([c for c in range(clients) if c != source % clients])
        else:
            target = source + rng.randrange(1, 4 * clients)
        target = min(target, len(batches) - 1)
        if target == source:
            continue
        batches[target].insert(rng.randrange(len(batches[target]) + 1), event)
    spilled = [extra for b in batches for extra in b[limit:]]
    for b in batches:
        del b[limit:]
    return batches + [spilled[i:i + limit] for i in range(0, len(spilled), limit)]


def project_traffic(events: list[dict[str, Any]], key: str, batch: int, clients: int, share: float,
                    rng: random.Random) -> list[Stream]:
    batches = with_resends(events, batch, clients, share, rng)
    bodies = [orjson.dumps({"events": b}) for b in batches]
    return [Stream([key] * len(bodies[c::clients]), bodies[c::clients]) for c in range(clients)]


def distinct_sent(streams: Sequence[Stream]) -> int:
    return len({e["event_id"] for s in streams for body in s.bodies for e in orjson.loads(body)["events"]})


def make_traffic(name: str, projects: Callable[[int], list[tuple[str, str]]], events: int, share: float,
                 days: int, seed: int) -> Traffic:
    """``projects(n)`` creates n projects and keys on the system under test."""
    rng = random.Random(seed)  # noqa: S311 - reproducible traffic
    sample = sample_events(events, days=days, seed=seed)
    specs = {"b500": (500, 4), "b1000": (1000, 4), "b50": (50, 4), "c16": (500, 16)}
    if name in specs:
        batch, clients = specs[name]
        [(project_id, key)] = projects(1)
        streams = project_traffic(sample, key, batch, clients, share, rng)
        distinct = {project_id: distinct_sent(streams)}
        description = f"{batch}-event batches, {clients} clients, one project"
    elif name == "tenants":
        owners = projects(21)
        large = int(len(sample) * 0.6)
        streams = project_traffic(sample[:large], owners[0][1], 500, 8, share, rng)
        distinct = {owners[0][0]: distinct_sent(streams)}
        small_streams: list[Stream] = []
        per = (len(sample) - large) // 20
        for n, (project_id, key) in enumerate(owners[1:]):
            mine = project_traffic(sample[large + n * per: large + (n + 1) * per], key, 50, 1, share, rng)
            distinct[project_id] = distinct_sent(mine)
            small_streams += mine
        for c in range(8):  # 20 small projects over 8 clients, their requests interleaved
            ours = small_streams[c::8]
            pairs = [pair for group in _interleave([list(zip(s.keys, s.bodies, strict=True)) for s in ours])
                     for pair in group]
            streams.append(Stream([k for k, _ in pairs], [b for _, b in pairs]))
        description = "one large project (500-event batches, 8 clients) + 20 small (50-event, 8 clients)"
    else:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    records = sum(len(orjson.loads(b)["events"]) for s in streams for b in s.bodies)
    return Traffic(name, description, streams, records, distinct)


def _interleave(lists: list[list[tuple[str, bytes]]]) -> Iterator[list[tuple[str, bytes]]]:
    for index in range(max((len(x) for x in lists), default=0)):
        yield [x[index] for x in lists if index < len(x)]


# Clients --------------------------------------------------------------------------

def _client(url: str, keys: list[str], bodies: list[bytes], start: Any, report: Connection) -> None:
    import urllib3

    http = urllib3.PoolManager(maxsize=1, retries=False, timeout=urllib3.Timeout(total=120))
    start.wait()
    cpu = time.process_time()
    latencies, statuses = [], []
    for key, body in zip(keys, bodies, strict=True):
        began = time.perf_counter()
        try:
            status = http.request("POST", url, body=body,
                                  headers={"X-API-Key": key, "Content-Type": "application/json"}).status
        except urllib3.exceptions.HTTPError:
            status = 0
        latencies.append(time.perf_counter() - began)
        statuses.append(status)
    report.send((latencies, statuses, time.process_time() - cpu))
    report.close()


class Clients:
    """One process per stream, each told its bodies before the clock starts."""

    def __init__(self, url: str, streams: Sequence[Stream]) -> None:
        context = multiprocessing.get_context("spawn")
        self.start_event = context.Event()
        self.pipes: list[Connection] = []
        self.cpu_s = 0.0  # the clients' CPU seconds in the last run
        self.processes = []
        for stream in streams:
            receiving, sending = context.Pipe(duplex=False)
            process = context.Process(target=_client, args=(url, stream.keys, stream.bodies, self.start_event, sending),
                                      daemon=True)
            process.start()
            sending.close()
            self.pipes.append(receiving)
            self.processes.append(process)
        time.sleep(1.0)  # let every client import urllib3 and reach the barrier

    def run(self) -> tuple[float, list[float], dict[int, int]]:
        began = time.perf_counter()
        self.start_event.set()
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        self.cpu_s = 0.0
        for pipe in self.pipes:
            lats, codes, cpu_s = pipe.recv()
            self.cpu_s += cpu_s
            latencies += lats
            for code in codes:
                statuses[code] = statuses.get(code, 0) + 1
        for process in self.processes:
            process.join(10)
        return began, latencies, statuses


# CPU --------------------------------------------------------------------------------

class CpuMeter:
    """CPU seconds of named process groups between ``start`` and ``stop`` (psutil)."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self.before: dict[str, dict[int, float]] = {}

    @staticmethod
    def _times(pids: list[int]) -> dict[int, float]:
        import psutil

        out = {}
        for pid in pids:
            try:
                times = psutil.Process(pid).cpu_times()
                out[pid] = times.user + times.system
            except psutil.Error:
                pass
        return out

    def start(self) -> None:
        self.before = {name: self._times(pids()) for name, pids in self.groups.items()}

    def stop(self) -> dict[str, float]:
        used = {}
        for name, pids in self.groups.items():
            now = self._times(pids())
            used[name] = sum(t - self.before[name].get(pid, 0.0) for pid, t in now.items())
        return used


def postgres_pids(state: Path) -> list[int]:
    import psutil

    pid_file = state / "postgres" / "postmaster.pid"
    if not pid_file.exists():
        return []
    try:
        server = psutil.Process(int(pid_file.read_text().split()[0]))
        return [server.pid, *(c.pid for c in server.children(recursive=True))]
    except psutil.Error:
        return []


# Pulse --------------------------------------------------------------------------

INGEST_SERIES = {  # what run_pulse reads from the ingest processes' /metrics
    "pulse_spool_sync_duration_seconds_sum": "spool_wait_s",  # waiting for the spool's fsync, per round
    "pulse_spool_sync_duration_seconds_count": "spool_syncs",
    "pulse_ingest_record_requests_count": "records",  # records sent (pulse.core.ingestion)
    "pulse_ingest_record_requests_sum": "requests",  # the requests they carried
}


def ingest_totals(runtime: Any) -> dict[str, float]:
    """INGEST_SERIES and ``handler_s`` (seconds answering POST /v1/events), summed
    over the ingest processes so far, from their /metrics."""
    import urllib3
    from prometheus_client.parser import text_string_to_metric_families

    http = urllib3.PoolManager()
    totals = dict.fromkeys([*INGEST_SERIES.values(), "handler_s"], 0.0)
    for process in runtime.processes:
        text = http.request("GET", process.url + "/metrics").data.decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in INGEST_SERIES:
                    totals[INGEST_SERIES[sample.name]] += sample.value
                elif sample.name == "pulse_http_request_duration_seconds_sum" and \
                        sample.labels.get("function") == "ingest" and sample.labels.get("route") == "events":
                    totals["handler_s"] += sample.value
    return totals


def failed_attempts(route: str) -> float:
    from prometheus_client import REGISTRY

    total = 0.0
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == "pulse_dispatch_failed_attempts_total" and sample.labels.get("route") == route:
                total += sample.value
    return total


def run_pulse(runtime: Any, traffic: Traffic) -> Outcome:
    import os

    services = runtime.services
    source = next(w.sub.name for w in runtime.dispatcher.workers if runtime.settings.raw_topic in w.sub.topics)
    url = runtime.gateway_url + "/v1/events"
    clients = Clients(url, traffic.streams)
    meter = CpuMeter({
        "pulse": lambda: [os.getpid()],
        "ingest": lambda: [p.process.pid for p in runtime.processes if p.process and p.process.pid],
        "postgres": lambda: postgres_pids(runtime.settings.state_dir),
        "broker": lambda: [runtime.stack.broker.process.pid] if runtime.stack and runtime.stack.broker else [],
    })
    projects = list(traffic.distinct)
    failed = failed_attempts(source)
    ingest_before = ingest_totals(runtime)
    meter.start()
    began, latencies, statuses = clients.run()
    accepted = time.perf_counter()
    counted = 0
    deadline = accepted + 900
    while time.perf_counter() < deadline:
        counted = int(services.ch.rows("SELECT count() FROM events WHERE project_id IN {p:Array(UUID)}",
                                       {"p": projects})[0][0])
        if counted >= traffic.events:
            break
        time.sleep(0.05)
    done = time.perf_counter()
    cpu = {**meter.stop(), "clients": clients.cpu_s}
    runtime.drain(60)
    ingest = {name: total - ingest_before[name] for name, total in ingest_totals(runtime).items()}
    return Outcome(seconds=done - began, ingest=ingest, accept_seconds=accepted - began, latencies=latencies,
                   statuses=statuses, failed_deliveries=failed_attempts(source) - failed, counted=counted, cpu=cpu)


# Baseline -----------------------------------------------------------------------

def _baseline_server(settings: Settings, report: Connection) -> None:
    """The synchronous baseline: validate, claim, insert, answer (pulse.core, one process)."""
    import uuid
    from datetime import UTC, datetime

    from werkzeug.wrappers import Request, Response

    from pulse.core.events import format_ts, parse_batch
    from pulse.core.persisting import Persister
    from pulse.errors import PulseError
    from pulse.local.embedded import die_with_parent
    from pulse.local.gateway import Server
    from pulse.services import Services
    from pulse.storage.migrations import migrate_clickhouse
    from pulse.web.credentials import extract
    from pulse.web.http import json_response, problem_from, tune_gc

    die_with_parent()
    tune_gc()
    services = Services(settings)
    migrate_clickhouse(services.ch, settings)
    persister = Persister(services.db, services.ch)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        try:
            if request.path == "/_count":
                ids = request.args.getlist("project_id")
                rows = services.ch.rows("SELECT count() FROM events WHERE project_id IN {p:Array(UUID)}", {"p": ids})
                return json_response({"count": int(rows[0][0])})(environ, start_response)
            credential = extract(request)
            key = services.keys.verify(credential.value if credential else "", "ingest")
            batch = parse_batch(request.get_data(), settings.limits)
            outcome = persister.persist(str(uuid.uuid4()), key.project_id, format_ts(datetime.now(UTC)), batch.rows)
            response: Response = json_response({"accepted": len(batch.rows), "inserted": outcome.inserted}, 200)
        except PulseError as exc:
            response = problem_from(exc, "")
        return response(environ, start_response)

    server = Server("baseline", app, settings.host, 0).start()
    report.send((server.url, services.ch.url))
    report.close()
    while True:
        time.sleep(3600)


class Baseline:
    def __init__(self, settings: Settings, state: Path) -> None:
        (state / "clickhouse").mkdir(parents=True, exist_ok=True)
        self.settings = settings.with_(clickhouse_url=f"chdb://{(state / 'clickhouse').resolve()}")
        context = multiprocessing.get_context("spawn")
        receiving, sending = context.Pipe(duplex=False)
        self.process = context.Process(target=_baseline_server, args=(self.settings, sending), daemon=True)
        self.process.start()
        sending.close()
        if not receiving.poll(120):
            raise RuntimeError("the baseline server did not start")
        self.url, _ = receiving.recv()

    def run(self, traffic: Traffic, state_dir: Path) -> Outcome:
        import urllib3

        clients = Clients(self.url + "/v1/events", traffic.streams)
        meter = CpuMeter({"baseline": lambda: [self.process.pid or 0], "postgres": lambda: postgres_pids(state_dir)})
        meter.start()
        began, latencies, statuses = clients.run()
        done = time.perf_counter()
        cpu = {**meter.stop(), "clients": clients.cpu_s}
        query = "&".join(f"project_id={p}" for p in traffic.distinct)
        counted = orjson.loads(urllib3.PoolManager().request("GET", f"{self.url}/_count?{query}").data)["count"]
        return Outcome(seconds=done - began, accept_seconds=done - began, latencies=latencies, statuses=statuses,
                       counted=int(counted), cpu=cpu)

    def stop(self) -> None:
        self.process.kill()
        self.process.join(10)


# The run ------------------------------------------------------------------------

def _print(traffic: Traffic, pulse: Outcome, baseline: Outcome | None, share: float) -> None:
    print(f"\n{traffic.name}: {traffic.description}; {traffic.records:,} records, {traffic.events:,} distinct "
          f"events, {share:.0%} re-sent")
    print(f"  {'':<15}{'events/s':>10}{'accept s':>10}{'e2e s':>8}{'p50 ms':>9}{'p99 ms':>9}{'5xx':>6}"
          f"{'failed deliveries':>19}{'count':>8}")
    rows = [("pulse", pulse)] + ([("sync baseline", baseline)] if baseline else [])
    for name, r in rows:
        exact = "exact" if r.counted == traffic.events else f"{r.counted - traffic.events:+d}"
        failed = f"{r.failed_deliveries:.0f}" if name == "pulse" else "-"
        print(f"  {name:<15}{traffic.events / r.seconds:>10,.0f}{r.accept_seconds:>10.2f}{r.seconds:>8.2f}"
              f"{r.percentile(0.5):>9.1f}{r.percentile(0.99):>9.1f}{r.server_errors:>6}{failed:>19}{exact:>8}")
    if baseline:
        print(f"  pulse / baseline: {baseline.seconds / pulse.seconds:.2f}x")
    ingest = pulse.ingest
    if ingest.get("handler_s") and ingest.get("spool_syncs"):
        handler_ms = 1000 * ingest["handler_s"] / max(1, len(pulse.latencies))
        sync_ms = 1000 * ingest["spool_wait_s"] / ingest["spool_syncs"]
        print(f"  the spool's fsync (a 202 durable in embedded mode): {sync_ms:.1f} ms a round, which each POST "
              f"waits for; ingest answers a POST in {handler_ms:.1f} ms")
    if ingest.get("records"):
        print(f"  ingest's records: {ingest['records']:,.0f} for {ingest['requests']:,.0f} requests "
              f"({ingest['requests'] / ingest['records']:.1f} a record)")
    for name, r in rows:
        per = {k: 100_000 * v / traffic.events for k, v in r.cpu.items()}
        print(f"  CPU s per 100k events, {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in per.items())
              + f" (total {sum(per.values()):.2f})")


def run_bench(settings: Settings, args: argparse.Namespace) -> int:
    from pulse.local.runtime import Runtime

    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        print(f"pulse bench: unknown workload {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="pulse-bench-"))
    runtime = Runtime(settings.with_(state_dir=scratch, gateway_port=0)).start()
    baseline = None if args.no_baseline else Baseline(runtime.settings, scratch / "baseline")
    print(f"pulse bench: {args.events:,} events per workload over {args.days} days, {args.resend:.0%} re-sent; "
          f"state in {scratch}")
    services = runtime.services
    if services is None:
        raise RuntimeError("the runtime did not start its services")

    def projects(n: int) -> list[tuple[str, str]]:
        return [create_demo_key(services, "bench") for _ in range(n)]

    try:
        for seed, name in enumerate(names, start=11):
            traffic = make_traffic(name, projects, args.events, args.resend, args.days, seed)
            pulse = run_pulse(runtime, traffic)
            base = None
            if baseline is not None:
                again = make_traffic(name, projects, args.events, args.resend, args.days, seed)
                base = baseline.run(again, runtime.settings.state_dir)
            _print(traffic, pulse, base, args.resend)
    finally:
        if baseline is not None:
            baseline.stop()
        runtime.stop()
    return 0
