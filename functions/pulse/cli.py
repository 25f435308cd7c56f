"""The ``pulse`` command.

  pulse up [--demo] [--port 8080] [--state-dir .pulse]   everything, embedded, in one process
  pulse migrate                                          apply pending migrations to both stores
  pulse serve [FUNCTION]                                 one function under functions-framework (containers)
  pulse bench [...]                                      ingest throughput benchmark (see pulse/bench.py)
  pulse import FILE --url URL --key KEY                  bulk import of a CSV or NDJSON file (docs/clients.md)
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
from pathlib import Path

from pulse.settings import Settings, SettingsError

FUNCTIONS = ("ingest", "auth", "persist", "aggregate", "export", "host")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pulse", description="Pulse: real-time event analytics")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run Pulse embedded: services, functions, gateway")
    up.add_argument("--demo", action="store_true", help="create a demo project and load sample events")
    up.add_argument("--port", type=int, help="gateway port (default 8080, PULSE_GATEWAY_PORT)")
    up.add_argument("--state-dir", type=Path, help="where embedded data lives (default .pulse)")
    up.add_argument("--demo-events", type=int, default=5000, help="sample events to load with --demo")

    sub.add_parser("migrate", help="apply pending migrations to Postgres and ClickHouse")

    serve = sub.add_parser("serve", help="serve one function (container entry point)")
    serve.add_argument("function", nargs="?", default=os.environ.get("FUNCTION_TARGET"), choices=FUNCTIONS)

    bench = sub.add_parser("bench", help="measure ingest throughput end to end")
    bench.add_argument("--events", type=int, default=200_000)
    bench.add_argument("--batch", type=int, default=1000)
    bench.add_argument("--clients", type=int, default=4)
    bench.add_argument("--baseline-events", type=int, default=5_000,
                       help="events posted one per request for the baseline")

    imp = sub.add_parser("import", help="import a CSV or NDJSON file through POST /v1/import")
    imp.add_argument("file", type=Path)
    imp.add_argument("--url", default=os.environ.get("PULSE_URL", "http://127.0.0.1:8080"),
                     help="Pulse's address (default $PULSE_URL or http://127.0.0.1:8080)")
    imp.add_argument("--key", default=os.environ.get("PULSE_API_KEY"), help="an ingest API key ($PULSE_API_KEY)")
    imp.add_argument("--format", choices=("csv", "ndjson"), help="default: from the file's extension")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
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
    configure_logging(settings.log_level)
    configure_tracing(f"pulse-{args.command}")
    try:
        if args.command == "up":
            return _up(settings, args)
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


def _up(settings: Settings, args: argparse.Namespace) -> int:
    from pulse.local.demo import create_demo_account, sample_events, send_events
    from pulse.local.runtime import Runtime

    changes = {}
    if args.port is not None:
        changes["gateway_port"] = args.port
    if args.state_dir is not None:
        changes["state_dir"] = args.state_dir
    runtime = Runtime(settings.with_(**changes))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    runtime.start()
    try:
        url = runtime.gateway_url
        print(f"Pulse is up: {url}", flush=True)
        print(f"  dashboard  {url}/dashboard")
        for name, function_url in runtime.describe()["functions"].items():
            print(f"  {name:<10} {function_url}  (/healthz /readyz /metrics)")
        if args.demo:
            demo = create_demo_account(url)
            sent = send_events(url, demo.api_key, sample_events(args.demo_events))
            runtime.drain(60)
            print(f"\nDemo user {demo.email} / password {demo.password}")
            print(f"Demo project {demo.project_id}: {sent} sample events loaded.")
            print(f"API key (ingest + read): {demo.api_key}\n")
            print("Try:")
            print(f"  curl -s {url}/v1/stats/top-events -H 'X-API-Key: {demo.api_key}'")
            print(f"  curl -s -X POST {url}/v1/auth/login -H 'Content-Type: application/json' \\")
            print(f"       -d '{{\"email\": \"{demo.email}\", \"password\": \"{demo.password}\"}}'")
            print(f"  curl -s '{url}/v1/stats/dau?project_id={demo.project_id}'"
                  " -H 'Authorization: Bearer <access_token>'")
            print(f"  curl -s -X POST {url}/v1/events -H 'X-API-Key: {demo.api_key}'"
                  " -H 'Content-Type: application/json' \\")
            print("       -d '{\"event_type\": \"signup\", \"user_id\": \"u1\"}'")
        else:
            print("\nStart with an account (or run `pulse up --demo` for one with sample data):")
            print(f"  curl -s -X POST {url}/v1/auth/register -H 'Content-Type: application/json' \\")
            print("       -d '{\"email\": \"you@example.com\", \"password\": \"a-long-password\"}'")
            print(f"  then POST {url}/v1/auth/login, POST {url}/v1/projects and"
                  " POST /v1/projects/<project_id>/api-keys (README, docs/security.md)")
        print("\nCtrl-C stops Pulse (it first delivers every accepted event).", flush=True)
        stop.wait()
    finally:
        print("Stopping: draining accepted events...", flush=True)
        runtime.stop()
        print("Stopped.", flush=True)
    return 0


def _import(args: argparse.Namespace) -> int:
    import json

    from pulse.client.upload import import_file, progress_bar

    if not args.key:
        print("pulse import: an ingest API key is required (--key or PULSE_API_KEY)", file=sys.stderr)
        return 2
    if not args.file.is_file():
        print(f"pulse import: {args.file}: no such file", file=sys.stderr)
        return 2
    try:
        progress = None if args.quiet else progress_bar(args.file.stat().st_size)
        status, answer = import_file(args.file, args.url, args.key, args.format, progress)
    except (ValueError, OSError) as exc:
        print(f"pulse import: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=2))
    return 0 if status == 200 else 1
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
