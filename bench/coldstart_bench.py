"""Cold start of each function, as Knative's scale from zero sees it: a fresh
interpreter, the function's imports, building the function and its clients,
until it answers GET /readyz with 200 (its stores really reached).

Postgres and Kafka are the embedded ones (pgserver, Tansu), started once
here; each function that needs ClickHouse opens a fresh chDB of its own (chDB
lives in one process). Every start is a new ``python`` process; the figure is
wall time from spawning it to the 200. The baseline, measured in the same run,
is a bare interpreter (``python -c pass``).

    python bench/coldstart_bench.py --repeat 7

Prints the median and the spread per function, the ratio to the baseline, and
where the time goes (interpreter, imports, building, first /readyz).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ("ingest", "auth", "persist", "aggregate", "export")
CHILD = """
import os, time
t_start = time.time()
import importlib
module = importlib.import_module("pulse." + os.environ["BENCH_FUNCTION"])
t_imported = time.time()
function = module._function()
t_built = time.time()
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request
response = function.handle(Request(EnvironBuilder(path="/readyz").get_environ()))
t_ready = time.time()
import json
print(json.dumps({"status": response.status_code, "start": t_start, "imported": t_imported,
                  "built": t_built, "ready": t_ready}), flush=True)
os._exit(0)
"""


def once(env: dict[str, str], function: str | None) -> dict[str, float]:
    spawned = time.time()
    if function is None:
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        return {"total": time.time() - spawned}
    out = subprocess.run([sys.executable, "-c", CHILD], env={**env, "BENCH_FUNCTION": function}, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    done = time.time()
    t = json.loads(out.strip().splitlines()[-1])
    assert t["status"] == 200, f"{function}: /readyz answered {t['status']}"
    return {"total": done - spawned, "interpreter": t["start"] - spawned, "imports": t["imported"] - t["start"],
            "build": t["built"] - t["imported"], "readyz": t["ready"] - t["built"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    from pulse.local.embedded import EmbeddedStack
    from pulse.security.tokens import generate_key_file
    from pulse.settings import Settings

    state = Path(tempfile.mkdtemp(prefix="pulse-coldstart-"))
    stack = EmbeddedStack(Settings(state_dir=state, clickhouse_url=f"chdb://{state / 'unused'}"))
    settings = stack.start()
    key = state / "jwt" / "signing.pem"
    generate_key_file(key)
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
        base.update({"PULSE_POSTGRES_URL": settings.postgres_url or "",
                     "PULSE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
                     "PULSE_JWT_PRIVATE_KEY_FILE": str(key), "PULSE_LOG_LEVEL": "WARNING",
                     "OTEL_SDK_DISABLED": "true"})
        results: dict[str, list[dict[str, float]]] = {"baseline": []}
        for round_ in range(args.repeat):
            results["baseline"].append(once(base, None))
            for function in FUNCTIONS:
                env = {**base, "PULSE_CLICKHOUSE_URL": f"chdb://{state / f'ch-{function}-{round_}'}"}
                results.setdefault(function, []).append(once(env, function))
        baseline = statistics.median(r["total"] for r in results["baseline"])
        print(f"cold start to /readyz 200, median of {args.repeat} (wall seconds; baseline: bare interpreter "
              f"{baseline:.3f} s)")
        print(f"{'function':<10} {'total':>7} {'min':>7} {'max':>7} {'x base':>7} {'interp':>7} {'imports':>8} "
              f"{'build':>7} {'readyz':>7}")
        for function in FUNCTIONS:
            rows = results[function]
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            totals = [r["total"] for r in rows]
            print(f"{function:<10} {med['total']:7.3f} {min(totals):7.3f} {max(totals):7.3f} "
                  f"{med['total'] / baseline:7.1f} {med['interpreter']:7.3f} {med['imports']:8.3f} "
                  f"{med['build']:7.3f} {med['readyz']:7.3f}")
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
