"""persist as a process of its own, for the fault suite.

Reads PULSE_POSTGRES_URL and PULSE_CLICKHOUSE_URL (a chdb:// path this process
owns), applies migrations, and serves the persist function on --port. Faults
are switched by files in --faults, so the test can flip them from outside:

- ``clickhouse-down``: while it exists, the ClickHouse insert step fails (500);
- ``hang-after-ledger``: when it exists, a batch stops after its ledger
  transaction committed and before the insert, and ``hung`` is written, so a
  SIGKILL lands mid-batch.

``GET /_stats?project_id=`` answers what ClickHouse holds for a project:
rows, distinct event ids, and the ids (how the test counts, read from the
store itself; no other process may open this chDB path).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import orjson
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from pulse.persist import Persist
from pulse.services import Services
from pulse.settings import Settings
from pulse.storage.migrations import migrate_clickhouse, migrate_postgres
from pulse.telemetry import configure_logging


def fault_hook(faults: Path) -> Any:
    def hook(step: str) -> None:
        if step != "after-ledger":
            return
        if (faults / "clickhouse-down").exists():
            raise RuntimeError("injected fault: ClickHouse insert failed")
        if (faults / "hang-after-ledger").exists():
            (faults / "hung").touch()
            while True:  # until SIGKILL
                time.sleep(1)

    return hook


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--faults", type=Path, required=True)
    args = parser.parse_args()
    configure_logging("WARNING")
    settings = Settings.load()
    services = Services(settings)
    migrate_postgres(services.db)
    migrate_clickhouse(services.ch, settings)
    persist = Persist(services)
    persist.persister.fault = fault_hook(args.faults)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.path != "/_stats":
            return persist.wsgi(environ, start_response)
        ids = [r[0] for r in services.ch.rows(
            "SELECT toString(event_id) FROM events WHERE project_id = {p:UUID}",
            {"p": request.args["project_id"]})]
        body = orjson.dumps({"rows": len(ids), "unique": len(set(ids)), "event_ids": sorted(set(ids))})
        return Response(body, content_type="application/json")(environ, start_response)

    server = make_server("127.0.0.1", args.port, app, threaded=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
