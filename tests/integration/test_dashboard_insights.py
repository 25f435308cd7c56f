"""The dashboard's insight views in headless Chromium, read back against the
plain-Python oracle over the same events: events split by a breakdown, the
funnel's orders, breakdown, times and persons (with their history, saved as a
cohort), paths drawn as a flow, stickiness, lifecycle, and the Cohorts view
with its filter. Screenshots go to test-artifacts/."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import Api
from tests.integration import stats_oracle as oracle
from tests.integration.test_dashboard import CHROMIUM, account, browser, marks, rows, sign_in, tabs, text  # noqa: F401
from tests.integration.test_stats import send_dataset

pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"), pytest.mark.slow]


def wait_ready(page: Any, panel: str) -> None:
    page.wait_for_function(f"() => document.querySelector('#panel-{panel}')?.dataset.state === 'ready'",
                           timeout=60_000)


def resubmit(page: Any, form: str, panel: str) -> None:
    """Submit a panel's form and wait for the new answer (the panel leaves ready, then comes back)."""
    page.evaluate(f"() => document.querySelector('#panel-{panel}').dataset.state = 'loading'")
    page.click(f"#{form} button[type=submit]")
    wait_ready(page, panel)


def test_insight_panels_show_the_right_numbers(pulse: Any, tabs: Any) -> None:  # noqa: F811
    email, _, (shop,) = account(pulse, "Insights")
    now = datetime.now(UTC)
    data = oracle.build(now, seed=777)
    send_dataset(pulse, Api(pulse.gateway_url, shop["key"]), data)
    first, last = (now - timedelta(days=80)).date(), now.date()
    events = oracle.select(data, first, last, "UTC")

    tab = tabs()
    page = tab.open("/dashboard")
    sign_in(page, email)
    page.wait_for_selector("#stats-view", state="visible")
    page.fill("#from", first.isoformat())
    page.fill("#to", last.isoformat())
    page.click("#filters button[type=submit]")
    tab.wait_panels("ready")

    # events split by country (the top 5 by users, then $other)
    split = oracle.events_split(events, "day", "UTC", ["country"], 5)
    assert rows(page, "breakdown") == [{"bucket": r["bucket"], "breakdown": " / ".join(r["breakdown"]),
                                        "events": str(r["events"]), "users": str(r["users"])} for r in split]
    assert sorted(set(page.eval_on_selector_all("#breakdown-chart polyline", "ps => ps.map(p => p.dataset.series)"))) \
        == sorted({" / ".join(r["breakdown"]) for r in split})
    page.fill("#breakdown-field", "properties.plan")
    page.fill("#breakdown-second", "country")
    page.select_option("#breakdown-interval", "week")
    resubmit(page, "breakdown-form", "breakdown")
    split = oracle.events_split(events, "week", "UTC", ["properties.plan", "country"], 5)
    assert [(r["breakdown"], r["events"]) for r in rows(page, "breakdown")] == [
        (" / ".join(r["breakdown"]), str(r["events"])) for r in split]

    # stickiness and lifecycle
    assert rows(page, "stickiness") == [{k: str(v) for k, v in r.items()} for r in oracle.stickiness(events, "day", "UTC")]
    cycle = oracle.lifecycle(data, first, last, "week", "UTC")
    assert rows(page, "lifecycle") == [{k: str(v) for k, v in r.items()} for r in cycle]
    drawn = page.eval_on_selector_all("#lifecycle-chart rect[data-kind]", """rs => rs.map(r =>
        [r.dataset.label, r.dataset.kind, Number(r.dataset.value)])""")
    assert drawn == [[r["bucket"], k, r[k]] for r in cycle for k in ("new", "returning", "resurrecting", "dormant")]

    # paths after signup, as a flow
    page.fill("#paths-anchor", "signup")
    page.fill("#paths-steps", "3")
    resubmit(page, "paths-form", "paths")
    flow = oracle.paths(events, "signup", steps=3)
    nodes = page.eval_on_selector_all("#paths-chart rect.node", """rs => rs.map(r =>
        [r.dataset.id, Number(r.dataset.users), Number(r.dataset.events)])""")
    assert sorted(nodes) == sorted([n["id"], n["users"], n["events"]] for n in flow["nodes"])
    bands = page.eval_on_selector_all("#paths-chart path.flow", """ps => ps.map(p =>
        [p.dataset.from, p.dataset.to, Number(p.dataset.users)])""")
    assert sorted(bands) == sorted([e["from"], e["to"], e["users"]] for e in flow["edges"])
    tab.shot("dashboard-insights")

    # the funnel: strict, within an hour, split by country
    for n, step in enumerate(("signup", "activate", "purchase")):
        page.select_option(f"#funnel-steps select >> nth={n}", step)
    page.select_option("#funnel-order", "strict")
    page.fill("#funnel-window", "1")
    page.select_option("#funnel-unit", "hour")
    page.fill("#funnel-breakdown", "country")
    resubmit(page, "funnel-form", "funnel")
    steps = [(s, []) for s in ("signup", "activate", "purchase")]
    want = oracle.funnel_full(events, steps, 3600, "strict", fields=["country"])["steps"]
    shown = rows(page, "funnel")
    assert [(r["breakdown"], r["event_type"], r["users"], r["conversion_from_start"]) for r in shown] == [
        (" / ".join(s["breakdown"]), s["event_type"], str(s["users"]), f"{s['conversion_from_start']:.1f}") for s in want]
    seconds = page.eval_on_selector_all('#funnel td[data-field="median_seconds_to_convert"]',
                                        "ts => ts.map(t => t.dataset.seconds === undefined ? null : Number(t.dataset.seconds))")
    assert seconds == [s["median_seconds_to_convert"] for s in want]

    # the persons converted at step 2 of the first value, their history, and a cohort of them
    page.click("#funnel tbody tr:nth-child(2) button[data-status=converted]")
    page.wait_for_selector("#people li, #people-title")
    walks = oracle.funnel_walks(events, steps, 3600, "strict", fields=["country"])
    ranks = oracle.top_values(oracle.Counter(w.value for w in walks.values()), 10)
    value = tuple(want[0]["breakdown"])
    persons = oracle.funnel_people(data, shop["project_id"], walks, 2, "converted", value, ranks)
    listed = page.eval_on_selector_all("#people li", "ls => ls.map(l => l.dataset.personId)")
    assert sorted(listed) == [p["person_id"] for p in persons] and listed
    page.click("#people li:first-child a")
    page.wait_for_selector("#people li:first-child .history[data-events]")
    first_ids = page.inner_text("#people li:first-child a").split(", ")
    history = oracle.user(data, first_ids[0])
    assert history is not None
    assert page.get_attribute("#people li:first-child .history", "data-events") == str(history["events"])
    tab.shot("dashboard-funnel-people")
    page.click("#people-save")
    page.wait_for_function("() => document.querySelector('#people-save').disabled")
    assert f"({len(persons)} persons)" in page.inner_text("#people-save")

    # the cohort as a filter: every panel reads its persons only
    page.select_option("#cohort", label=page.eval_on_selector("#cohort", "s => s.options[1].textContent"))
    page.evaluate("() => document.querySelectorAll('.panel').forEach(p => p.dataset.state = 'loading')")
    page.click("#filters button[type=submit]")
    tab.wait_panels("ready", "empty")
    members = {w for w in walks if walks[w].level >= 2 and walks[w].value == value}
    within = oracle.select(oracle.within(data, members), first, last, "UTC")
    top = oracle.top_events(within, 10)
    assert rows(page, "top-events") == [{k: text(v) for k, v in r.items()} for r in top]
    tab.clean()


def test_cohorts_view_makes_lists_and_filters_by_them(pulse: Any, tabs: Any) -> None:  # noqa: F811
    email, _, (shop,) = account(pulse, "Cohorts")
    now = datetime.now(UTC)
    data = oracle.build(now, seed=99)
    send_dataset(pulse, Api(pulse.gateway_url, shop["key"]), data)
    first, last = (now - timedelta(days=80)).date(), now.date()

    tab = tabs()
    page = tab.open("/dashboard#view=cohorts")
    sign_in(page, email)
    page.wait_for_selector("#cohorts-view", state="visible")
    page.wait_for_function("() => document.querySelector('#cohorts-view').dataset.state === 'empty'")
    page.fill("#cohort-name", "Early users")
    page.set_input_files("#cohort-file", files=[{"name": "users.csv", "mimeType": "text/csv",
                                                 "buffer": b"user_id,plan\nu1,pro\nu2,free\nvisitor-3,pro\n"}])
    page.wait_for_function("() => document.querySelector('#cohort-users').value.includes('visitor-3')")
    assert page.input_value("#cohort-users") == "u1\nu2\nvisitor-3", "the header line is left out"
    page.click("#cohort-form button[type=submit]")
    page.wait_for_function("() => document.querySelectorAll('#cohorts tbody tr').length === 1")
    page.fill("#cohort-name", "Buyers")
    page.select_option("#cohort-kind", "definition")
    page.fill("#cohort-event", "purchase")
    page.fill("#cohort-days", "60")
    page.click("#cohort-form button[type=submit]")
    page.wait_for_function("() => document.querySelectorAll('#cohorts tbody tr').length === 2")
    listed = rows(page, "cohorts")
    assert [(r["name"], r["kind"]) for r in listed] == [("Buyers", "behavioural"), ("Early users", "static")]
    assert listed[1]["what"] == "3 users listed"
    tab.shot("dashboard-cohorts")

    page.click("#cohorts tbody tr:nth-child(2) button")  # filter the stats by Early users
    page.wait_for_selector("#stats-view", state="visible")
    page.fill("#from", first.isoformat())
    page.fill("#to", last.isoformat())
    page.click("#filters button[type=submit]")
    tab.wait_panels("ready", "empty")
    chosen = page.eval_on_selector("#cohorts-view", "v => v.dataset.state")  # the view was left
    assert chosen and page.eval_on_selector("#cohort", "s => s.options[s.selectedIndex].textContent") == "Early users"
    persons = oracle.static_cohort(data, ["u1", "u2", "visitor-3"])
    within = oracle.select(oracle.within(data, persons), first, last, "UTC")
    assert rows(page, "top-events") == [{k: text(v) for k, v in r.items()} for r in oracle.top_events(within, 10)]
    assert marks(page, "dau-chart", "circle") == [(r["bucket"], r["unique_users"]) for r in oracle.active(within, "day", "UTC")]
    tab.clean()
