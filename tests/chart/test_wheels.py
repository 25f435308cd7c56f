"""The image builds without a compiler on x86_64 and aarch64: every dependency
resolves to wheels for CPython 3.11 on manylinux (scripts/check_wheels.py,
pip resolving from PyPI's metadata for each target platform)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from .conftest import ROOT


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_every_dependency_has_a_manylinux_wheel_for_both_architectures() -> None:
    if not _pypi_reachable():
        pytest.skip("PyPI is not reachable from here")
    result = subprocess.run([sys.executable, "scripts/check_wheels.py"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["platform"] for line in lines] == ["x86_64", "aarch64"]
    for line in lines:
        assert line["wheels"] >= 30
        for file in line["files"]:
            assert file.endswith(".whl")
            tags = file[:-4].split("-")[-1]
            assert tags == "any" or line["platform"] in tags, file
        names = {f.split("-")[0].lower() for f in line["files"]}
        assert {"functions_framework", "kafka_python", "clickhouse_connect", "orjson", "pyarrow"} <= names
