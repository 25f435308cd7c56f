"""The ``pulse`` command.

  pulse up [--demo] [--port 8080] [--state-dir .pulse]   everything, embedded, in one process
  pulse migrate                                          apply pending migrations to both stores
  pulse serve [FUNCTION]                                 one function under functions-framework (containers)
  pulse bench [...]                                      ingest end to end vs a sync baseline (pulse/bench.py)
  pulse import FILE [--url URL] [--key KEY]              import a CSV or NDJSON file, resumable (docs/clients.md)
  pulse export [--format csv] [--from D] [--to D] [-o F]  download events into a file
  pulse dlq list|replay [--bootstrap HOST:PORT] [...]   inspect and re-drive dead-lettered records
  pulse admin grant|revoke USER_ID | list               instance admins (docs/security.md)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pulse.settings import Settings, SettingsError

if TYPE_CHECKING:
    from pulse.telemetry import ConsoleHandler

FUNCTIONS = ("ingest", "auth", "persist", "aggregate", "export", "host")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pulse", description="Pulse: real-time event analytics")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run Pulse embedded: services, functions, gateway")
    up.add_argument("--demo", action="store_true", help="create a demo project and load sample events")
    up.add_argument("--port", type=int, help="gateway port (default 8080, PULSE_GATEWAY_PORT)")
    up.add_argument("--state-dir", type=Path, help="where embedded data lives (default .pulse)")
    up.add_argument("--demo-events", type=int, default=5000, help="sample events to load with --demo")
    up.add_argument("--log-format", choices=("auto", "console", "json"), default="auto",
                    help="console: a short line per request (default on a terminal); "
                         "json: JSON lines on stderr (default otherwise, or PULSE_LOG_FORMAT)")
    up.add_argument("--quiet", action="store_true", help="print only the banner, warnings and errors")

    sub.add_parser("migrate", help="apply pending migrations to Postgres and ClickHouse")

    serve = sub.add_parser("serve", help="serve one function (container entry point)")
    serve.add_argument("function", nargs="?", default=os.environ.get("FUNCTION_TARGET"), choices=FUNCTIONS)

    bench = sub.add_parser("bench", help="measure ingest end to end on real traffic, against a sync baseline")
    bench.add_argument("--events", type=int, default=60_000, help="distinct events per workload")
    bench.add_argument("--resend", type=float, default=0.02, help="share of records that are re-sends")
    bench.add_argument("--days", type=int, default=56, help="the events' time span")
    bench.add_argument("--workloads", default="b500,b1000,b50,c16,tenants",
                       help="comma-separated, from b500, b1000, b50, c16, tenants (see pulse/bench.py)")
    bench.add_argument("--no-baseline", action="store_true", help="skip the synchronous baseline")

    imp = sub.add_parser("import", help="import a CSV or NDJSON file through POST /v1/import, resumably")
    imp.add_argument("file", type=Path)
    _remote(imp, "an ingest API key")
    imp.add_argument("--format", choices=("csv", "ndjson"), help="default: from the file's extension")
    imp.add_argument("--part-bytes", type=int, default=None,
                     help="size of each request (default 8 MiB); resume with the same value")

    exp = sub.add_parser("export", help="download events through GET /v1/export into a file")
    _remote(exp, "a read API key")
    exp.add_argument("--format", choices=("csv", "json", "ndjson", "parquet"), default="csv")
    exp.add_argument("--from", dest="start", help="first day (YYYY-MM-DD) or RFC 3339 time")
    exp.add_argument("--to", dest="end", help="last day (inclusive) or RFC 3339 time")
    exp.add_argument("--tz", help="IANA time zone of the days (default UTC)")
    exp.add_argument("--event-type", help="only this event type")
    exp.add_argument("--segment", action="append", default=[], help="field:value (repeatable, ANDed)")
    exp.add_argument("-o", "--output", help="the file to write (default: the name Pulse gives; - for stdout)")

    dlq = sub.add_parser("dlq", help="dead-lettered records: list them, replay them after a fix")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    for name, text in (("list", "show the records on the dead-letter topic"),
                       ("replay", "re-produce dead-lettered records to the raw-events topic")):
        one = dlq_sub.add_parser(name, help=text)
        one.add_argument("--bootstrap", help="Kafka bootstrap servers (default PULSE_KAFKA_BOOTSTRAP)")
        one.add_argument("--topic", help="the dead-letter topic (default PULSE_DLQ_TOPIC)")
        one.add_argument("--id", action="append", default=[], dest="ids",
                         help="only the record(s) with this CloudEvent id (repeatable)")
        if name == "list":
            one.add_argument("--json", action="store_true", help="one JSON object per line")
        else:
            one.add_argument("--to", help="the topic to replay to (default PULSE_RAW_TOPIC)")

    admin = sub.add_parser("admin", help="instance admins: granted to a user id, never to an email")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    for name, text in (("grant", "make this user an instance admin"), ("revoke", "take admin rights away"),
                       ("list", "the instance admins")):
        one = admin_sub.add_parser(name, help=text)
        if name != "list":
            one.add_argument("user_id", help="the user's id (POST /v1/auth/register answers it)")
        one.add_argument("--state-dir", type=Path, help="the embedded run's state directory, when "
                         "PULSE_POSTGRES_URL is not set (default .pulse)")

    args = parser.parse_args(argv)
    if args.command == "import":
        return _import(args)
    if args.command == "export":
        return _export(args)
    if args.command == "serve" and int(os.environ.get("WORKERS", "1")) > 1 \
            and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # several gunicorn workers: each writes its metrics here, /metrics sums them
        # (set before prometheus_client is first imported)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=f"pulse-{args.function}-metrics-")
    from pulse.telemetry import configure_logging, configure_tracing

    try:
        settings = Settings.load()
    except SettingsError as exc:
        print(f"pulse: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "up":
        fmt = args.log_format if args.log_format != "auto" else (
            "console" if sys.stdout.isatty() else settings.log_format)
        settings = settings.with_(log_format=fmt)
    console = configure_logging(settings.log_level, settings.log_format, getattr(args, "quiet", False))
    configure_tracing(f"pulse-{args.command}")
    try:
        if args.command == "up":
            return _up(settings, args, console)
        if args.command == "migrate":
            return _migrate(settings)
        if args.command == "serve":
            return _serve(settings, args.function)
        if args.command == "dlq":
            return _dlq(settings, args)
        if args.command == "admin":
            return _admin(settings, args)
        if args.command == "bench":
            from pulse.bench import run_bench

            return run_bench(settings, args)
    except SettingsError as exc:
        print(f"pulse: {exc}", file=sys.stderr)
        return 2
    return 1


def _up(settings: Settings, args: argparse.Namespace, console: ConsoleHandler | None) -> int:
    from pulse.local.runtime import Runtime

    def plain(text: str) -> None:
        print(text, flush=True)

    say = (lambda _text: None) if args.quiet else (console.note if console else plain)
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")  # platformdirs, on a server
    changes = {}
    if args.port is not None:
        changes["gateway_port"] = args.port
    if args.state_dir is not None:
        changes["state_dir"] = args.state_dir
    runtime = Runtime(settings.with_(**changes))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    say("Starting Pulse: Postgres, ClickHouse, Kafka, the five functions" + (" and demo data" if args.demo else ""))
    runtime.start()
    try:
        (console.banner if console else plain)(_banner(runtime, args))
        stop.wait()
    finally:
        say("Stopping: draining accepted events...")
        runtime.stop()
        say("Stopped.")
    return 0


def _banner(runtime: Any, args: argparse.Namespace) -> str:
    """Where to look and what to try, printed once everything is up (demo data included)."""
    from pulse.local.demo import create_demo_account, sample_events, send_events

    url = runtime.gateway_url
    lines = [f"Pulse is up: {url}",
             f"  dashboard  {url}/dashboard",
             f"  API docs   {url}/docs  (OpenAPI: {url}/openapi.json)"]
    for name, function_url in runtime.describe()["functions"].items():
        lines.append(f"  {name:<10} {function_url}  (/healthz /readyz /metrics)")
    if args.demo:
        demo = create_demo_account(url)
        sent = send_events(url, demo.api_key, sample_events(args.demo_events))
        runtime.drain(60)
        lines += [
            "",
            f"Demo user {demo.email} / password {demo.password}  (sign in at {url}/dashboard)",
            f"Demo project {demo.project_id}: {sent} sample events loaded.",
            f"API key (ingest + read): {demo.api_key}",
            "",
            "Try:",
            f"  curl -s {url}/v1/stats/top-events -H 'X-API-Key: {demo.api_key}'",
            f"  curl -s -X POST {url}/v1/events -H 'X-API-Key: {demo.api_key}' -H 'Content-Type: application/json' \\",
            "       -d '{\"event_type\": \"signup\", \"user_id\": \"u1\"}'",
            f"  pulse export --url {url} --key {demo.api_key} --format csv -o events.csv",
        ]
    else:
        lines += [
            "",
            f"Start with an account: register at {url}/dashboard (or run `pulse up --demo` for one with",
            "sample data), or through the API:",
            f"  curl -s -X POST {url}/v1/auth/register -H 'Content-Type: application/json' \\",
            "       -d '{\"email\": \"you@example.com\", \"password\": \"a-long-password\"}'",
        ]
    lines += ["", "Ctrl-C stops Pulse (it first delivers every accepted event)."]
    return "\n".join(lines)


def _remote(parser: argparse.ArgumentParser, key: str) -> None:
    parser.add_argument("--url", default=os.environ.get("PULSE_URL", "http://127.0.0.1:8080"),
                        help="Pulse's address (default $PULSE_URL or http://127.0.0.1:8080)")
    parser.add_argument("--key", default=os.environ.get("PULSE_API_KEY"), help=f"{key} (default $PULSE_API_KEY)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _import(args: argparse.Namespace) -> int:
    import json

    import urllib3

    from pulse.client.progress import TransferBar
    from pulse.client.upload import PART_BYTES, Checkpoint, checkpoint_path, guess_format, import_parts, plan

    if not args.key:
        print("pulse import: an ingest API key is required (--key or PULSE_API_KEY)", file=sys.stderr)
        return 2
    if not args.file.is_file():
        print(f"pulse import: {args.file}: no such file", file=sys.stderr)
        return 2
    try:
        the_plan = plan(args.file, args.format or guess_format(args.file), args.part_bytes or PART_BYTES)
    except (ValueError, OSError) as exc:
        print(f"pulse import: {exc}", file=sys.stderr)
        return 2
    checkpoint = Checkpoint(checkpoint_path(the_plan, args.url, args.key), the_plan)
    if checkpoint.done and not args.quiet:
        print(f"Resuming: {len(checkpoint.done)} of {len(the_plan.parts)} parts were imported before.",
              file=sys.stderr)
    bar = TransferBar(f"import {args.file.name}", the_plan.size, the_plan.rows, enabled=not args.quiet)
    done_rows = 0
    try:
        with bar:
            def part_done(part: Any) -> None:
                nonlocal done_rows
                done_rows += part.lines - (1 if the_plan.fmt == "csv" and part.index == 0 else 0)
                bar.progress.update(bar.task, completed=part.end, rows=done_rows)

            def sent(data: bytes) -> None:
                bar.advance(len(data), data.count(b"\n"))

            outcome = import_parts(the_plan, args.url, args.key, checkpoint, sent, part_done)
    except KeyboardInterrupt:
        print(f"\npulse import: interrupted; run the same command again to resume ({checkpoint.path})",
              file=sys.stderr)
        return 130
    except (OSError, urllib3.exceptions.HTTPError) as exc:
        print(f"\npulse import: {exc}; run the same command again to resume", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(outcome.as_dict(), indent=2))
    else:
        print(_import_summary(args.file, outcome, bar.seconds))
    return 0 if outcome.status != "failed" else 1


def _import_summary(path: Path, outcome: Any, seconds: float) -> str:
    if outcome.status == "failed":
        return f"{path}: import stopped at {outcome.failure}; run the same command again to resume"
    if outcome.status == "duplicate":
        head = f"{path}: already imported ({outcome.accepted:,} rows accepted then); nothing was sent again"
    else:
        head = (f"{path}: {outcome.rows:,} rows, {outcome.accepted:,} accepted, {outcome.rejected:,} rejected"
                f" in {seconds:.1f} s")
        if outcome.resumed_parts:
            head += f" (resumed: {outcome.resumed_parts} part(s) were done before)"
    lines = [head]
    for error in outcome.errors[:10]:
        lines.append(f"  line {error['line']}: {error.get('error', '')}")
    if len(outcome.errors) > 10:
        lines.append(f"  ... and {len(outcome.errors) - 10} more (--json lists them)")
    return "\n".join(lines)


def _export(args: argparse.Namespace) -> int:
    import json

    import urllib3

    from pulse.client.download import ExportFailed, export_file
    from pulse.client.progress import TransferBar

    if not args.key:
        print("pulse export: a read API key is required (--key or PULSE_API_KEY)", file=sys.stderr)
        return 2
    params = [("format", args.format)]
    for name, value in (("from", args.start), ("to", args.end), ("tz", args.tz), ("event_type", args.event_type)):
        if value:
            params.append((name, value))
    params += [("segment", s) for s in args.segment]
    bar = TransferBar(f"export {args.format}", None, None, enabled=not args.quiet)
    try:
        with bar:
            done = export_file(args.url, args.key, params, args.output, lambda n, rows: bar.advance(n, rows))
    except KeyboardInterrupt:
        print("\npulse export: interrupted; nothing was kept", file=sys.stderr)
        return 130
    except (ExportFailed, OSError, urllib3.exceptions.HTTPError) as exc:
        print(f"pulse export: {exc}", file=sys.stderr)
        return 1
    summary = {"file": done.path, "rows": done.rows, "bytes": done.bytes, "seconds": round(bar.seconds, 2)}
    if args.json:
        print(json.dumps(summary, indent=2), file=sys.stderr if done.path == "-" else sys.stdout)
    else:
        print(f"{done.path}: {done.rows:,} rows, {done.bytes / 1e6:,.1f} MB in {bar.seconds:.1f} s",
              file=sys.stderr if done.path == "-" else sys.stdout)
    return 0


def _dlq(settings: Settings, args: argparse.Namespace) -> int:
    import orjson

    from pulse.local import dlq

    bootstrap = args.bootstrap or settings.kafka_bootstrap
    if not bootstrap:
        print("pulse dlq needs --bootstrap or PULSE_KAFKA_BOOTSTRAP (the Kafka of a running Pulse)",
              file=sys.stderr)
        return 2
    topic = args.topic or settings.dlq_topic
    letters = dlq.select(dlq.read(bootstrap, topic), args.ids)
    if args.dlq_command == "list":
        for letter in letters:
            row = letter.summary()
            if args.json:
                print(orjson.dumps(row).decode())
            else:
                print(f"{row['partition']}:{row['offset']}  {row['time']}  {row['id']}  {row['type']}"
                      f"  status={row['status'] or '-'}  {row['bytes']}B  {row['error']}")
        print(f"{len(letters)} dead-lettered record(s) on {topic}", file=sys.stderr)
        return 0
    target = args.to or settings.raw_topic
    replayed, skipped = dlq.replay(bootstrap, letters, target)
    for letter in skipped:
        print(f"skipped {letter.id}: not a CloudEvent", file=sys.stderr)
    print(f"replayed {len(replayed)} record(s) from {topic} to {target}"
          " (persist stores each batch once, however often it is replayed)")
    return 0 if not skipped else 1


def _admin(settings: Settings, args: argparse.Namespace) -> int:
    from pulse.core import accounts
    from pulse.errors import PulseError
    from pulse.local.embedded import embedded_postgres
    from pulse.storage.migrations import migrate_postgres
    from pulse.storage.postgres import Database

    with embedded_postgres(settings.postgres_url, args.state_dir or settings.state_dir) as url:
        db = Database(url, max_connections=2)
        try:
            migrate_postgres(db)
            if args.admin_command == "list":
                for admin in accounts.list_admins(db):
                    print(f"{admin['user_id']}  {admin['email']}  since {admin['granted_at']}")
                return 0
            if args.admin_command == "grant":
                granted = accounts.grant_admin(db, args.user_id)
                print(f"{granted['user_id']} ({granted['email']}) is an instance admin")
                return 0
            if not accounts.revoke_admin(db, args.user_id):
                print(f"pulse admin: {args.user_id} was not an admin", file=sys.stderr)
                return 1
            print(f"{args.user_id} is no longer an instance admin")
            return 0
        except PulseError as exc:
            print(f"pulse admin: {exc.detail}", file=sys.stderr)
            return 1
        finally:
            db.close()


def _migrate(settings: Settings) -> int:
    from pulse.services import Services
    from pulse.storage import persons
    from pulse.storage.migrations import migrate_clickhouse, migrate_postgres

    if not settings.postgres_url or not settings.clickhouse_url:
        print("pulse migrate needs PULSE_POSTGRES_URL and PULSE_CLICKHOUSE_URL "
              "(`pulse up` migrates the embedded stores itself)", file=sys.stderr)
        return 2
    services = Services(settings)
    try:
        services.verify(("postgres", "clickhouse"))
        for store, applied in (("postgres", migrate_postgres(services.db)),
                               ("clickhouse", migrate_clickhouse(services.ch, settings))):
            print(f"{store}: " + (", ".join(applied) if applied else "up to date"))
        persons.after_migrations(services.db, services.ch, applied)
    finally:
        services.close()
    return 0


def _serve(settings: Settings, function: str | None) -> int:
    """One function under functions-framework's gunicorn. SIGTERM (after
    Knative's queue-proxy drained the pod) stops the server taking connections,
    lets each worker finish the requests it holds, then ``shut_down`` closes
    the function's clients (pulse.services)."""
    from pulse.services import NEEDS, Services, shut_down

    if not function:
        print("pulse serve: name a function or set FUNCTION_TARGET", file=sys.stderr)
        return 2
    services = Services(settings)
    try:
        services.verify(NEEDS[function])  # fail fast, naming the dependency
    finally:
        services.close()
    from functions_framework import create_app
    from functions_framework._http import create_server

    app = create_app(function, str(Path(__file__).with_name(f"{function}.py")), "http")
    bound_s = settings.shutdown_timeout_s

    def worker_exit(server: object, worker: object) -> None:
        shut_down(bound_s)

    create_server(app, False, graceful_timeout=max(1, int(bound_s)), worker_exit=worker_exit).run(
        os.environ.get("HOST", "0.0.0.0"),  # noqa: S104 - a container listens on every interface
        int(os.environ.get("PORT", "8080")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
