"""A seeded event set for the stats tests, and every stats answer computed in
plain Python over it: independent of the SQL under test."""

from __future__ import annotations

import random
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

    @property
    def actor(self) -> str:
        return self.user_id or self.anonymous_id

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
        if context:
            out["context"] = context
        return out


@dataclass
class Dataset:
    now: datetime
    events: list[Event] = field(default_factory=list)  # unique events
    sent: list[dict[str, Any]] = field(default_factory=list)  # what goes over the wire, duplicates included


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
        event = Event(
            event_id=str(uuid.UUID(int=rng.getrandbits(128))), event_type=event_type,
            user_id=actor[0], anonymous_id=actor[1],
            session_id=extra.pop("session_id", rng.choice(["", f"s-{rng.randint(1, 60)}"])),
            at=_ms(at), properties=props,
            path=extra.pop("path", rng.choice(PATHS) if event_type == "page_view" else ""),
            country=extra.pop("country", rng.choice(COUNTRIES)))
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
    # Today and the last minutes (summary, live).
    for seconds in (20, 40, 100, 170, 230, 500, 900):
        at = now - timedelta(seconds=seconds)
        add(rng.choice(TYPES), rng.choice(actors), at)
    for event in data.events:
        data.sent.append(event.payload())
    # Duplicates: the same event_id sent again, later, in another batch.
    for event in rng.sample(data.events, 25):
        data.sent.append(event.payload())
    return data


# Filters -------------------------------------------------------------------

def local(moment: datetime, tz: str) -> datetime:
    return moment.astimezone(ZoneInfo(tz))


def day_start(day: date, tz: str) -> datetime:
    return datetime.combine(day, time(), ZoneInfo(tz)).astimezone(UTC)


def matches(event: Event, segments: Iterable[tuple[str, str]]) -> bool:
    for name, value in segments:
        if name.startswith("properties."):
            key = name[len("properties."):]
            if key not in event.properties:
                return False
            got = event.properties[key]
            if (got if isinstance(got, str) else str(got)) != value:
                return False
        elif getattr(event, name) != value:
            return False
    return True


def select(data: Dataset, first: date, last: date, tz: str, segments: Iterable[tuple[str, str]] = (),
           event_type: str | None = None) -> list[Event]:
    start, end = day_start(first, tz), day_start(last + timedelta(days=1), tz)
    segs = list(segments)
    return [e for e in data.events if start <= e.at < end and matches(e, segs)
            and (event_type is None or e.event_type == event_type)]


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
        users[b].add(event.actor)
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
        users[e.path].add(e.actor)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return {"total_views": len(views), "unique_users": len({e.actor for e in views}),
            "top_paths": [{"path": p, "views": n, "users": len(users[p])} for p, n in top]}


def overview(events: list[Event]) -> dict[str, Any]:
    return {"events": len(events), "unique_users": len({e.actor for e in events}),
            "unique_event_types": len({e.event_type for e in events}),
            "unique_sessions": len({e.session_id for e in events if e.session_id})}


def user(data: Dataset, actor: str) -> dict[str, Any] | None:
    mine = [e for e in data.events if e.actor == actor]
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
    seen = [e for e in data.events if e.at <= now]
    last5 = [e for e in seen if e.at >= now - timedelta(minutes=5)]
    last1 = [e for e in seen if e.at >= now - timedelta(minutes=1)]
    todays = [e for e in seen if e.at >= today]
    counts = Counter(e.event_type for e in todays)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    return {"events_last_5m": len(last5), "users_last_5m": len({e.actor for e in last5}),
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
    for e in data.events:
        if e.actor not in first_seen or e.at < first_seen[e.actor]:
            first_seen[e.actor] = e.at
    weeks: dict[str, set[date]] = defaultdict(set)
    for e in data.events:
        if matches(e, segs):
            weeks[e.actor].add(monday(e.at))
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
    by_actor: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_actor[e.actor].append(e)
    window = timedelta(seconds=window_s)

    def is_step(e: Event, k: int) -> bool:
        return e.event_type == steps[k][0] and matches(e, steps[k][1])

    reached: Counter[int] = Counter()
    for mine in by_actor.values():
        mine.sort(key=lambda e: e.at)
        best = 0
        for i, first in enumerate(mine):
            if not is_step(first, 0):
                continue
            level, last = 1, first.at
            for e in mine[i + 1:]:
                if e.at - first.at > window or level == len(steps):
                    break
                if e.at >= last and is_step(e, level):
                    level, last = level + 1, e.at
            best = max(best, level)
        for k in range(1, best + 1):
            reached[k] += 1
    users = [reached[k] for k in range(1, len(steps) + 1)]
    return {"steps": [{"event_type": steps[k][0], "users": users[k],
                       "conversion_from_start": 100.0 if k == 0 else pct(users[k], users[0]),
                       "conversion_from_previous": 100.0 if k == 0 else pct(users[k], users[k - 1])}
                      for k in range(len(steps))]}
