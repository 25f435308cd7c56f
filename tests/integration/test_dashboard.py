"""The dashboard in headless Chromium (Debian's ``chromium``): it loads with a
read API key, draws every chart with the numbers a plain-Python computation
over the same events gives, and leaves a screenshot in test-artifacts/."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.conftest import ROOT
from tests.integration import stats_oracle as oracle
from tests.integration.test_stats import send_dataset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node] = []
        self.text = ""

    def all(self, tag: str) -> list[Node]:
        found = [c for c in self.children if c.tag == tag]
        for c in self.children:
            found.extend(c.all(tag))
        return found

    def find(self, id_: str) -> Node:
        for node in self._walk():
            if node.attrs.get("id") == id_:
                return node
        raise AssertionError(f"no element #{id_}")

    def _walk(self) -> list[Node]:
        out = [self]
        for c in self.children:
            out.extend(c._walk())
        return out

    def content(self) -> str:
        return self.text + "".join(c.content() for c in self.children)


class Dom(HTMLParser):
    VOID = {"meta", "link", "input", "br", "img", "hr", "circle", "rect", "polyline", "option"}

    def __init__(self, html: str) -> None:
        super().__init__()
        self.root = Node("#root", {}, None)
        self.current = self.root
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in self.VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.current))

    def handle_endtag(self, tag: str) -> None:
        node = self.current
        while node.parent is not None and node.tag != tag:
            node = node.parent
        if node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.text += data


def marks(dom: Node, chart: str, tag: str) -> list[tuple[str, int]]:
    return [(m.attrs["data-label"], int(m.attrs["data-value"])) for m in dom.find(chart).all(tag)
            if "data-label" in m.attrs]


def rows(dom: Node, table: str) -> list[dict[str, str]]:
    return [{td.attrs["data-field"]: td.content() for td in tr.all("td")}
            for tr in dom.find(table).all("tr") if tr.all("td")]


def chromium(url: str, *extra: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=15000", *extra, url],
            capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def text(value: Any) -> str:
    return "" if value is None else str(value)


def test_dashboard_draws_the_right_numbers(pulse: Any, project: Any) -> None:
    now = datetime.now(UTC)
    data = oracle.build(now, seed=4242)
    send_dataset(pulse, project.api, data)  # the events, identity calls and late events
    first, last = (now - timedelta(days=80)).date(), now.date()
    settings = {"key": project.key, "from": first.isoformat(), "to": last.isoformat(), "tz": "UTC",
                "funnel": "signup,activate,purchase", "window": "3600", "windows": "8", "live": "off"}
    url = f"{pulse.gateway_url}/dashboard#{urlencode(settings)}"

    dom = Dom(chromium(url, "--dump-dom")).root
    body = dom.all("body")[0]
    assert body.attrs.get("data-state") == "ready", dom.find("status").content()

    events = oracle.select(data, first, last, "UTC")
    by_day = oracle.events_by(events, "day", "UTC")
    assert marks(dom, "events-chart", "rect") == [(r["bucket"], r["events"]) for r in by_day]
    assert marks(dom, "dau-chart", "circle") == [(r["bucket"], r["users"]) for r in by_day]

    top = oracle.top_events(events, 10)
    assert marks(dom, "top-events-chart", "rect") == [(r["event_type"], r["count"]) for r in top]
    assert rows(dom, "top-events") == [{k: text(v) for k, v in r.items()} for r in top]

    pages = oracle.pages(events, 10)
    total = dom.find("pages-total")
    assert (int(total.attrs["data-views"]), int(total.attrs["data-users"])) == (
        pages["total_views"], pages["unique_users"])
    assert rows(dom, "pages") == [{k: text(v) for k, v in r.items()} for r in pages["top_paths"]]

    today = datetime.now(UTC).date()
    want_retention = oracle.retention(data, today - timedelta(weeks=8), 8, "UTC", today)
    got_retention = rows(dom, "retention")
    assert len(got_retention) == len(want_retention)
    for got, want in zip(got_retention, want_retention, strict=True):
        assert {k: v for k, v in got.items() if v != ""} == {k: text(v) for k, v in want.items()}

    funnel = oracle.funnel(events, [("signup", []), ("activate", []), ("purchase", [])], 3600)["steps"]
    assert marks(dom, "funnel-chart", "rect") == [(s["event_type"], s["users"]) for s in funnel]
    assert rows(dom, "funnel") == [{k: text(v) for k, v in s.items()} for s in funnel]

    overview = {k: v for k, v in oracle.overview(events).items() if k != "bot_events_excluded"}  # not drawn
    shown = {dd.attrs["data-field"]: dd.content() for dd in dom.find("overview").all("dd")}
    assert shown == {k: str(v) for k, v in overview.items()}
    summary = {dd.attrs["data-field"]: dd.content() for dd in dom.find("summary").all("dd")}
    assert summary["events_today"] == str(oracle.summary(data, datetime.now(UTC), "UTC")["events_today"])

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    chromium(url, f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars")
    assert shot.stat().st_size > 10_000


def test_dashboard_files_are_served_locally(project: Any) -> None:
    page = project.api.get("/dashboard", key="")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    html = page.body.decode()
    assert "http://" not in html and "https://" not in html, "no CDN: every script is served by Pulse"
    for name in ("app.js", "charts.js", "style.css"):
        assert f"/dashboard/{name}" in html
        assert project.api.get(f"/dashboard/{name}", key="").status == 200
    assert project.api.get("/dashboard/..%2Fsettings.py", key="").status == 404
    assert Path(ROOT / "functions/pulse/dashboard/index.html").is_file()
