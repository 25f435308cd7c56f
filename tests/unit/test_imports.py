"""Each function imports only what it uses.

A function scaled from zero loads its modules before it can answer its first
/readyz, so a library it never needs (a Kafka client in a function that never
produces, the embedded ClickHouse engine in any of them) lengthens every cold
start (bench/coldstart_bench.py measures it). Checked here by what a fresh
interpreter holds in ``sys.modules`` after importing what ``pulse serve``
imports before it serves, never by timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Loaded by no function on import: `pulse serve` calls the target without Flask;
# the OpenTelemetry SDK is imported when a tracer provider is installed (not under
# OTEL_SDK_DISABLED); chDB is the embedded engine of `pulse up`; pyarrow writes a
# Parquet export when one is asked for; PyJWT and cryptography sign or verify a
# token when the first one is issued or arrives; each client library is imported
# when its first client opens.
NEVER_ON_IMPORT = ("flask", "functions_framework", "opentelemetry.sdk", "chdb", "pyarrow", "jwt",
                   "cryptography", "kafka", "clickhouse_connect")
# Not loaded by a function built and ready (its /readyz checks done): what it
# never uses, and PyJWT (cryptography too, but for auth, which loads its signing
# key before it serves), imported when the first token is issued or arrives.
READY_WITHOUT = {
    "ingest": ("clickhouse_connect", "chdb", "jwt", "cryptography"),
    "auth": ("kafka", "clickhouse_connect", "chdb", "jwt"),
    "persist": ("kafka", "chdb", "jwt", "cryptography"),  # it publishes through its sink over HTTP
    "aggregate": ("kafka", "chdb", "jwt", "cryptography"),
    "export": ("kafka", "chdb", "jwt", "cryptography"),
}
BUILD = """
import json, sys
import pulse.{function} as module
from pulse.services import NEEDS
function = module._function()
checks = function.services.checks([n for n in ("postgres", "clickhouse") if n in NEEDS["{function}"]])
print(json.dumps([checks, sorted(sys.modules)]))
"""
PROBE = """
import json, sys
import pulse.cli, pulse.services, pulse.{function}
print(json.dumps(sorted(sys.modules)))
"""


def loaded_after_import(function: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(function=function)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(done.stdout))


def found(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(p for p in packages if any(m == p or m.startswith(p + ".") for m in modules))


@pytest.mark.parametrize("function", sorted(READY_WITHOUT))
def test_importing_a_function_loads_no_client_library_and_nothing_it_does_not_use(function: str) -> None:
    modules = loaded_after_import(function)
    assert f"pulse.{function}" in modules
    assert found(modules, NEVER_ON_IMPORT) == []


@pytest.mark.parametrize("function", sorted(READY_WITHOUT))
def test_a_built_function_checking_its_stores_loads_only_what_it_uses(function: str, tmp_path: Path) -> None:
    """Built as on its first request, then asking its stores as /readyz does
    (at addresses where nothing listens: the clients are imported, then refused)."""
    from pulse.local.embedded import free_port
    from pulse.security.tokens import generate_key_file

    nowhere = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update({"PULSE_POSTGRES_URL": f"postgresql://pulse@{nowhere}/pulse",
                "PULSE_CLICKHOUSE_URL": f"http://{nowhere}", "PULSE_KAFKA_BOOTSTRAP": nowhere,
                "PULSE_JWKS_URL": f"http://{nowhere}/.well-known/jwks.json",
                "PULSE_JWT_PRIVATE_KEY_FILE": str(generate_key_file(tmp_path / "signing.pem")),
                "PULSE_LOG_LEVEL": "CRITICAL", "OTEL_SDK_DISABLED": "true"})
    done = subprocess.run([sys.executable, "-c", BUILD.format(function=function)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    checks, modules = json.loads(done.stdout)
    assert checks and not any(checks.values()), checks  # really asked, and refused
    assert found(set(modules), READY_WITHOUT[function]) == []
