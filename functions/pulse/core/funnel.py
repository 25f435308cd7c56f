"""Funnels with ClickHouse ``windowFunnel`` semantics.

A user (a person, pulse.core.persons: their events under every linked
identifier, in time order) reaches step k when they did steps 1..k in that order, step k within
``window_seconds`` (inclusive) of their step-1 event. Only events inside the
range (``from``..``to``) and matching the funnel's segments count; a step may
add its own segments. Conversions are percentages rounded to 1 decimal; step
1's are 100.0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pulse.core.filters import (
    Filters,
    Segment,
    check_text,
    condition,
    parse_filters,
    parse_segments,
    segment_condition,
)
from pulse.core.persons import resolver
from pulse.core.stats import percent, query
from pulse.errors import FieldError, InvalidInput
from pulse.storage.clickhouse import ClickHouse

MIN_STEPS = 2
MAX_STEPS = 10
DEFAULT_WINDOW_S = 86_400
MAX_WINDOW_S = 90 * 86_400
BODY_KEYS = {"steps", "window_seconds", "from", "to", "tz", "segment", "include_bots"}


@dataclass(frozen=True)
class Step:
    event_type: str
    segments: tuple[Segment, ...] = ()


@dataclass(frozen=True)
class Funnel:
    steps: tuple[Step, ...]
    window_seconds: int
    filters: Filters


def parse_funnel(body: Any, project_id: str, max_range_days: int) -> Funnel:
    if not isinstance(body, Mapping):
        raise InvalidInput.field("body", "must be a JSON object")
    unknown = sorted(set(body) - BODY_KEYS)
    if unknown:
        raise InvalidInput.field(str(unknown[0])[:64], "is not a funnel field")
    params: dict[str, list[str]] = {}
    for name in ("from", "to", "tz"):
        value = body.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise InvalidInput.field(name, "must be a string")
            params[name] = [value]
    params["segment"] = _strings(body.get("segment"), "segment")
    bots = body.get("include_bots", False)
    if not isinstance(bots, bool):
        raise InvalidInput.field("include_bots", "must be true or false")
    params["include_bots"] = ["true" if bots else "false"]
    filters = parse_filters(params, project_id, max_range_days)

    window = body.get("window_seconds", DEFAULT_WINDOW_S)
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW_S:
        raise InvalidInput.field("window_seconds", f"must be an integer from 1 to {MAX_WINDOW_S}")

    raw_steps = body.get("steps")
    if not isinstance(raw_steps, list) or not MIN_STEPS <= len(raw_steps) <= MAX_STEPS:
        raise InvalidInput.field("steps", f"must be a list of {MIN_STEPS} to {MAX_STEPS} steps")
    steps: list[Step] = []
    errors: list[FieldError] = []
    for index, raw in enumerate(raw_steps):
        try:
            steps.append(_step(raw, index))
        except InvalidInput as exc:
            errors.extend(FieldError(e.field, e.message, index) for e in exc.errors)
    if errors:
        raise InvalidInput(f"{errors[0].field}: {errors[0].message}", errors)
    return Funnel(tuple(steps), window, filters)


def _strings(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput.field(name, "must be a list of '<field>:<value>' strings")
    return value


def _step(raw: Any, index: int) -> Step:
    name = f"steps[{index}]"
    if isinstance(raw, str):
        raw = {"event_type": raw}
    if not isinstance(raw, Mapping) or set(raw) - {"event_type", "segment"}:
        raise InvalidInput.field(name, "must be an event type or {event_type, segment}")
    event_type = raw.get("event_type")
    if not isinstance(event_type, str) or not 1 <= len(check_text(f"{name}.event_type", event_type)) <= 128:
        raise InvalidInput.field(f"{name}.event_type", "must be 1 to 128 characters")
    try:
        segments = parse_segments(_strings(raw.get("segment"), f"{name}.segment"))
    except InvalidInput as exc:
        raise InvalidInput.field(f"{name}.segment", exc.errors[0].message if exc.errors else exc.detail) from exc
    return Step(event_type, segments)


def funnel(ch: ClickHouse, spec: Funnel) -> dict[str, Any]:
    where, params = condition(spec.filters)
    terms = []
    for index, step in enumerate(spec.steps):
        params[f"t{index}"] = step.event_type
        parts, extra = segment_condition(step.segments, f"s{index}")
        params.update(extra)
        terms.append(" AND ".join([f"event_type = {{t{index}:String}}", *parts]))
    params["window"] = spec.window_seconds * 1000
    conditions = ", ".join(f"({t})" for t in terms)
    who = resolver(ch, spec.filters.project_id)
    rows = query("funnel", ch, f"""
        SELECT level, count() FROM (
            SELECT windowFunnel({{window:UInt64}})(toUInt64(toUnixTimestamp64Milli(occurred_at)), {conditions})
                   AS level
            FROM events WHERE {where} AND ({" OR ".join(f"({t})" for t in terms)})
            GROUP BY {who.key}
        ) WHERE level > 0 GROUP BY level""", params)
    reached = {int(level): int(n) for level, n in rows}
    users = [sum(n for level, n in reached.items() if level >= k) for k in range(1, len(spec.steps) + 1)]
    out = []
    for k, step in enumerate(spec.steps):
        out.append({
            "event_type": step.event_type,
            "users": users[k],
            "conversion_from_start": 100.0 if k == 0 else percent(users[k], users[0]),
            "conversion_from_previous": 100.0 if k == 0 else percent(users[k], users[k - 1]),
        })
    return {"steps": out}
