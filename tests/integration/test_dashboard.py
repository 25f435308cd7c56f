"""The dashboard and the API reference page in headless Chromium (Debian's
``chromium``, driven by Playwright), used as a person would: sign in, choose a
project, read the stats (checked against a plain-Python computation over the
same events), share the view's URL, make and revoke an API key, invite a
member who accepts, stay signed in past the access token's lifetime, sign
out. Pages run under the Content-Security-Policy Pulse sends (no inline
script or style) and must reach no other host; a screenshot of each view is
kept in test-artifacts/."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import ROOT, Api, make_event, wait_persisted
from tests.integration import stats_oracle as oracle
from tests.integration.test_stats import send_dataset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"
PASSWORD = "correct-horse-battery"
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"), pytest.mark.slow]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield launched
        launched.close()


class Tab:
    """A page of a fresh browser context that records console errors (a script
    or style the page's Content-Security-Policy refuses is one) and every
    request to another origin."""

    def __init__(self, browser: Any, base: str) -> None:
        self.base = base
        self.context = browser.new_context(viewport={"width": 1280, "height": 1000})
        self.context.set_default_timeout(90_000)  # a shared, loaded machine answers slowly at times
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"{m.text} {m.location}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: None if r.url.startswith(base) else self.foreign.append(r.url))

    def open(self, path: str) -> Any:
        self.page.goto(self.base + path)
        return self.page

    def panel_state(self, panel: str) -> str:
        return str(self.page.get_attribute(f"#panel-{panel}", "data-state"))

    def wait_panels(self, *states: str) -> None:
        self.page.wait_for_function(
            "states => { const ps = [...document.querySelectorAll('.panel')];"
            " return ps.length > 0 && ps.every(p => states.includes(p.dataset.state)); }",
            arg=list(states or ("ready", "empty")), timeout=60_000)

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        target = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(target), full_page=True)
        assert target.stat().st_size > 5_000

    def clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.foreign == [], self.foreign

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tabs(browser: Any, pulse: Any) -> Iterator[Any]:
    opened: list[Tab] = []

    def tab() -> Tab:
        opened.append(Tab(browser, pulse.gateway_url))
        return opened[-1]

    yield tab
    for t in opened:
        t.close()


def account(pulse: Any, *projects: str) -> tuple[str, str, list[dict[str, str]]]:
    """A registered user owning ``projects``: (email, access token, [{project_id, key}])."""
    api = Api(pulse.gateway_url)
    email = f"dash-{uuid.uuid4().hex[:8]}@example.com"
    assert api.post("/v1/auth/register", {"email": email, "password": PASSWORD}).status == 201
    token = api.post("/v1/auth/login", {"email": email, "password": PASSWORD}).json["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    made = []
    for name in projects:
        project_id = api.post("/v1/projects", {"name": name}, headers=bearer).json["project_id"]
        key = api.post(f"/v1/projects/{project_id}/api-keys", {"name": "k", "scopes": ["ingest", "read"]},
                       headers=bearer).json["api_key"]
        made.append({"project_id": project_id, "key": key})
    return email, token, made


def sign_in(page: Any, email: str) -> None:
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("#signin-submit")


def marks(page: Any, chart: str, tag: str) -> list[tuple[str, int]]:
    return [(m["label"], int(m["value"])) for m in page.eval_on_selector_all(
        f"#{chart} {tag}[data-label]", "ms => ms.map(m => ({label: m.dataset.label, value: m.dataset.value}))")]


def rows(page: Any, table: str) -> list[dict[str, str]]:
    return page.eval_on_selector_all(f"#{table} tbody tr", """trs => trs.map(tr => Object.fromEntries(
        [...tr.querySelectorAll('td')].map(td => [td.dataset.field, td.textContent])))""")


def text(value: Any) -> str:
    return "" if value is None else str(value)


FUNNEL_SHOWN = ("event_type", "users", "conversion_from_start", "conversion_from_previous")


def funnel_shown(page: Any) -> list[dict[str, Any]]:
    """The funnel table's figures, the times to convert as the seconds each cell holds."""
    seconds = page.eval_on_selector_all(
        "#funnel tbody tr", """trs => trs.map(tr => [...tr.querySelectorAll('td[data-field$="_seconds_to_convert"]')]
        .map(td => td.dataset.seconds === undefined ? null : Number(td.dataset.seconds)))""")
    return [{**{k: r[k] for k in FUNNEL_SHOWN}, "seconds": s} for r, s in zip(rows(page, "funnel"), seconds, strict=True)]


def funnel_wanted(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**{k: text(s[k]) for k in FUNNEL_SHOWN},
             "seconds": [s["median_seconds_to_convert"], s["mean_seconds_to_convert"]]} for s in steps]


def test_sign_in_choose_a_project_and_read_the_right_numbers(pulse: Any, tabs: Any) -> None:
    email, _, (busy, quiet) = account(pulse, "Shop", "Empty app")
    now = datetime.now(UTC)
    data = oracle.build(now, seed=4242)
    send_dataset(pulse, Api(pulse.gateway_url, busy["key"]), data)  # events, identity links, late events

    tab = tabs()
    page = tab.open("/dashboard")
    page.wait_for_selector("#signin-view", state="visible")
    assert not page.is_visible("#sign-out") and not page.is_visible("#nav")
    tab.shot("dashboard-sign-in")
    sign_in(page, email)
    page.wait_for_selector("#stats-view", state="visible")
    tab.wait_panels()
    assert page.is_visible("#sign-out") and page.is_visible("#nav a[data-view=keys]")
    assert not page.is_visible("#signin-view")
    assert page.eval_on_selector_all("#project option", "os => os.map(o => o.textContent)") == ["Shop", "Empty app"]
    page.select_option("#project", busy["project_id"])
    first, last = (now - timedelta(days=80)).date(), now.date()
    page.fill("#from", first.isoformat())
    page.fill("#to", last.isoformat())
    page.click("#filters button[type=submit]")
    tab.wait_panels("ready")

    events = oracle.select(data, first, last, "UTC")
    by_day = oracle.events_by(events, "day", "UTC")
    assert marks(page, "events-chart", "rect") == [(r["bucket"], r["events"]) for r in by_day]
    assert marks(page, "dau-chart", "circle") == [(r["bucket"], r["users"]) for r in by_day]
    top = oracle.top_events(events, 10)
    assert marks(page, "top-events-chart", "rect") == [(r["event_type"], r["count"]) for r in top]
    assert rows(page, "top-events") == [{k: text(v) for k, v in r.items()} for r in top]
    pages = oracle.pages(events, 10)
    assert (page.get_attribute("#pages-total", "data-views"), page.get_attribute("#pages-total", "data-users")) == (
        str(pages["total_views"]), str(pages["unique_users"]))
    assert rows(page, "pages") == [{k: text(v) for k, v in r.items()} for r in pages["top_paths"]]

    today = now.date()
    cohorts = [r for r in oracle.retention(data, today - timedelta(weeks=8), 8, "UTC", today) if r["week_0"] > 0]
    shown = rows(page, "retention")
    assert len(shown) == len(cohorts), "a week in which nobody started is not a row"
    for got, want in zip(shown, cohorts, strict=True):
        assert {k: v for k, v in got.items() if v != ""} == {k: text(v) for k, v in want.items()}

    # the funnel offers the event types of the range, and starts with the three most frequent
    offered = page.eval_on_selector_all("#funnel-steps select", "ss => ss.map(s => s.value)")
    assert offered == [r["event_type"] for r in oracle.top_events(events, 3)]
    options = page.eval_on_selector("#funnel-steps select", "s => [...s.options].map(o => o.value).filter(Boolean)")
    assert sorted(options) == sorted(r["event_type"] for r in oracle.top_events(events, 100))
    funnel = oracle.funnel(events, [(t, []) for t in offered], 86400)["steps"]
    assert funnel_shown(page) == funnel_wanted(funnel)
    # choose other steps and a window of one hour: the URL keeps them
    page.select_option("#funnel-steps select >> nth=1", "activate")
    page.fill("#funnel-window", "1")
    page.select_option("#funnel-unit", "hour")
    page.click("#funnel-form button[type=submit]")
    page.wait_for_function("() => document.querySelector('#panel-funnel').dataset.state === 'ready'")
    steps = [offered[0], "activate", offered[2]]
    funnel = oracle.funnel(events, [(t, []) for t in steps], 3600)["steps"]
    page.wait_for_function("n => document.querySelectorAll('#funnel tbody tr').length === n", arg=len(funnel))
    assert funnel_shown(page) == funnel_wanted(funnel)

    overview = oracle.overview(oracle.select(data, first, last, "UTC", include_bots=True))  # bots counted apart
    shown_overview = dict(page.eval_on_selector_all("#overview dd", "ds => ds.map(d => [d.dataset.field, d.textContent])"))
    assert shown_overview == {k: str(v) for k, v in overview.items()}
    tab.shot("dashboard-stats")

    shared = page.url
    state = parse_qs(urlsplit(shared).fragment)
    assert state["project"] == [busy["project_id"]] and state["from"] == [first.isoformat()]
    assert state["funnel"] == [",".join(steps)] and state["window"] == ["1"] and state["unit"] == ["hour"]
    assert busy["key"] not in shared and "token" not in shared

    other = tabs()  # someone opening the shared link: signs in, lands on the same view
    page2 = other.open(shared.replace(pulse.gateway_url, ""))
    page2.wait_for_selector("#signin-view", state="visible")
    sign_in(page2, email)
    other.wait_panels("ready")
    assert page2.input_value("#project") == busy["project_id"]
    assert page2.input_value("#from") == first.isoformat()
    assert rows(page2, "funnel") == rows(page, "funnel")

    page.select_option("#project", quiet["project_id"])  # a project with no events: every panel says so
    tab.wait_panels("empty")
    tab.shot("dashboard-empty-project")
    tab.clean()
    other.clean()


def test_each_panel_loads_and_fails_on_its_own(pulse: Any, tabs: Any) -> None:
    email, _, (only,) = account(pulse, "Solo")
    api = Api(pulse.gateway_url, only["key"])
    assert api.post("/v1/events", {"events": [make_event(user_id=f"u{n}", context={"page": {"path": "/a"}})
                                              for n in range(20)]}).status == 202
    wait_persisted(pulse)
    tab = tabs()
    held: list[Any] = []
    tab.page.route("**/v1/stats/pages?*", lambda route: held.append(route))  # answered later
    tab.page.route("**/v1/stats/retention?*", lambda route: route.fulfill(
        status=503, content_type="application/problem+json", headers={"X-Request-ID": "r1"},
        body='{"type": "about:blank", "title": "Unavailable", "status": 503, "detail": "ClickHouse is away"}'))
    page = tab.open("/dashboard")
    sign_in(page, email)
    page.wait_for_function("() => document.querySelector('#panel-retention')?.dataset.state === 'error'")
    page.wait_for_function("() => document.querySelector('#panel-top-events')?.dataset.state === 'ready'")
    assert tab.panel_state("pages") == "loading"
    assert "Loading" in page.inner_text("#panel-pages .panel-status")
    assert "ClickHouse is away" in page.inner_text("#panel-retention .panel-status")
    tab.shot("dashboard-panel-states")
    page.unroute("**/v1/stats/pages?*")
    for route in held:
        route.continue_()
    page.wait_for_function("() => document.querySelector('#panel-pages').dataset.state === 'ready'")
    assert page.get_attribute("#pages-total", "data-views") == "20"
    tab.errors = [e for e in tab.errors if "503" not in e]  # the browser reports the failed fetch itself
    tab.clean()


def test_keys_members_refresh_and_sign_out(pulse: Any, tabs: Any) -> None:
    email, owner_token, (project,) = account(pulse, "Team app")
    viewer_email, _, _ = account(pulse)
    tab = tabs()
    page = tab.page
    page.clock.install()
    tab.open("/dashboard")
    sign_in(page, email)
    page.wait_for_selector("#stats-view", state="visible")

    page.click("#nav a[data-view=keys]")
    page.wait_for_function("() => document.querySelector('#keys-view').dataset.state === 'ready'")
    assert "view=keys" in page.url and f"project={project['project_id']}" in page.url
    page.fill("#key-name", "backend")
    page.check("#scope-read")
    page.click("#key-create button[type=submit]")
    page.wait_for_selector("#key-secret", state="visible")
    secret = page.inner_text("#key-secret-value")
    assert secret.startswith("pulse_")
    made = Api(pulse.gateway_url, secret)
    assert made.post("/v1/events", make_event()).status == 202
    assert made.get("/v1/stats/overview").status == 200
    page.wait_for_selector("#keys tr[data-revoked=no] >> text=backend")
    tab.shot("dashboard-keys")
    revoke = page.locator("#keys tr:has-text('backend') button")
    revoke.click()
    assert "Click again" in revoke.inner_text()
    revoke.click()
    page.wait_for_selector("#keys tr[data-revoked=yes]:has-text('backend')")
    deadline = time.monotonic() + 15  # ingest refuses a revoked key within 5 s (its key cache)
    while made.post("/v1/events", make_event()).status != 401:
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.2)

    page.click("#nav a[data-view=members]")
    page.wait_for_function("() => document.querySelector('#members-view').dataset.state === 'ready'")
    for invited in (viewer_email, "nobody-yet@example.com"):  # the same answer, account or not
        page.fill("#member-email", invited)
        page.click("#member-add button[type=submit]")
        page.wait_for_selector(f"#invitations tr[data-email='{invited}']")
        assert f"Invitation sent to {invited}" in page.inner_text("#members-status")
    assert not page.is_visible(f"#members tr[data-email='{viewer_email}']"), "a member only once they accept"
    tab.shot("dashboard-members")
    withdraw = page.locator("#invitations tr[data-email='nobody-yet@example.com'] button")
    withdraw.click()
    withdraw.click()
    page.wait_for_selector("#invitations tr[data-email='nobody-yet@example.com']", state="detached")

    # the access token lives 15 minutes: the page refreshes it before then, and keeps working
    tokens: list[str] = []
    page.on("request", lambda r: tokens.append(r.headers.get("authorization", "")) if "/v1/" in r.url else None)
    stored = "() => JSON.parse(sessionStorage.getItem('pulse-session')).access_token"
    before = page.evaluate(stored)
    with page.expect_response("**/v1/auth/refresh") as refreshed:
        page.clock.run_for(pulse.settings.access_token_ttl_s * 1000 - 30_000)
    assert refreshed.value.status == 200
    page.click("#nav a[data-view=members]")
    page.wait_for_function("() => document.querySelector('#members-view').dataset.state === 'ready'")
    after = page.evaluate(stored)
    assert after != before and tokens[-1] == f"Bearer {after}"
    spent_before = page.evaluate("() => JSON.parse(sessionStorage.getItem('pulse-session')).refresh_token")

    with page.expect_response("**/v1/auth/logout") as logout:
        page.click("#sign-out")
    assert logout.value.status == 204
    page.wait_for_selector("#signin-view", state="visible")
    assert page.evaluate("() => sessionStorage.getItem('pulse-session')") is None
    assert Api(pulse.gateway_url).post("/v1/auth/refresh", {"refresh_token": spent_before}).status == 401

    viewer = tabs()  # the invited person accepts; as a viewer they see the stats and the members, not the keys
    page2 = viewer.open(f"/dashboard#view=keys&project={project['project_id']}")
    sign_in(page2, viewer_email)
    page2.wait_for_selector(f"#my-invitations tr[data-project='{project['project_id']}']")
    viewer.shot("dashboard-invitation")
    page2.click(f"#my-invitations tr[data-project='{project['project_id']}'] button")
    page2.wait_for_selector("#my-invitations", state="hidden")
    page2.wait_for_function("p => document.querySelector('#project').value === p", arg=project["project_id"])
    page2.wait_for_function("() => document.querySelector('#keys-view').dataset.state === 'error'")
    assert "Only the project's owners" in page2.inner_text("#keys-status")
    assert not page2.is_visible("#nav a[data-view=keys]") and not page2.is_visible("#nav a[data-view=members]")
    page2.click("#nav a[data-view=stats]")
    viewer.wait_panels()
    members = Api(pulse.gateway_url).get(f"/v1/projects/{project['project_id']}/members",
                                         headers={"Authorization": f"Bearer {owner_token}"}).json
    assert {m["email"]: m["role"] for m in members} == {email: "owner", viewer_email: "viewer"}
    tab.clean()
    viewer.errors = [e for e in viewer.errors if "403" not in e]
    viewer.clean()


def test_the_api_reference_page_renders_every_operation(pulse: Any, tabs: Any) -> None:
    tab = tabs()
    page = tab.open("/docs")
    page.wait_for_selector(".opblock", timeout=60_000)
    doc = Api(pulse.gateway_url).get("/openapi.json").json
    operations = sum(1 for item in doc["paths"].values() for op in item
                     if op in ("get", "post", "delete", "put", "patch"))
    assert page.locator(".opblock").count() == operations
    assert page.get_attribute("#swagger-ui .servers select option", "value") == pulse.gateway_url
    tab.shot("api-docs")
    tab.clean()


def test_the_dashboard_files_are_served_by_pulse(project: Any) -> None:
    page = project.api.get("/dashboard", key="")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    html = page.body.decode()
    assert "http://" not in html and "https://" not in html, "no CDN: every script is served by Pulse"
    assert "<script>" not in html and "style=" not in html, "nothing inline"
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "unsafe-eval" not in policy
    for name in ("app.js", "api.js", "panels.js", "stats.js", "charts.js", "style.css"):
        assert f"/dashboard/{name}" in html
        assert project.api.get(f"/dashboard/{name}", key="").status == 200
    assert project.api.get("/dashboard/..%2Fsettings.py", key="").status == 404
