"""A seeded event set for the stats tests, and every stats answer computed in
plain Python over it: independent of the SQL under test.

Users are persons: identity calls (native identify, Segment identify and
alias, PostHog $identify, $create_alias, $merge_dangerously) link identifiers,
sent in phases after the events they concern (late links), with a chain
(a -> b, b -> c), a refused merge of two identified users, a forced one, and
anonymous events that arrive after their link. ``resolve`` computes each
identifier's person with a union-find of its own."""

from __future__ import annotations

import json
import random
import statistics
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

TYPES = ["page_view", "page_view", "page_view", "click", "signup", "activate", "purchase"]
PATHS = ["/", "/pricing", "/docs", "/blog", "/signup"]
COUNTRIES = ["UA", "DE", "US", "FR"]
PLANS = ["free", "pro"]
# User agents the oracle knows: two of known bots (a crawler, a headless browser), one of a person.
BOT_AGENTS = frozenset({
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
})
HUMAN_AGENT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"


@dataclass
class Event:
    event_id: str
    event_type: str
    user_id: str
    anonymous_id: str
    session_id: str
    at: datetime  # aware, UTC, millisecond precision
    properties: dict[str, Any]
    path: str
    country: str

    user_agent: str = ""
    person: str = ""  # set by resolve(): a representative of the actor's person
    person_properties: dict[str, Any] = field(default_factory=dict)  # set by resolve()

    @property
    def actor(self) -> str:
        return self.user_id or self.anonymous_id

    @property
    def bot(self) -> bool:
        return self.user_agent in BOT_AGENTS

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event_id": self.event_id, "event_type": self.event_type,
                               "occurred_at": self.at.isoformat(timespec="milliseconds")}
        if self.user_id:
            out["user_id"] = self.user_id
        if self.anonymous_id:
            out["anonymous_id"] = self.anonymous_id
        if self.session_id:
            out["session_id"] = self.session_id
        if self.properties:
            out["properties"] = self.properties
        context: dict[str, Any] = {}
        if self.country:
            context["country"] = self.country
        if self.path:
            context["page"] = {"path": self.path}
        if self.user_agent:
            context["user_agent"] = self.user_agent
        if context:
            out["context"] = context
        return out


@dataclass(frozen=True)
class Call:
    """An identity call as a client sends it, in ``phase`` (phases are sent in
    order, each persisted before the next), and the link it asks for."""
    phase: int
    path: str
    body: dict[str, Any]
    anonymous_id: str
    user_id: str
    force: bool = False


@dataclass
class Dataset:
    now: datetime
    events: list[Event] = field(default_factory=list)  # unique events
    sent: list[dict[str, Any]] = field(default_factory=list)  # what goes over the wire, duplicates included
    calls: list[Call] = field(default_factory=list)
    late: list[dict[str, Any]] = field(default_factory=list)  # events sent after every call
    traits: dict[str, dict[str, Any]] = field(default_factory=dict)  # person representative -> properties
    roots: dict[str, str] = field(default_factory=dict)  # identifier named by a call -> its person


def _ms(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def build(now: datetime, seed: int = 20261122) -> Dataset:
    rng = random.Random(seed)
    data = Dataset(now=now)
    start_of_today = datetime.combine(now.date(), time(), UTC)

    def add(event_type: str, actor: tuple[str, str], at: datetime, **extra: Any) -> Event:
        props = extra.pop("properties", None)
        if props is None:
            props = {"plan": rng.choice(PLANS), "n": rng.randint(1, 3)} if rng.random() < 0.6 else {}
            if rng.random() < 0.3:  # breakdowns: a null, an empty string, a number and a boolean are values too
                props["ref"] = rng.choice([None, "", "ads", "mail", 7, True])
        event = Event(
            event_id=str(uuid.UUID(int=rng.getrandbits(128))), event_type=event_type,
            user_id=actor[0], anonymous_id=actor[1],
            session_id=extra.pop("session_id", rng.choice(["", f"s-{rng.randint(1, 60)}"])),
            at=_ms(at), properties=props,
            path=extra.pop("path", rng.choice(PATHS) if event_type == "page_view" else ""),
            country=extra.pop("country", rng.choice(COUNTRIES)), user_agent=extra.pop("user_agent", ""))
        data.events.append(event)
        return event

    actors = [(f"u{n}", f"anon-u{n}" if n % 3 == 0 else "") for n in range(40)]
    actors += [("", f"anon-{n}") for n in range(8)]  # anonymous-only visitors
    # Background traffic over ~11 weeks; each actor starts on their own day (retention cohorts).
    for actor in actors:
        first_day = rng.randint(3, 75)
        for _ in range(rng.randint(3, 30)):
            days_ago = rng.randint(1, first_day) if rng.random() < 0.9 else first_day
            at = start_of_today - timedelta(days=days_ago) + timedelta(seconds=rng.randint(0, 86_399),
                                                                       milliseconds=rng.randint(0, 999))
            add(rng.choice(TYPES), actor, at)
        add("page_view", actor, start_of_today - timedelta(days=first_day, seconds=-rng.randint(0, 80_000)))
    # Around midnight in Kyiv (22:00 or 21:00 UTC) and in UTC, ten days ago.
    day = start_of_today - timedelta(days=10)
    kyiv_midnight = datetime.combine(day.date(), time(), ZoneInfo("Europe/Kyiv")).astimezone(UTC)
    for offset_s in (-1800, -1, 0, 1, 1800):
        for base, who in ((kyiv_midnight, actors[1]), (day, actors[2])):
            add("click", who, base + timedelta(seconds=offset_s), properties={"plan": "pro"})
    # Funnels: signup -> activate -> purchase, window 1 hour.
    base = start_of_today - timedelta(days=5, hours=-10)
    for n in range(12):
        who = (f"f{n}", "")
        t0 = base + timedelta(minutes=7 * n)
        add("signup", who, t0, properties={"plan": "pro" if n % 2 else "free"})
        if n < 9:
            add("activate", who, t0 + timedelta(minutes=10 + n))
        if n < 4:  # in window
            add("purchase", who, t0 + timedelta(minutes=30))
        elif n == 4:  # exactly at the window's end: inclusive
            add("purchase", who, t0 + timedelta(hours=1))
        elif n == 5:  # 1 ms after the window
            add("purchase", who, t0 + timedelta(hours=1, milliseconds=1))
        elif n == 6:  # purchase before activate: out of order
            add("purchase", who, t0 + timedelta(minutes=5))
    for n in range(3):  # activate before signup: out of order, reach step 1 only
        who = (f"g{n}", "")
        add("activate", who, base + timedelta(minutes=1))
        add("signup", who, base + timedelta(minutes=2))
    _funnel_modes(add, start_of_today)
    # Today and the last minutes (summary, live).
    for seconds in (20, 40, 100, 170, 230, 500, 900):
        at = now - timedelta(seconds=seconds)
        add(rng.choice(TYPES), rng.choice(actors), at)
    # Bots: a crawler, and a person's browser run headless for a few events (each event is judged alone).
    for _ in range(12):
        at = start_of_today - timedelta(days=rng.randint(1, 60), seconds=-rng.randint(0, 86_000))
        add("page_view", ("", "crawler-1"), at, user_agent=sorted(BOT_AGENTS)[0])
    for n in range(6):
        at = start_of_today - timedelta(days=rng.randint(1, 60), seconds=-rng.randint(0, 86_000))
        add(rng.choice(TYPES), actors[n], at, user_agent=sorted(BOT_AGENTS)[1])
        add(rng.choice(TYPES), actors[n + 6], at, user_agent=HUMAN_AGENT)
    late_events = _persons(data, add, start_of_today)
    plain = [e for e in data.events if not e.event_type.startswith("$")]  # identity events go by their calls
    for event in plain:
        (data.late if event in late_events else data.sent).append(event.payload())
    # Duplicates: the same event_id sent again, later, in another batch.
    for event in rng.sample(plain, 25):
        data.sent.append(event.payload())
    resolve(data)
    return data


def _funnel_modes(add: Any, start_of_today: datetime) -> None:
    """Sequences that tell the funnel orders, exclusions and the counted attempt apart."""
    base = start_of_today - timedelta(days=6, hours=-9)
    minute = timedelta(minutes=1)
    sequences = {
        "m0": ["signup", "click", "activate", "purchase"],  # strict stops at the click
        "m1": ["signup", "activate", "purchase"],  # every order: 3
        "m2": ["purchase", "activate", "signup"],  # any order: 3; ordered: 1
        "m3": ["signup", "support", "activate", "purchase"],  # excluded between steps 1 and 2
        "m4": ["signup", "activate", "support", "purchase"],  # excluded between steps 2 and 3
        "m5": ["signup", "activate"],  # support long after: within from_step + window or not
        "m6": ["signup", "activate"],  # then a second attempt, two hours later, reaches 3
        "m7": ["signup", "signup", "activate", "activate", "purchase"],  # repeats
        "m8": ["activate", "purchase", "click", "signup", "purchase"],  # any order starts at activate
    }
    for n, (who, kinds) in enumerate(sequences.items()):
        at = base + timedelta(minutes=37 * n)
        for k, kind in enumerate(kinds):
            add(kind, (who, ""), at + (k * (k + 3) + n) * minute, path="/pricing" if kind == "page_view" else "")
    add("support", ("m5", ""), base + timedelta(hours=30))
    for k, kind in enumerate(["signup", "activate", "purchase"]):
        add(kind, ("m6", ""), base + timedelta(hours=6, minutes=7 * k))
    # Same millisecond: the order of these two is by event id.
    tie = base + timedelta(hours=8)
    add("signup", ("m9", ""), tie)
    add("activate", ("m9", ""), tie)
    add("purchase", ("m9", ""), tie + 10 * minute)
    add("activate", ("m9", ""), tie + 20 * minute)
    # A day-long window: purchase a day and a half later.
    add("signup", ("m10", ""), base + timedelta(hours=2))
    add("activate", ("m10", ""), base + timedelta(hours=3))
    add("purchase", ("m10", ""), base + timedelta(hours=38))


def _persons(data: Dataset, add: Any, start_of_today: datetime) -> list[Event]:
    """Visitors browse anonymously, sign up, and go on as members; the link is
    sent after all of it, through each client's identity call. Returns the
    events to send after the links (late, out of order)."""
    late = []
    for n in range(10):
        visitor, member = f"visitor-{n}", f"member-{n}"
        start = start_of_today - timedelta(days=40 - 2 * n, hours=-9)
        for k in range(3):
            add("page_view", ("", visitor), start + timedelta(minutes=k), path="/pricing", session_id=f"v{n}")
        add("signup", ("", visitor), start + timedelta(minutes=5), properties={"plan": "pro"})
        linked_at = start + timedelta(minutes=6)
        add("activate", (member, ""), start + timedelta(minutes=20), properties={})
        if n % 2 == 0:
            add("purchase", (member, ""), start + timedelta(minutes=50), properties={})
        for week in range(1, 1 + n % 4):  # later weeks: retention cohorts count the person once
            add("click", (member, ""), start + timedelta(weeks=week), properties={})
        late.append(add("page_view", ("", visitor), start - timedelta(days=7), path="/", session_id=""))
        data.calls.append(_link_call(data, add, n % 4, 1, visitor, member, linked_at, {"plan": f"tier-{n % 3}"}))
    # A chain: chain-a is identified as chain-b, later chain-b is aliased to chain-c.
    base = start_of_today - timedelta(days=12, hours=-8)
    add("page_view", ("", "chain-a"), base, path="/docs")
    add("signup", ("chain-b", ""), base + timedelta(hours=1))
    add("purchase", ("chain-c", ""), base + timedelta(days=8))
    data.calls.append(_link_call(data, add, 0, 1, "chain-a", "chain-b", base + timedelta(minutes=30), {}))
    data.calls.append(_link_call(data, add, 4, 2, "chain-b", "chain-c", base + timedelta(days=8, minutes=-1), {}))
    # Two identified members: a plain identify between them is refused...
    data.calls.append(_link_call(data, add, 0, 2, "member-1", "member-2", base + timedelta(hours=2), {}))
    # ...unless forced ($merge_dangerously).
    data.calls.append(_link_call(data, add, 5, 2, "member-4", "member-3", base + timedelta(hours=3), {}))
    return late


def _link_call(data: Dataset, add: Any, how: int, phase: int, anonymous: str, user: str, at: datetime,
               traits: dict[str, Any]) -> Call:
    """One identity call linking ``anonymous`` to ``user`` (``how``: 0 native,
    1 Segment identify, 2 PostHog $identify, 3 Segment alias, 4 PostHog
    $create_alias, 5 PostHog $merge_dangerously), and the event it stores."""
    at = _ms(at)
    stamp = at.isoformat(timespec="milliseconds")
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{anonymous}->{user}"))
    if how == 0:
        props: dict[str, Any] = {"$set": traits}
        body: dict[str, Any] = {"anonymous_id": anonymous, "user_id": user, "traits": traits,
                                "event_id": event_id, "occurred_at": stamp}
        path, kind, ids = "/v1/identify", "$identify", (user, anonymous)
    elif how == 1:
        props = dict(traits)
        body = {"userId": user, "anonymousId": anonymous, "traits": traits, "messageId": event_id,
                "timestamp": stamp}
        path, kind, ids = "/v1/identify", "$identify", (user, anonymous)
    elif how == 2:
        props = {"$anon_distinct_id": anonymous, "$set": traits}
        body = {"batch": [{"event": "$identify", "distinct_id": user, "properties": props, "uuid": event_id,
                           "timestamp": stamp}]}
        path, kind, ids = "/batch/", "$identify", (user, anonymous)
    elif how == 3:
        props = {"previous_id": anonymous}
        body = {"batch": [{"type": "alias", "previousId": anonymous, "userId": user, "messageId": event_id,
                           "timestamp": stamp}]}
        path, kind, ids = "/v1/batch", "$alias", (user, "")
    else:
        kind = "$create_alias" if how == 4 else "$merge_dangerously"
        props = {"alias": anonymous}
        body = {"batch": [{"event": kind, "distinct_id": user, "properties": props, "uuid": event_id,
                           "timestamp": stamp}]}
        path, ids = "/batch/", (user, "")
    event = add(kind, ids, at, properties=props, path="", country="", session_id="")
    event.event_id = event_id
    return Call(phase, path, body, anonymous, user, force=how == 5)


def resolve(data: Dataset) -> None:
    """Each event's person: a union-find over the calls in phase order, where a
    link between two identified persons is refused unless forced. The
    identified side survives a merge (the user side when both or neither
    are), keeping its properties and taking the other's missing ones; a
    call's traits then overwrite (``$set``)."""
    parent: dict[str, str] = {}
    identified: set[str] = set()
    props: dict[str, dict[str, Any]] = {}

    def root(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for call in sorted(data.calls, key=lambda c: c.phase):
        a, u = root(call.anonymous_id), root(call.user_id)
        if a != u and not (a in identified and u in identified and not call.force):
            keep, gone = (a, u) if a in identified and u not in identified else (u, a)
            parent[gone] = keep
            props[keep] = {**props.pop(gone, {}), **props.get(keep, {})}
            identified.add(keep)
        identified.add(root(call.user_id))
        traits = call.body.get("traits") or (call.body.get("batch") or [{}])[0].get("properties", {}).get("$set")
        if traits:
            props.setdefault(root(call.user_id), {}).update(traits)
    data.traits = props
    data.roots = {x: root(x) for c in data.calls for x in (c.anonymous_id, c.user_id)}
    for event in data.events:
        event.person = root(event.actor)
        event.person_properties = props.get(event.person, {})


def person_of(data: Dataset, identifier: str) -> set[str]:
    """Every identifier (seen in events) of the person ``identifier`` belongs to."""
    mine = {e.person for e in data.events if e.actor == identifier}
    return {e.actor for e in data.events if e.person in mine}


# Filters -------------------------------------------------------------------

def local(moment: datetime, tz: str) -> datetime:
    return moment.astimezone(ZoneInfo(tz))


def day_start(day: date, tz: str) -> datetime:
    return datetime.combine(day, time(), ZoneInfo(tz)).astimezone(UTC)


def matches(event: Event, segments: Iterable[tuple[str, str]]) -> bool:
    for name, value in segments:
        if name.startswith(("properties.", "person.")):
            source = event.person_properties if name.startswith("person.") else event.properties
            key = name.partition(".")[2]
            if key not in source:
                return False
            got = source[key]
            if (got if isinstance(got, str) else str(got)) != value:
                return False
        elif getattr(event, name) != value:
            return False
    return True


def select(data: Dataset, first: date, last: date, tz: str, segments: Iterable[tuple[str, str]] = (),
           event_type: str | None = None, include_bots: bool = False) -> list[Event]:
    start, end = day_start(first, tz), day_start(last + timedelta(days=1), tz)
    segs = list(segments)
    return [e for e in data.events if start <= e.at < end and matches(e, segs)
            and (event_type is None or e.event_type == event_type) and (include_bots or not e.bot)]


# Answers -------------------------------------------------------------------

def bucket(event: Event, group_by: str, tz: str) -> Any:
    moment = local(event.at, tz)
    if group_by == "hour":
        return moment.replace(minute=0, second=0, microsecond=0).isoformat()
    if group_by == "day":
        return moment.date().isoformat()
    if group_by == "week":
        return (moment.date() - timedelta(days=moment.weekday())).isoformat()
    if group_by == "month":
        return moment.date().replace(day=1).isoformat()
    if group_by == "event_type":
        return event.event_type
    key = group_by[len("properties."):]
    if key not in event.properties:
        return None
    value = event.properties[key]
    return value if isinstance(value, str) else str(value)


def events_by(events: list[Event], group_by: str, tz: str) -> list[dict[str, Any]]:
    counts: Counter[Any] = Counter()
    users: dict[Any, set[str]] = defaultdict(set)
    for event in events:
        b = bucket(event, group_by, tz)
        counts[b] += 1
        users[b].add(event.person)
    rows = [{"bucket": b, "events": n, "users": len(users[b])} for b, n in counts.items()]
    if group_by == "hour":  # in time order: 03:00+03:00 comes before 03:00+02:00 when clocks go back
        return sorted(rows, key=lambda r: datetime.fromisoformat(r["bucket"]))
    if group_by in ("day", "week", "month"):
        return sorted(rows, key=lambda r: r["bucket"])
    return sorted(rows, key=lambda r: (-r["events"], r["bucket"] is None, r["bucket"] or ""))


def active(events: list[Event], interval: str, tz: str) -> list[dict[str, Any]]:
    return [{"bucket": r["bucket"], "unique_users": r["users"]} for r in events_by(events, interval, tz)]


def top_events(events: list[Event], limit: int) -> list[dict[str, Any]]:
    rows = events_by(events, "event_type", "UTC")[:limit]
    return [{"event_type": r["bucket"], "count": r["events"], "users": r["users"]} for r in rows]


def pages(events: list[Event], limit: int) -> dict[str, Any]:
    views = [e for e in events if e.event_type == "page_view"]
    counts = Counter(e.path for e in views)
    users: dict[str, set[str]] = defaultdict(set)
    for e in views:
        users[e.path].add(e.person)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return {"total_views": len(views), "unique_users": len({e.person for e in views}),
            "top_paths": [{"path": p, "views": n, "users": len(users[p])} for p, n in top]}


def overview(everything: list[Event], include_bots: bool = False) -> dict[str, Any]:
    """``everything``: the range's events, bots' included."""
    events = everything if include_bots else [e for e in everything if not e.bot]
    return {"events": len(events), "unique_users": len({e.person for e in events}),
            "bot_events_excluded": len(everything) - len(events),
            "unique_event_types": len({e.event_type for e in events}),
            "unique_sessions": len({e.session_id for e in events if e.session_id})}


def user(data: Dataset, actor: str) -> dict[str, Any] | None:
    """The history of the person ``actor`` belongs to."""
    ids = person_of(data, actor)
    mine = [e for e in data.events if e.actor in ids and not e.bot]
    if not mine:
        return None
    counts = Counter(e.event_type for e in mine)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]

    def z(moment: datetime) -> str:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    return {"user_id": actor, "first_seen": z(min(e.at for e in mine)), "last_seen": z(max(e.at for e in mine)),
            "events": len(mine), "top_events": [{"event_type": t, "count": n} for t, n in top]}


def summary(data: Dataset, now: datetime, tz: str) -> dict[str, Any]:
    today = day_start(local(now, tz).date(), tz)
    seen = [e for e in data.events if e.at <= now and not e.bot]
    last5 = [e for e in seen if e.at >= now - timedelta(minutes=5)]
    last1 = [e for e in seen if e.at >= now - timedelta(minutes=1)]
    todays = [e for e in seen if e.at >= today]
    counts = Counter(e.event_type for e in todays)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    return {"events_last_5m": len(last5), "users_last_5m": len({e.person for e in last5}),
            "events_per_second_1m": round(len(last1) / 60, 3), "events_today": len(todays),
            "top_events_today": [{"event_type": t, "count": n} for t, n in top]}


def pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 1) if whole else 0.0


def retention(data: Dataset, start: date, windows: int, tz: str, today: date,
              segments: Iterable[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    segs = list(segments)

    def monday(moment: datetime) -> date:
        d = local(moment, tz).date()
        return d - timedelta(days=d.weekday())

    first_seen: dict[str, datetime] = {}
    humans = [e for e in data.events if not e.bot]
    for e in humans:
        if e.person not in first_seen or e.at < first_seen[e.person]:
            first_seen[e.person] = e.at
    weeks: dict[str, set[date]] = defaultdict(set)
    for e in humans:
        if matches(e, segs):
            weeks[e.person].add(monday(e.at))
    first_week = start - timedelta(days=start.weekday())
    rows = []
    for c in range(windows + 1):
        week = first_week + timedelta(weeks=c)
        if week > today:
            break
        cohort = [a for a, t in first_seen.items() if monday(t) == week and week in weeks[a]]
        row: dict[str, Any] = {"cohort_week": week.isoformat(), "week_0": len(cohort)}
        for k in range(1, windows + 1):
            if week + timedelta(weeks=k) > today:
                break
            target = week + timedelta(weeks=k)
            row[f"week_{k}"] = pct(sum(1 for a in cohort if target in weeks[a]), len(cohort))
        rows.append(row)
    return rows


def funnel(events: list[Event], steps: list[tuple[str, list[tuple[str, str]]]],
           window_s: int) -> dict[str, Any]:
    """The ordered funnel (ClickHouse ``windowFunnel`` semantics); see ``funnel_full``."""
    return funnel_full(events, steps, window_s)


# Breakdowns ------------------------------------------------------------------

NONE, OTHER = "$none", "$other"


def json_text(value: Any) -> str:
    """A property's value as the answer names it: a string as is, anything else
    as compact JSON text (what the stored JSON holds)."""
    if isinstance(value, str):
        return value
    if value is True or value is False:
        return "true" if value else "false"
    return json.dumps(value, separators=(",", ":"))


def field_value(event: Event, name: str) -> str:
    """The event's value of a breakdown field; missing, null and '' are "$none"."""
    if name.startswith(("properties.", "person.")):
        source = event.person_properties if name.startswith("person.") else event.properties
        value = source.get(name.partition(".")[2])
        text = "" if value is None else json_text(value)
    else:
        text = str(getattr(event, name))
    return text or NONE


def values_of(event: Event, fields: list[str]) -> tuple[str, ...]:
    return tuple(field_value(event, f) for f in fields)


def top_values(counts: dict[tuple[str, ...], int], limit: int) -> dict[tuple[str, ...], int]:
    """value -> rank (1-based) of the ``limit`` values with most persons (ties: value ascending)."""
    order = sorted(counts, key=lambda v: (-counts[v], list(v)))[:limit]
    return {v: i + 1 for i, v in enumerate(order)}


def split(events: list[Event], key: Any, fields: list[str], limit: int) -> list[tuple[Any, list[str], int, int, int]]:
    """(key, breakdown, rank, events, users) per key and kept value, the rest as "$other"."""
    persons: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for e in events:
        persons[values_of(e, fields)].add(e.person)
    ranks = top_values({v: len(p) for v, p in persons.items()}, limit)
    other = tuple([OTHER] * len(fields))
    counts: Counter[tuple[Any, tuple[str, ...]]] = Counter()
    users: dict[tuple[Any, tuple[str, ...]], set[str]] = defaultdict(set)
    for e in events:
        value = values_of(e, fields)
        value = value if value in ranks else other
        counts[(key(e), value)] += 1
        users[(key(e), value)].add(e.person)
    return [(k, list(v), ranks.get(v, limit + 1), n, len(users[(k, v)])) for (k, v), n in counts.items()]


def events_split(events: list[Event], group_by: str, tz: str, fields: list[str], limit: int = 10) -> list[dict[str, Any]]:
    rows = split(events, lambda e: bucket(e, group_by, tz), fields, limit)
    if group_by == "hour":
        rows.sort(key=lambda r: (datetime.fromisoformat(r[0]), r[2]))
    elif group_by in ("day", "week", "month"):
        rows.sort(key=lambda r: (r[0], r[2]))
    else:
        totals: Counter[Any] = Counter()
        for r in rows:
            totals[r[0]] += r[3]
        rows.sort(key=lambda r: (-totals[r[0]], r[0] is None, r[0] or "", r[2]))
    return [{"bucket": b, "breakdown": v, "events": n, "users": u} for b, v, _, n, u in rows]


def active_split(events: list[Event], interval: str, tz: str, fields: list[str], limit: int = 10) -> list[dict[str, Any]]:
    return [{"bucket": r["bucket"], "breakdown": r["breakdown"], "unique_users": r["users"]}
            for r in events_split(events, interval, tz, fields, limit)]


def top_events_split(events: list[Event], limit: int, fields: list[str], bd_limit: int = 10) -> list[dict[str, Any]]:
    rows = split(events, lambda e: e.event_type, fields, bd_limit)
    totals: Counter[str] = Counter()
    for r in rows:
        totals[r[0]] += r[3]
    kept = set(sorted(totals, key=lambda t: (-totals[t], t))[:limit])
    rows = sorted((r for r in rows if r[0] in kept), key=lambda r: (-totals[r[0]], r[0], r[2]))
    return [{"event_type": t, "breakdown": v, "count": n, "users": u} for t, v, _, n, u in rows]


def retention_split(data: Dataset, start: date, windows: int, tz: str, today: date, fields: list[str],
                    limit: int = 10, segments: Iterable[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    """Retention per value of the person's first event ever (ties: the smaller
    value) or, for person.<key>, of the person."""
    segs = list(segments)

    def monday(moment: datetime) -> date:
        d = local(moment, tz).date()
        return d - timedelta(days=d.weekday())

    humans = [e for e in data.events if not e.bot]
    first: dict[str, tuple[datetime, tuple[str, ...]]] = {}
    for e in humans:
        mark = (e.at, values_of(e, fields))
        if e.person not in first or (mark[0], list(mark[1])) < (first[e.person][0], list(first[e.person][1])):
            first[e.person] = mark
    weeks: dict[str, set[date]] = defaultdict(set)
    for e in humans:
        if matches(e, segs):
            weeks[e.person].add(monday(e.at))
    first_week = start - timedelta(days=start.weekday())
    last_week = first_week + timedelta(weeks=windows)
    members = {p: (monday(at), v) for p, (at, v) in first.items()
               if first_week <= monday(at) <= last_week and monday(at) in weeks[p]}
    ranks = top_values(Counter(v for _, v in members.values()), limit)
    other = tuple([OTHER] * len(fields))
    rows = []
    for value in [*sorted(ranks, key=ranks.get), other]:
        chosen = {p: cw for p, (cw, v) in members.items() if (v if v in ranks else other) == value}
        if value == other and not chosen:
            continue
        for c in range(windows + 1):
            week = first_week + timedelta(weeks=c)
            if week > today:
                break
            cohort = [p for p, cw in chosen.items() if cw == week]
            row: dict[str, Any] = {"cohort_week": week.isoformat(), "breakdown": list(value), "week_0": len(cohort)}
            for k in range(1, windows + 1):
                target = week + timedelta(weeks=k)
                if target > today:
                    break
                row[f"week_{k}"] = pct(sum(1 for p in cohort if target in weeks[p]), len(cohort))
            rows.append(row)
    return rows


# Funnels, complete -----------------------------------------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HISTOGRAM_S = [0, 10, 60, 300, 1800, 3600, 21_600, 86_400, 259_200, 604_800]


def ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


@dataclass
class Walk:
    level: int
    times: list[int]  # ms of each step reached by the counted attempt
    value: tuple[str, ...] = ()


def funnel_walks(events: list[Event], steps: list[tuple[str, list[tuple[str, str]]]], window_s: int,
                 order: str = "ordered", exclusions: Iterable[tuple[str, int, int]] = (),
                 fields: list[str] | None = None) -> dict[str, Walk]:
    """Each person in the funnel (reached step 1, not excluded): the counted
    attempt (the earliest start among those reaching the highest level).
    Events of one millisecond are taken in the order of the steps they match."""
    n, window = len(steps), window_s * 1000
    exclusions = list(exclusions)
    by_person: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_person[e.person].append(e)

    def is_step(e: Event, k: int) -> bool:
        return e.event_type == steps[k][0] and matches(e, steps[k][1])

    kinds = [kind for kind, _, _ in exclusions]

    def mask(e: Event) -> int:
        """The steps (bit k-1) and exclusions (bit n+j-1) the event matches: events of one millisecond go by it."""
        return sum(1 << k for k in range(n) if is_step(e, k)) + sum(
            1 << (n + j) for j, kind in enumerate(kinds) if e.event_type == kind)

    walks = {}
    for person, mine in by_person.items():
        mine.sort(key=lambda e: (e.at, mask(e)))
        attempts: list[tuple[int, list[int]]] = []
        for i, first in enumerate(mine):
            t0 = ms(first.at)
            if order in ("ordered", "strict") and is_step(first, 0):
                level, times = 1, [t0]
                following = mine[i + 1:] if order == "ordered" else mine[i + 1:i + n]
                for e in following:
                    if level < n and ms(e.at) - t0 <= window and is_step(e, level):
                        level, times = level + 1, times + [ms(e.at)]
                    elif order == "strict":
                        break
                attempts.append((level, times))
            elif order == "any" and any(is_step(first, k) for k in range(n)):
                inside = [e for e in mine[i:] if ms(e.at) - t0 <= window]
                firsts = [next(ms(e.at) for e in inside if is_step(e, k))
                          for k in range(n) if any(is_step(e, k) for e in inside)]
                attempts.append((len(firsts), sorted(firsts)))
        if not attempts:
            continue
        best = max(a[0] for a in attempts)
        level, times = next(a for a in attempts if a[0] == best)
        out = False
        for kind, low, high in exclusions:
            if level >= low:
                until = times[high - 1] if level >= high else times[low - 1] + window
                out = out or any(e.event_type == kind and times[low - 1] < ms(e.at) < until for e in mine)
        if out:
            continue
        value: tuple[str, ...] = ()
        if fields:
            can_start = [e for e in mine if (is_step(e, 0) if order != "any" else any(is_step(e, k) for k in range(n)))]
            value = min(((e.at, list(values_of(e, fields))) for e in can_start))[1]
            value = tuple(value)
        walks[person] = Walk(level, times, value)
    return walks


def funnel_steps(walks: Iterable[Walk], steps: list[tuple[str, list[tuple[str, str]]]],
                 extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    walks = list(walks)
    users = [sum(1 for w in walks if w.level >= k + 1) for k in range(len(steps))]
    rows = []
    for k in range(len(steps)):
        row: dict[str, Any] = {"event_type": steps[k][0], **(extra or {}), "users": users[k],
                               "conversion_from_start": 100.0 if k == 0 else pct(users[k], users[0]),
                               "conversion_from_previous": 100.0 if k == 0 else pct(users[k], users[k - 1]),
                               "median_seconds_to_convert": None, "mean_seconds_to_convert": None,
                               "seconds_to_convert_histogram": None}
        if k > 0:
            took = [w.times[k] - w.times[k - 1] for w in walks if w.level >= k + 1]
            if took:
                row["median_seconds_to_convert"] = round(statistics.median(took) / 1000, 3)
                row["mean_seconds_to_convert"] = round(sum(took) / len(took) / 1000, 3)
            edges = [*HISTOGRAM_S, None]
            row["seconds_to_convert_histogram"] = [
                {"from_seconds": lo, "to_seconds": hi,
                 "users": sum(1 for d in took if d >= lo * 1000 and (hi is None or d < hi * 1000))}
                for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
        rows.append(row)
    return rows


def funnel_full(events: list[Event], steps: list[tuple[str, list[tuple[str, str]]]], window_s: int,
                order: str = "ordered", exclusions: Iterable[tuple[str, int, int]] = (),
                fields: list[str] | None = None, limit: int = 10) -> dict[str, Any]:
    walks = funnel_walks(events, steps, window_s, order, exclusions, fields)
    if not fields:
        return {"steps": funnel_steps(walks.values(), steps)}
    ranks = top_values(Counter(w.value for w in walks.values()), limit)
    other = tuple([OTHER] * len(fields))
    out = []
    for value in [*sorted(ranks, key=ranks.get), other]:
        chosen = [w for w in walks.values() if (w.value if w.value in ranks else other) == value]
        if chosen:
            out += funnel_steps(chosen, steps, {"breakdown": list(value)})
    return {"steps": out}


def funnel_people(data: Dataset, project_id: str, walks: dict[str, Walk], step: int, status: str,
                  value: tuple[str, ...] | None = None, ranks: dict[tuple[str, ...], int] | None = None
                  ) -> list[dict[str, Any]]:
    """The persons converted at ``step`` (or dropped there), as {person_id, distinct_ids}, sorted by person_id."""
    other = tuple([OTHER] * len(value)) if value else ()

    def kept(w: Walk) -> bool:
        if value is None:
            return True
        return (w.value if ranks and w.value in ranks else other) == value

    chosen = [p for p, w in walks.items() if kept(w) and (w.level >= step if status == "converted" else w.level == step - 1)]
    return sorted(({"person_id": str(uuid.uuid5(uuid.UUID(project_id), p)),
                    "distinct_ids": sorted(distinct_ids(data, p))} for p in chosen), key=lambda r: r["person_id"])


def distinct_ids(data: Dataset, person: str) -> set[str]:
    """Every identifier of the person: in its events and in the identity calls that linked it."""
    named = {e.actor for e in data.events} | {c.anonymous_id for c in data.calls} | {c.user_id for c in data.calls}
    return {x for x in named if _root(data, x) == person}


def _root(data: Dataset, identifier: str) -> str:
    for e in data.events:
        if e.actor == identifier:
            return e.person
    return data.roots.get(identifier, identifier)


# Paths, stickiness, lifecycle --------------------------------------------------

def paths(events: list[Event], anchor: str, forward: bool = True, steps: int = 3, min_users: int = 1,
          pages: bool = False) -> dict[str, Any]:
    by_person: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_person[e.person].append(e)

    def name(e: Event) -> tuple[str, str]:
        return (e.event_type, e.path if pages and e.event_type == "page_view" else "")

    def is_anchor(e: Event) -> bool:
        return e.event_type == anchor or (pages and e.event_type == "page_view" and e.path == anchor)

    def node_id(step: int, n: tuple[str, str]) -> str:
        return f"{step}:{n[1] or n[0]}"

    node_users: Counter[tuple[int, tuple[str, str]]] = Counter()
    node_events: Counter[tuple[int, tuple[str, str]]] = Counter()
    edge_users: Counter[tuple[str, str]] = Counter()
    def order(e: Event) -> tuple[Any, ...]:  # time, then name: event types before page paths
        n = name(e)
        return (e.at, 1, n[1]) if n[1] else (e.at, 0, n[0])

    for mine in by_person.values():
        mine.sort(key=order)
        marks = [i for i, e in enumerate(mine) if is_anchor(e)]
        if not marks:
            continue
        seq = [name(e) for e in (mine[marks[0]:] if forward else reversed(mine[:marks[-1] + 1]))]
        runs: list[list[Any]] = []
        for n in seq:
            if runs and runs[-1][0] == n:
                runs[-1][1] += 1
            else:
                runs.append([n, 1])
        runs = runs[:steps + 1]
        sign = 1 if forward else -1
        for k, (n, count) in enumerate(runs):
            node_users[(sign * k, n)] += 1
            node_events[(sign * k, n)] += count
        for k in range(len(runs) - 1):
            here, there = (sign * k, runs[k][0]), (sign * (k + 1), runs[k + 1][0])
            edge_users[(node_id(*here), node_id(*there)) if forward else (node_id(*there), node_id(*here))] += 1
    nodes = []
    for (step, n), users in node_users.items():
        if users >= min_users:
            node: dict[str, Any] = {"id": node_id(step, n), "step": step, "event_type": n[0], "users": users,
                                    "events": node_events[(step, n)]}
            if pages:
                node["path"] = n[1] or None
            nodes.append(node)
    step_of = {n["id"]: n["step"] for n in nodes}
    nodes.sort(key=lambda n: (n["step"], -n["users"], n["id"]))
    edges = sorted(({"from": a, "to": b, "users": u} for (a, b), u in edge_users.items() if u >= min_users),
                   key=lambda e: (step_of[e["from"]], -e["users"], e["from"], e["to"]))
    return {"nodes": nodes, "edges": edges}


def bucket_day(moment: datetime, interval: str, tz: str) -> date:
    d = local(moment, tz).date()
    if interval == "week":
        return d - timedelta(days=d.weekday())
    return d.replace(day=1) if interval == "month" else d


def stickiness(events: list[Event], interval: str, tz: str) -> list[dict[str, Any]]:
    active: dict[str, set[date]] = defaultdict(set)
    for e in events:
        active[e.person].add(bucket_day(e.at, interval, tz))
    counts = Counter(len(b) for b in active.values())
    return [{"intervals": n, "users": counts[n]} for n in sorted(counts)]


def lifecycle(data: Dataset, first: date, last: date, interval: str, tz: str,
              segments: Iterable[tuple[str, str]] = (), event_type: str | None = None) -> list[dict[str, Any]]:
    """Every bucket from first's to last's; history before the range counts."""
    segs = list(segments)
    kept = [e for e in data.events if not e.bot and matches(e, segs) and (event_type is None or e.event_type == event_type)]
    active: dict[str, set[date]] = defaultdict(set)
    for e in kept:
        active[e.person].add(bucket_day(e.at, interval, tz))

    def shift(d: date, n: int) -> date:
        if interval == "day":
            return d + timedelta(days=n)
        if interval == "week":
            return d + timedelta(weeks=n)
        months = d.year * 12 + d.month - 1 + n
        return date(months // 12, months % 12 + 1, 1)

    def bucket_of(d: date) -> date:
        return d - timedelta(days=d.weekday()) if interval == "week" else d.replace(day=1) if interval == "month" else d

    rows = []
    b, end = bucket_of(first), bucket_of(last)
    while b <= end:
        before = shift(b, -1)
        row = {"bucket": b.isoformat(), "new": 0, "returning": 0, "resurrecting": 0, "dormant": 0}
        for buckets in active.values():
            if b in buckets:
                kind = "new" if min(buckets) == b else "returning" if before in buckets else "resurrecting"
                row[kind] += 1
            elif before in buckets:
                row["dormant"] += 1
        rows.append(row)
        b = shift(b, 1)
    return rows


# Cohorts ---------------------------------------------------------------------

def person_of_id(data: Dataset, identifier: str) -> str:
    return _root(data, identifier)


def static_cohort(data: Dataset, identifiers: Iterable[str]) -> set[str]:
    return {person_of_id(data, x) for x in identifiers}


def behavioural_cohort(data: Dataset, now: datetime, event_type: str, min_count: int, days: int,
                       segments: Iterable[tuple[str, str]] = (), negate: bool = False) -> set[str]:
    """Persons with at least ``min_count`` such events in the ``days`` up to ``now``
    (negated: every other person)."""
    segs = list(segments)
    counts = Counter(e.person for e in data.events if not e.bot and e.event_type == event_type
                     and now - timedelta(days=days) <= e.at <= now and matches(e, segs))
    did = {p for p, n in counts.items() if n >= min_count}
    return {e.person for e in data.events} - did if negate else did


def within(data: Dataset, persons: set[str]) -> Dataset:
    """The dataset with only these persons' events (every one of them: history included)."""
    return Dataset(now=data.now, events=[e for e in data.events if e.person in persons], calls=data.calls,
                   traits=data.traits, roots=data.roots)
