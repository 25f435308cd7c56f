"""The embedded engine gives freed memory back to the system as PULSE_CHDB_RELEASE_MS says.

Each case runs in a process of its own: the engine's allocator reads its options
once, when the library loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"
# Opens the embedded engine with the release time given, then runs a query whose
# working set is ~700 MB (30M numbers kept in arrays) and reports the process's
# resident memory before and right after it, and the allocator options in effect.
PROBE = """
import json, os, sys
import psutil
from pulse.storage.clickhouse import ClickHouse
release = sys.argv[2]
ch = ClickHouse(f"chdb://{sys.argv[1]}", **({"release_ms": int(release)} if release else {}))
me = psutil.Process()
ch.rows("SELECT 1")
before = me.memory_info().rss
counted = ch.rows("SELECT count() FROM (SELECT groupArray(number) FROM numbers(30000000) GROUP BY number % 1000)")
after = me.memory_info().rss
print(json.dumps({"before": before, "after": after, "groups": counted[0][0],
                  "conf": os.environ.get("JE_MALLOC_CONF")}))
"""
MB = 2**20


def probe(tmp_path: Path, release: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    environ = {k: v for k, v in os.environ.items() if k != "JE_MALLOC_CONF"}
    environ.update(env or {}, PYTHONPATH=str(FUNCTIONS))
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / f"ch-{release or 'default'}"), release],
                          capture_output=True, text=True, env=environ, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    # jemalloc names an option it cannot parse on stderr, as "<jemalloc>: ..."
    assert "<jemalloc>" not in done.stderr, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["groups"] == 1000
    return result


def test_freed_memory_goes_back_to_the_system_when_the_release_time_says(tmp_path: Path) -> None:
    at_once = probe(tmp_path, "0")
    kept = probe(tmp_path, "600000")
    assert at_once["conf"] == "dirty_decay_ms:0"
    assert kept["conf"] == "dirty_decay_ms:600000"
    grown_at_once = int(at_once["after"]) - int(at_once["before"])
    grown_kept = int(kept["after"]) - int(kept["before"])
    # released at once: the query's ~700 MB are gone when it returns; kept: they are still held
    assert grown_at_once < 100 * MB, grown_at_once
    assert grown_kept > 300 * MB, grown_kept


def test_the_default_release_time_and_an_operators_own_allocator_options(tmp_path: Path) -> None:
    assert probe(tmp_path, "")["conf"] == "dirty_decay_ms:1000"
    own = probe(tmp_path, "0", {"JE_MALLOC_CONF": "dirty_decay_ms:600000"})
    assert own["conf"] == "dirty_decay_ms:600000"  # left as the operator set it
    assert int(own["after"]) - int(own["before"]) > 300 * MB
