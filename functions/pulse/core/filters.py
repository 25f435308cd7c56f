"""The filters every stats and export endpoint takes: ``from``, ``to``, ``tz``,
repeatable ``segment=<field>:<value>`` (ANDed; ``person.<key>`` matches the
person's properties, pulse.core.persons). Pure: request parameters in,
a ``Filters`` value and a bound-parameter SQL condition out. A cohort
(``cohort=<id>``, pulse.core.cohorts) is loaded by the caller and carried in
``Filters.cohort``: ``condition`` ANDs its term with the segments, so every
query built from the filters keeps only its persons.

Ranges: ``from``/``to`` are inclusive dates (``YYYY-MM-DD``, day boundaries
in ``tz``) or RFC 3339 datetimes. Without ``to`` the range ends today (in
``tz``); without ``from`` it covers the 30 days up to ``to``.

Every date lies from ``FIRST_DAY`` to ``LAST_DAY`` (events are never older
than 1970, and every instant of that span, in any zone, is one ClickHouse's
time types hold), and ``tz`` is one of the zones both Python and ClickHouse
know (the IANA names of ``zoneinfo.available_timezones``, so not ``right/…``,
``posix/…`` or ``localtime``). Text values hold no NUL character, which
Postgres cannot store (an async export keeps its filters there).
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pulse.core.persons import PERSON
from pulse.errors import FieldError, InvalidInput

DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
PROPERTY_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SEGMENT_COLUMNS = {
    "event_type": "event_type",
    "user_id": "user_id",
    "session_id": "session_id",
    "path": "path",
    "country": "country",
}
MAX_SEGMENTS = 10
MAX_SEGMENT_VALUE_CHARS = 1024
DEFAULT_DAYS = 30
FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date(2099, 12, 31)
DAY_RANGE = f"from {FIRST_DAY} to {LAST_DAY}"


@dataclass(frozen=True)
class Segment:
    field: str
    value: str


class PersonSet(Protocol):
    """A set of persons a query keeps (a cohort, pulse.core.cohorts): its SQL
    term over a table with ``project_id`` and ``actor_key``, ANDed with the
    other filters, and the term's bound parameters."""

    def term(self, prefix: str, project_param: str) -> tuple[str, dict[str, Any]]: ...


@dataclass(frozen=True)
class Filters:
    project_id: str
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    tz: str
    segments: tuple[Segment, ...] = ()
    event_type: str | None = None
    include_bots: bool = False  # events of known bots (pulse.core.bots) are left out unless asked
    cohort: PersonSet | None = None  # only these persons' rows (``cohort=<id>``)

    @property
    def first_day(self) -> date:
        return self.start.astimezone(ZoneInfo(self.tz)).date()

    @property
    def last_day(self) -> date:
        return (self.end - timedelta(milliseconds=1)).astimezone(ZoneInfo(self.tz)).date()


Params = Mapping[str, Sequence[str]]


def one(params: Params, name: str) -> str | None:
    values = params.get(name) or []
    if len(values) > 1:
        raise InvalidInput.field(name, "may be given once")
    return values[0] if values else None


@functools.cache
def known_zones() -> frozenset[str]:
    """IANA zone names Python and ClickHouse share (``localtime`` is this host's, not a name)."""
    return frozenset(zoneinfo.available_timezones() - {"localtime"})


def parse_tz(value: str | None) -> str:
    name = value or "UTC"
    if len(name) > 64 or name not in known_zones():
        raise InvalidInput.field("tz", f"{name[:64]!r} is not an IANA time zone name")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidInput.field("tz", f"{name!r} is not an IANA time zone name") from exc
    return name


def parse_day(value: str, name: str) -> date:
    if not DATE.match(value):
        raise InvalidInput.field(name, "must be a date YYYY-MM-DD")
    try:
        day = date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput.field(name, "must be a date YYYY-MM-DD") from exc
    if not FIRST_DAY <= day <= LAST_DAY:
        raise InvalidInput.field(name, f"must be a date {DAY_RANGE}")
    return day


def _bound(value: str, name: str, zone: ZoneInfo, is_end: bool) -> datetime:
    if DATE.match(value):
        day = parse_day(value, name)
        if is_end:
            day += timedelta(days=1)
        return datetime.combine(day, time(), zone).astimezone(UTC)
    if len(value) > 40:
        raise InvalidInput.field(name, "must be a date or an RFC 3339 datetime")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput.field(name, "must be a date YYYY-MM-DD or an RFC 3339 datetime") from exc
    if not FIRST_DAY <= moment.date() <= LAST_DAY:  # checked before any zone arithmetic can overflow
        raise InvalidInput.field(name, f"must be a time {DAY_RANGE}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    moment = moment.astimezone(UTC)
    return moment + timedelta(milliseconds=1) if is_end else moment


def check_text(name: str, value: str) -> str:
    """A filter's text value: no NUL (Postgres cannot hold one, and no event needs it)."""
    if "\x00" in value:
        raise InvalidInput.field(name, "must not contain NUL characters")
    return value


def parse_segments(values: Sequence[str]) -> tuple[Segment, ...]:
    if len(values) > MAX_SEGMENTS:
        raise InvalidInput.field("segment", f"at most {MAX_SEGMENTS} segments")
    segments = []
    errors = []
    for raw in values:
        field, sep, value = raw.partition(":")
        if not sep:
            errors.append(FieldError("segment", f"{raw[:80]!r} must be <field>:<value>"))
        elif field.startswith(("properties.", "person.")):
            if not PROPERTY_KEY.match(field.partition(".")[2]):
                errors.append(FieldError("segment", "a property key must match [A-Za-z0-9_.-]{1,64}"))
        elif field not in SEGMENT_COLUMNS:
            errors.append(FieldError(
                "segment", f"unknown field {field[:80]!r}; use one of "
                + ", ".join(SEGMENT_COLUMNS) + ", properties.<key> or person.<key>"))
        if sep and len(value) > MAX_SEGMENT_VALUE_CHARS:
            errors.append(FieldError("segment", f"a value must be at most {MAX_SEGMENT_VALUE_CHARS} characters"))
        if "\x00" in raw:
            errors.append(FieldError("segment", "must not contain NUL characters"))
        segments.append(Segment(field, value))
    if errors:
        raise InvalidInput(errors[0].message and f"segment: {errors[0].message}", errors)
    return tuple(segments)


def parse_filters(params: Params, project_id: str, max_range_days: int,
                  now: datetime | None = None) -> Filters:
    tz = parse_tz(one(params, "tz"))
    zone = ZoneInfo(tz)
    now = now or datetime.now(UTC)
    to_raw, from_raw = one(params, "to"), one(params, "from")
    if to_raw and from_raw:  # both bounds' errors at once
        errors = []
        for raw, name, is_end in ((from_raw, "from", False), (to_raw, "to", True)):
            try:
                _bound(raw, name, zone, is_end)
            except InvalidInput as exc:
                errors += exc.errors
        if errors:
            raise InvalidInput("; ".join(f"{e.field}: {e.message}" for e in errors), errors)
    end = _bound(to_raw, "to", zone, True) if to_raw else _bound(
        now.astimezone(zone).date().isoformat(), "to", zone, True)
    if from_raw:
        start = _bound(from_raw, "from", zone, False)
    else:
        last_day = (end - timedelta(milliseconds=1)).astimezone(zone).date()
        first_day = max(FIRST_DAY, last_day - timedelta(days=DEFAULT_DAYS - 1))
        start = _bound(first_day.isoformat(), "from", zone, False)
    if start >= end:
        raise InvalidInput.field("from", "must not be after 'to'")
    if end - start > timedelta(days=max_range_days + 1):
        raise InvalidInput.field("to", f"the range may span at most {max_range_days} days")
    event_type = one(params, "event_type")
    if event_type is not None and not 1 <= len(check_text("event_type", event_type)) <= 128:
        raise InvalidInput.field("event_type", "must be 1 to 128 characters")
    bots = (one(params, "include_bots") or "false").lower()
    if bots not in ("true", "false"):
        raise InvalidInput.field("include_bots", "must be true or false")
    return Filters(project_id, start, end, tz, parse_segments(params.get("segment") or []), event_type,
                   bots == "true")


def condition(filters: Filters, prefix: str = "f",
              time_column: str | None = "occurred_at") -> tuple[str, dict[str, Any]]:
    """``WHERE`` text over the events table (or a rollup with the same
    columns, whose time column is named; ``None`` for one without, where the
    range is applied otherwise) and its bound parameters. Every value,
    property keys included, is a parameter; only fixed column names from
    ``SEGMENT_COLUMNS`` appear in the text. Over the events table (time column
    ``occurred_at``) bots are left out unless ``include_bots``; the rollups
    hold none. A cohort adds its term (it needs ``actor_key``: the events
    table, or a rollup kept per actor)."""
    params: dict[str, Any] = {
        f"{prefix}_project": filters.project_id,
        f"{prefix}_start": filters.start.replace(tzinfo=None),
        f"{prefix}_end": filters.end.replace(tzinfo=None),
    }
    parts = [f"project_id = {{{prefix}_project:UUID}}"]
    if time_column is not None:
        parts += [f"{time_column} >= {{{prefix}_start:DateTime64(3, 'UTC')}}",
                  f"{time_column} < {{{prefix}_end:DateTime64(3, 'UTC')}}"]
    if time_column == "occurred_at" and not filters.include_bots:
        parts.append("bot = 0")
    if filters.event_type is not None:
        params[f"{prefix}_type"] = filters.event_type
        parts.append(f"event_type = {{{prefix}_type:String}}")
    segment_parts, segment_params = segment_condition(filters.segments, prefix, f"{prefix}_project")
    params.update(segment_params)
    if filters.cohort is not None:
        term, cohort_params = filters.cohort.term(f"{prefix}_c", f"{prefix}_project")
        segment_parts.append(term)
        params.update(cohort_params)
    return " AND ".join(parts + segment_parts), params


def segment_condition(segments: Sequence[Segment], prefix: str,
                      project_param: str = "f_project") -> tuple[list[str], dict[str, Any]]:
    """One SQL term per segment (to be ANDed) and their bound parameters.
    ``project_param`` names the bound project id (person segments read the
    project's person properties)."""
    parts: list[str] = []
    params: dict[str, Any] = {}
    for index, segment in enumerate(segments):
        value = f"{prefix}_sv{index}"
        params[value] = segment.value
        if segment.field.startswith(("properties.", "person.")):
            key = f"{prefix}_sk{index}"
            params[key] = segment.field.partition(".")[2]
            matches = (f"(JSONExtractString(properties, {{{key}:String}}) = {{{value}:String}}"
                       f" OR JSONExtractRaw(properties, {{{key}:String}}) = {{{value}:String}})")
            if segment.field.startswith("person."):
                matches = (f"{PERSON} IN (SELECT person_key FROM person_properties FINAL"
                           f" WHERE project_id = {{{project_param}:UUID}} AND {matches})")
            parts.append(matches)
        else:
            parts.append(f"{SEGMENT_COLUMNS[segment.field]} = {{{value}:String}}")
    return parts, params
