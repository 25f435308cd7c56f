"""Every dependency of the image (pyproject.toml's, as `pip install .` in the
Dockerfile resolves them) has a wheel for CPython 3.11 on manylinux x86_64 and
aarch64, so the image builds for both without a compiler.

    python scripts/check_wheels.py              # resolve from PyPI's metadata (fast)
    python scripts/check_wheels.py --download   # also download every wheel

Each platform is resolved by pip itself with --only-binary=:all: for that
platform; pip fails, naming the package, when one has no wheel. Prints one
line per platform and exits non-zero on the first that fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = "3.11"
ARCHES = ("x86_64", "aarch64")
# The image is python:3.11-slim-bookworm: glibc 2.36 takes every manylinux tag up to 2_36.
GLIBC_MINOR = 36


def platform_tags(arch: str) -> list[str]:
    """Every wheel platform tag the image's glibc accepts on ``arch``, newest first."""
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MINOR, 16, -1)]
    legacy = [f"manylinux2010_{arch}", f"manylinux1_{arch}"] if arch == "x86_64" else []
    return [*tags, f"manylinux2014_{arch}", *legacy]


def dependencies(arch: str) -> list[str]:
    """pyproject.toml's dependencies that apply on Linux/``arch``, markers evaluated
    for that target (pip evaluates them for the machine it runs on)."""
    from packaging.requirements import Requirement

    target = {"platform_machine": arch, "sys_platform": "linux", "platform_system": "Linux",
              "python_version": PYTHON, "python_full_version": f"{PYTHON}.0", "implementation_name": "cpython"}
    out = []
    for text in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(target):
            req.marker = None
            out.append(str(req))
    return out


def resolve(arch: str, download: bool) -> list[dict[str, str]]:
    """(name, version, wheel file) of everything pip would install on ``arch``."""
    platforms = [arg for tag in platform_tags(arch) for arg in ("--platform", tag)]
    with tempfile.TemporaryDirectory() as tmp:
        common = ["--only-binary=:all:", *platforms, "--python-version", PYTHON,
                  "--implementation", "cp", "--abi", f"cp{PYTHON.replace('.', '')}",
                  "--disable-pip-version-check", "--quiet"]
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run",  # noqa: S603 - pip, fixed arguments
                        "--ignore-installed",
                        "--target", str(Path(tmp) / "target"), "--report", str(report), *common,
                        *dependencies(arch)], check=True)
        if download:
            subprocess.run([sys.executable, "-m", "pip", "download",  # noqa: S603 - pip, fixed arguments
                            "--dest", str(Path(tmp) / "wheels"), *common,
                            *dependencies(arch)], check=True)
        items = json.loads(report.read_text())["install"]
    out = []
    for item in items:
        url = item["download_info"]["url"]
        out.append({"name": item["metadata"]["name"], "version": item["metadata"]["version"],
                    "file": url.rsplit("/", 1)[-1]})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--download", action="store_true", help="download the wheels too (pip download)")
    args = parser.parse_args(argv)
    for platform in ARCHES:
        try:
            wheels = resolve(platform, args.download)
        except subprocess.CalledProcessError:
            print(f"{platform}: a dependency has no wheel (pip's message above)", file=sys.stderr)
            return 1
        not_wheels = [w for w in wheels if not w["file"].endswith(".whl")]
        if not_wheels:
            print(f"{platform}: not wheels: {not_wheels}", file=sys.stderr)
            return 1
        print(json.dumps({"platform": platform, "python": PYTHON, "wheels": len(wheels),
                          "files": sorted(w["file"] for w in wheels)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
