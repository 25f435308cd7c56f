"""`pulse up` at a terminal: run in a real pseudo-terminal, as a person would
run it. One short line per request, the banner once and in one piece after
start-up, Ctrl-C to stop; `--quiet` and `--log-format json` as documented."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import psutil
import pytest
import urllib3

from tests.conftest import ROOT, make_event

pytestmark = pytest.mark.slow
REQUEST_LINE = re.compile(r"^\d\d:\d\d:\d\d  (GET|POST|DELETE) +(\S+) +(\d{3}) +(\d+) ms  (\w+)$")
BANNER_END = "Ctrl-C stops Pulse"


class Terminal:
    """A command on the slave side of a pty; everything it writes is kept."""

    def __init__(self, args: list[str]) -> None:
        master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
        env["TERM"] = "xterm"
        # a session of its own whose controlling terminal is the pty, as a shell would start it
        self.process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT,
                                        start_new_session=True,
                                        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.master = master
        self.output = b""
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the other side closed
                chunk = b""
            with self.changed:
                self.output += chunk
                self.changed.notify_all()
            if not chunk:
                return

    @property
    def lines(self) -> list[str]:
        return self.output.decode(errors="replace").replace("\r\n", "\n").split("\n")

    def wait_for(self, done: Callable[[list[str]], bool], timeout_s: float = 180) -> list[str]:
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while not done(self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None and not self.reader.is_alive():
                    pytest.fail("gave up waiting; the terminal shows:\n" + "\n".join(self.lines[-40:]))
                self.changed.wait(min(left, 1.0))
        return self.lines

    def ctrl_c(self) -> int:
        os.write(self.master, b"\x03")  # the terminal turns it into SIGINT for the foreground group
        try:
            return self.process.wait(90)
        finally:
            self.reader.join(10)

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.reader.join(10)
        os.close(self.master)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Callable[..., Terminal]]:
    started: list[Terminal] = []

    def start(*extra: str) -> Terminal:
        t = Terminal([sys.executable, "-m", "pulse.cli", "up", "--port", "0", "--state-dir", str(tmp_path), *extra])
        started.append(t)
        return t

    yield start
    for t in started:
        t.close()


def alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def banner_shown(lines: list[str]) -> bool:
    return any(line.startswith(BANNER_END) for line in lines)


def gateway(lines: list[str]) -> str:
    return next(m.group(1) for line in lines if (m := re.match(r"Pulse is up: (\S+)", line)))


def test_one_short_line_per_request_after_one_banner(terminal: Callable[..., Terminal]) -> None:
    t = terminal("--demo", "--demo-events", "300")
    lines = t.wait_for(banner_shown)
    url = gateway(lines)
    key = next(m.group(1) for line in lines if (m := re.match(r"API key \(ingest \+ read\): (\S+)", line)))
    http = urllib3.PoolManager(retries=False)
    sent = [
        ("GET", "/healthz", {}, None, "200", "host"),
        ("GET", "/v1/stats/top-events", {"X-API-Key": key}, None, "200", "aggregate"),
        ("POST", "/v1/events", {"X-API-Key": "pulse_wrong_key"}, orjson.dumps(make_event()), "401", "ingest"),
        ("GET", "/no/such/path", {}, None, "404", "host"),
    ]
    for method, path, headers, body, status, _ in sent:
        assert str(http.request(method, url + path, headers=headers, body=body).status) == status

    def all_logged(lines: list[str]) -> bool:
        return sum(bool(REQUEST_LINE.match(line)) for line in lines) >= len(sent)

    lines = t.wait_for(all_logged)
    assert t.ctrl_c() == 0
    lines = t.lines
    assert sum(line.startswith("Pulse is up:") for line in lines) == 1, "the banner is printed once"
    first, last = (next(i for i, line in enumerate(lines) if line.startswith(p)) for p in ("Pulse is up:", BANNER_END))
    banner = lines[first:last + 1]
    assert not [line for line in banner if REQUEST_LINE.match(line)], "nothing interleaved with the banner"
    assert any("/dashboard" in line for line in banner) and any("/docs" in line for line in banner)
    assert not [line for line in lines[:first] if REQUEST_LINE.match(line)], "no request lines before the banner"
    assert not [line for line in lines if line.lstrip().startswith("{")], "no JSON log lines on a terminal"
    logged = [REQUEST_LINE.match(line).groups() for line in lines[last:] if REQUEST_LINE.match(line)]  # type: ignore[union-attr]
    # One line per answer; with several ingest processes serving the port, each logs when its
    # answer's body is sent, so two quick answers from different processes may print either way.
    assert sorted((m, p, s, f) for m, p, s, _, f in logged) == sorted((m, p, s, f) for m, p, _, _, s, f in sent)
    assert lines[-2:] in (["Stopped.", ""], ["Stopped."]) or "Stopped." in lines[-3:]


def test_quiet_shows_the_banner_and_failures_only(terminal: Callable[..., Terminal]) -> None:
    t = terminal("--quiet")
    lines = t.wait_for(banner_shown)
    assert lines[0].startswith("Pulse is up:"), lines[:3]
    url = gateway(lines)
    http = urllib3.PoolManager(retries=False)
    assert http.request("GET", url + "/healthz").status == 200
    assert http.request("GET", url + "/nothing").status == 404
    # ingest's own process dies: the gateway answers 503, a failure the quiet terminal shows
    ingest_port = next(int(m.group(1)) for line in lines if (m := re.match(r"  ingest +http://[\d.]+:(\d+)", line)))
    children = psutil.Process(t.process.pid).children()
    ingest = next(c for c in children for conn in c.net_connections("tcp") if conn.laddr.port == ingest_port)
    ingest.kill()  # its socket closes with it; the parent reaps it later
    deadline = time.monotonic() + 30
    while alive(ingest):
        assert time.monotonic() < deadline, "the killed ingest process is still running"
        time.sleep(0.05)
    failed = http.request("POST", url + "/v1/events", body=orjson.dumps(make_event()),
                          headers={"Content-Type": "application/json"})
    assert failed.status == 503
    lines = t.wait_for(lambda lines: any(REQUEST_LINE.match(line) for line in lines))
    shown = [REQUEST_LINE.match(line).groups() for line in lines if REQUEST_LINE.match(line)]  # type: ignore[union-attr]
    assert [(m, p, s, f) for m, p, s, _, f in shown] == [("POST", "/v1/events", "503", "ingest")]
    t.ctrl_c()
    assert not [line for line in t.lines if line.startswith(("Starting", "Stopping", "Stopped"))]


def test_json_logs_when_asked_for_even_on_a_terminal(terminal: Callable[..., Terminal]) -> None:
    t = terminal("--log-format", "json")
    url = gateway(t.wait_for(banner_shown))
    answer = urllib3.request("GET", url + "/v1/stats/overview", headers={"X-Request-ID": "json-please"})
    assert answer.status == 401

    def logged(lines: list[str]) -> bool:
        return any('"json-please"' in line for line in lines)

    lines = t.wait_for(logged)
    assert t.ctrl_c() == 0
    records = [orjson.loads(line) for line in lines if line.startswith("{")]
    mine = [r for r in records if r.get("request_id") == "json-please"]
    assert mine and mine[0]["function"] == "aggregate" and mine[0]["status"] == 401
    assert not [line for line in lines if REQUEST_LINE.match(line)]
