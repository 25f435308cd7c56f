"""Funnels: ordered, strict or in any order, with exclusion steps, a
conversion window, time to convert, breakdowns, and the persons at a step.

What counts
    A person's events (pulse.core.persons: every linked identifier's) inside
    the range (``from``..``to``) that match the funnel's segments and cohort,
    bots left out, in time order (ties: by ``event_id`` as text). An event is
    step k's when it has step k's type and matches step k's own segments; an
    event may match several steps.

Attempts and levels (``window``: inclusive, milliseconds)
    - ``ordered``: an attempt starts at any step-1 event; each later event in
      the window that is the next step advances it (the earliest such event
      each time). The person reaches step k when an attempt reaches k.
    - ``strict``: the same, except that the event right after a step must be
      the next step: any other event ends the attempt.
    - ``any``: an attempt starts at any event of any step; it reaches as many
      steps as the distinct steps its events match from there to the end of
      the window. "Step k" counts persons who did at least k distinct steps.
    A person's *counted attempt* is the first (earliest start) among those
    reaching their highest level; its step times ``t1 <= t2 <= ...`` (for
    ``any``, the first time each matched step occurs, in time order) give the
    time to convert and bound the exclusions.

Exclusions (PostHog's semantics)
    ``{event_type, from_step, to_step}`` (steps numbered from 1): a person
    whose counted attempt reached ``from_step`` and who has an event of that
    type strictly after its ``from_step`` time and strictly before its
    ``to_step`` time (or, when it did not reach ``to_step``, before
    ``from_step``'s time plus the window) is left out of the whole funnel.

Time to convert, per step k >= 2, over the persons who reached step k:
    ``t_k - t_(k-1)`` of the counted attempt, in seconds: the median (the mean
    of the two middle values for an even count), the mean, both rounded to
    the millisecond, and a histogram over fixed bins (``HISTOGRAM_EDGES_S``).

Breakdowns (pulse.core.breakdowns, person-level): a person's value is that
of their first event that can start an attempt (ties: the smaller value), or
their own for ``person.<key>``; each value has its own steps.

The persons at a step (``people``): ``converted`` at step k reached it;
``dropped`` at step k (k >= 2) reached step k-1 but not k. Ordered by the
counted attempt's start, then the person key.

Cost: a person's events are read, sorted, and passed over a few times per
step (filling each step's next time backwards from the end); every attempt's
level then comes from those passes, so the work grows with the events, not
with the events times the attempts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pulse.core import breakdowns
from pulse.core.breakdowns import Breakdown
from pulse.core.filters import (
    Filters,
    Segment,
    check_text,
    condition,
    parse_filters,
    parse_segments,
    segment_condition,
)
from pulse.core.persons import Resolver, resolver
from pulse.core.stats import percent, query
from pulse.errors import FieldError, InvalidInput
from pulse.storage.clickhouse import ClickHouse

MIN_STEPS = 2
MAX_STEPS = 10
MAX_EXCLUSIONS = 5
DEFAULT_WINDOW_S = 86_400
MAX_WINDOW_S = 90 * 86_400
ORDERS = ("ordered", "strict", "any")
UNITS = {"minute": 60, "hour": 3600, "day": 86_400}
HISTOGRAM_EDGES_S = (0, 10, 60, 300, 1800, 3600, 21_600, 86_400, 259_200, 604_800)
BODY_KEYS = {"steps", "window_seconds", "window", "order", "exclusions", "breakdown", "breakdown_limit", "cohort",
             "from", "to", "tz", "segment", "include_bots"}
PEOPLE_KEYS = {"step", "status", "breakdown_value", "limit", "offset"}
STATUSES = ("converted", "dropped")
DEFAULT_PEOPLE = 100
MAX_PEOPLE = 1000
MAX_OFFSET = 1_000_000


@dataclass(frozen=True)
class Step:
    event_type: str
    segments: tuple[Segment, ...] = ()


@dataclass(frozen=True)
class Exclusion:
    event_type: str
    from_step: int  # 1-based
    to_step: int


@dataclass(frozen=True)
class Funnel:
    steps: tuple[Step, ...]
    window_seconds: int
    filters: Filters
    order: str = "ordered"
    exclusions: tuple[Exclusion, ...] = ()
    breakdown: Breakdown | None = None
    cohort_id: str | None = None  # loaded by the caller into ``filters.cohort``


@dataclass(frozen=True)
class People:
    funnel: Funnel
    step: int  # 1-based
    status: str
    breakdown_value: tuple[str, ...] | None = None
    limit: int = DEFAULT_PEOPLE
    offset: int = 0


# Parsing ----------------------------------------------------------------------

def parse_funnel(body: Any, project_id: str, max_range_days: int, extra_keys: frozenset[str] = frozenset()) -> Funnel:
    if not isinstance(body, Mapping):
        raise InvalidInput.field("body", "must be a JSON object")
    unknown = sorted(set(body) - BODY_KEYS - extra_keys)
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
    order = body.get("order", "ordered")
    if order not in ORDERS:
        raise InvalidInput.field("order", "must be ordered, strict or any")
    cohort = body.get("cohort")
    if cohort is not None and not isinstance(cohort, str):
        raise InvalidInput.field("cohort", "must be a cohort id")
    return Funnel(tuple(steps), _window(body), filters, order, _exclusions(body.get("exclusions"), len(steps)),
                  breakdowns.parse_body(body), cohort)


def parse_people(body: Any, project_id: str, max_range_days: int) -> People:
    spec = parse_funnel(body, project_id, max_range_days, frozenset(PEOPLE_KEYS))
    step = body.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= len(spec.steps):
        raise InvalidInput.field("step", f"must be a step number from 1 to {len(spec.steps)}")
    status = body.get("status", "converted")
    if status not in STATUSES:
        raise InvalidInput.field("status", "must be converted or dropped")
    if status == "dropped" and step == 1:
        raise InvalidInput.field("step", "nobody drops before step 1: ask for dropped at step 2 or later")
    value = body.get("breakdown_value")
    if value is not None:
        if spec.breakdown is None:
            raise InvalidInput.field("breakdown_value", "needs a breakdown")
        if (not isinstance(value, list) or len(value) != len(spec.breakdown.fields)
                or not all(isinstance(v, str) and len(v) <= 1024 for v in value)):
            raise InvalidInput.field("breakdown_value", "must be a list with one value per breakdown field")
        value = tuple(check_text("breakdown_value", v) for v in value)
    limit = _int(body.get("limit", DEFAULT_PEOPLE), "limit", 1, MAX_PEOPLE)
    offset = _int(body.get("offset", 0), "offset", 0, MAX_OFFSET)
    return People(spec, step, status, value, limit, offset)


def _int(raw: Any, name: str, low: int, high: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
        raise InvalidInput.field(name, f"must be an integer from {low} to {high}")
    return raw


def _window(body: Mapping[str, Any]) -> int:
    if "window" in body and "window_seconds" in body:
        raise InvalidInput.field("window", "give window or window_seconds, not both")
    raw = body.get("window")
    if raw is None:
        return _int(body.get("window_seconds", DEFAULT_WINDOW_S), "window_seconds", 1, MAX_WINDOW_S)
    if not isinstance(raw, Mapping) or set(raw) != {"value", "unit"} or raw["unit"] not in UNITS:
        raise InvalidInput.field("window", "must be {value, unit} with unit minute, hour or day")
    unit = UNITS[raw["unit"]]
    return unit * _int(raw["value"], "window.value", 1, MAX_WINDOW_S // unit)


def _exclusions(raw: Any, steps: int) -> tuple[Exclusion, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_EXCLUSIONS:
        raise InvalidInput.field("exclusions", f"must be a list of at most {MAX_EXCLUSIONS} exclusions")
    out = []
    for index, item in enumerate(raw):
        name = f"exclusions[{index}]"
        if not isinstance(item, Mapping) or set(item) != {"event_type", "from_step", "to_step"}:
            raise InvalidInput.field(name, "must be {event_type, from_step, to_step}")
        event_type = item["event_type"]
        if not isinstance(event_type, str) or not 1 <= len(check_text(f"{name}.event_type", event_type)) <= 128:
            raise InvalidInput.field(f"{name}.event_type", "must be 1 to 128 characters")
        low = _int(item["from_step"], f"{name}.from_step", 1, steps - 1)
        high = _int(item["to_step"], f"{name}.to_step", low + 1, steps)
        out.append(Exclusion(event_type, low, high))
    return tuple(out)


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


# SQL --------------------------------------------------------------------------

PACK_BITS = 16  # an event is one UInt64: its time (ms) above, the steps and exclusions it matches below
SENTINEL = "toUInt64(18446744073709551615)"  # after every event, matching everything, beyond any window


def _t(packed: str) -> str:
    """The time (ms) of a packed event."""
    return f"toInt64(bitShiftRight({packed}, {PACK_BITS}))"


SENTINEL_MS = f"toInt64({(2**64 - 1) >> PACK_BITS})"  # the sentinel's time
TIMES = f", arrayMap(x -> {_t('x')}, e1) AS T"  # each event's time (ms)


def _next(values: str) -> str:
    """At each position, ``values`` of the position after it (past the end: the sentinel's time)."""
    return f"arrayResize(arraySlice({values}, 2), last, {SENTINEL_MS})"


def _fill(bit: int, values: str) -> str:
    """At each position, ``values`` at the first position at or after it whose event
    has ``bit`` (the sentinel has every bit, so there is always one)."""
    return f"arrayReverseFill((v, x) -> bitTest(x, {bit}), {values}, e1)"


def _at_starts(values: str, starts: str) -> str:
    """``values`` at the attempts' start positions, in order (``starts``: the start
    condition on ``x``, which the sentinel meets: it is the last kept, and dropped)."""
    return f"arrayPopBack(arrayFilter((v, x) -> {starts}, {values}, e1))"


def _best(levels: str, times: str) -> str:
    """From ``levels`` (each attempt's level, in start order): ``full_level``, the
    counted attempt ``c`` (the first reaching it), then ``times`` (``full_times``,
    the counted attempt's step times)."""
    return (f", {levels} AS levels, arrayMax(levels) AS full_level,"
            f" arrayFirstIndex(x -> x = full_level, levels) AS c, {times}")


def _counted(order: str, n: int) -> str:
    """``level`` and ``times`` of the counted attempt, from ``e1`` (the person's packed
    events in order, then the sentinel) and ``last`` (the sentinel's position).

    ``ordered`` and ``any`` work on whole arrays: the time of each step's next
    event from every position is filled backwards over the events (``_fill``),
    then read at the starts, so a person's work grows with their events, not
    with their events times their starts. ``strict`` reads the n - 1 events
    after each start."""
    if order == "ordered":  # each next step: the first such event after the previous one
        # S<k>: per start, step k's time; from position i, step 2's is the first after i, step 3's
        # the first after that, ...: filled for the last step first, then back through the steps before
        starts = f", {_at_starts('T', 'bitTest(x, 0)')} AS S1"
        for k in range(2, n + 1):
            chain = "T"
            for bit in range(k - 1, 0, -1):
                chain = _next(_fill(bit, chain))
            starts += f", {_at_starts(chain, 'bitTest(x, 0)')} AS S{k}"
        args = ", ".join(f"S{k}" for k in range(1, n + 1))
        inside = " + ".join(f"(S{k} - S1 <= W)" for k in range(2, n + 1))
        return TIMES + starts + _best(
            f"arrayMap(({args}) -> toUInt8(1 + {inside}), {args})",
            f"arraySlice([{', '.join(f'S{k}[c]' for k in range(1, n + 1))}], 1, full_level) AS full_times")
    if order == "strict":  # the events right after the start must be the next steps
        def step(k: int) -> str:
            return f"(bitTest(e1[s + {k}], {k}) AND {_t(f'e1[s + {k}]')} - {_t('e1[s]')} <= W)"
        inside = " + ".join("(" + " AND ".join(step(j) for j in range(1, k + 1)) + ")" for k in range(1, n))
        times = ", ".join(_t(f"e1[p1[c] + {k}]") for k in range(n))
        return (", arrayFilter((j, x) -> bitTest(x, 0) AND j < last, arrayEnumerate(e1), e1) AS p1" + _best(
            f"arrayMap(s -> toUInt8(1 + {inside}), p1)", f"arraySlice([{times}], 1, full_level) AS full_times"))
    # any: from each start (an event of any step), the first event of each step within the window
    any_step = f"bitAnd(x, {(1 << n) - 1}) != 0"
    starts = f", {_at_starts('T', any_step)} AS S0" + "".join(
        f", arrayMap((f, s) -> if(f - s <= W, f, -1), {_at_starts(_fill(k, 'T'), any_step)}, S0) AS R{k}"
        for k in range(n))
    firsts = ", ".join(f"R{k}" for k in range(n))
    return TIMES + starts + _best(
        f"arrayMap(({firsts}) -> toUInt8({' + '.join(f'(R{k} >= 0)' for k in range(n))}), {firsts})",
        f"arraySort(arrayFilter(x -> x >= 0, [{', '.join(f'R{k}[c]' for k in range(n))}])) AS full_times")


def exprs_of(bd: Breakdown | None) -> list[int]:
    """The indexes of the breakdown's event fields (those read from the events)."""
    return [i for i, f in enumerate(bd.fields) if not f.startswith("person.")] if bd is not None else []


def persons_query(spec: Funnel, who: Resolver, actors: bool = False,
                  ranked: bool = True) -> tuple[str, dict[str, Any]]:
    """One row per person in the funnel (level >= 1, not excluded):
    ``person, level, times`` (ms of each step reached), ``bd<i>`` with a
    breakdown, ``actors`` (their identifiers in the funnel's events) if asked.

    A person's events are packed into one UInt64 each (time, then the mask
    of the steps and exclusions it matches), so sorting them is sorting
    numbers: events of one millisecond are taken in the order of their masks.
    Persons who cannot go past step 1 (``ordered``, ``strict``: no event of
    step 2; ``any``: events of a single step) and no exclusion to check skip
    the per-attempt work: their level is 1 and their start the first."""
    where, params = condition(spec.filters)
    n = len(spec.steps)
    terms = []
    for index, step in enumerate(spec.steps):
        params[f"t{index}"] = step.event_type
        parts, extra = segment_condition(step.segments, f"s{index}")
        params.update(extra)
        terms.append(" AND ".join([f"event_type = {{t{index}:String}}", *parts]))
    for index, exclusion in enumerate(spec.exclusions):
        params[f"x{index}"] = exclusion.event_type
        terms.append(f"event_type = {{x{index}:String}}")
    mask = " + ".join(f"toUInt64({term}) * {1 << bit}" for bit, term in enumerate(terms))
    relevant = "" if spec.order == "strict" else " AND (" + " OR ".join(f"({t})" for t in terms) + ")"
    starts = " OR ".join(f"({t})" for t in (terms[:1] if spec.order != "any" else terms[:n]))
    params.update(window=spec.window_seconds * 1000)
    firsts = ""
    if spec.breakdown is not None:
        exprs, value_params = breakdowns.event_exprs(spec.breakdown)
        params.update(value_params)
        firsts = "".join(f", minIf((occurred_at, {expr}), {starts}).2 AS bd{i}" for i, expr in exprs.items())
    presence = "".join(f", countIf({t}) > 0 AS has{k}" for k, t in enumerate(terms[:n]))
    if spec.exclusions:
        needs, trivial = "1", "0"
    elif spec.order == "any":
        needs, trivial = " + ".join(f"has{k}" for k in range(n)) + " >= 2", "1"
    else:
        needs, trivial = "has0 AND has1", "has0"
    excluded = " OR ".join(
        f"(level >= {x.from_step} AND arrayExists(x -> bitTest(x, {n + j}) AND {_t('x')} > times[{x.from_step}]"
        f" AND {_t('x')} < if(level >= {x.to_step}, times[{x.to_step}], times[{x.from_step}] + W), ev))"
        for j, x in enumerate(spec.exclusions)) or "0"
    kept = (", actors" if actors else "") + "".join(f", bd{i}" for i in exprs_of(spec.breakdown))
    collect = ", groupUniqArray(actor) AS actors" if actors else ""
    sql = f"""
        SELECT person, level, times{kept} FROM (
            SELECT *, toInt64({{window:UInt64}}) AS W, if({needs}, packed, []) AS ev,
                   arrayPushBack(ev, {SENTINEL}) AS e1, length(e1) AS last{_counted(spec.order, n)},
                   if({needs}, full_level, toUInt8({trivial})) AS level,
                   if({needs}, full_times, [first_start]) AS times
            FROM (
                SELECT {who.key} AS person,
                       arraySort(groupArray(bitShiftLeft(toUInt64(toUnixTimestamp64Milli(occurred_at)), {PACK_BITS})
                                            + {mask})) AS packed,
                       minIf(toInt64(toUnixTimestamp64Milli(occurred_at)), {starts}) AS first_start{presence}{firsts}
                       {collect}
                FROM events WHERE {where}{relevant}
                GROUP BY person
            )
        ) WHERE level >= 1 AND NOT ({excluded})"""
    if spec.breakdown is not None:
        sql, person_params = breakdowns.with_person_values(sql, spec.breakdown, "f_project")
        params.update(person_params)
        sql = (breakdowns.ranked_persons(sql, spec.breakdown) if ranked
               else f"SELECT *, {breakdowns.value_list(spec.breakdown)} AS t FROM ({sql})")
    return sql, params


def funnel_query(spec: Funnel, who: Resolver) -> tuple[str, dict[str, Any]]:
    """Per breakdown value (``[]`` without one) and step k reached: ``breakdown,
    rank, k, persons, sum_ms, median_ms, bin counts...`` (``d``: ms from step
    k-1, 0 for step 1)."""
    persons, params = persons_query(spec, who, ranked=False)
    # ``b``: the histogram bin of ``d`` (1 = the first), counted per bin; one comparison per bin,
    # as bounds on both sides of ``d`` (d >= x AND d < y) cost ClickHouse ~60 ms to plan
    edges = ", ".join(str(e * 1000) for e in HISTOGRAM_EDGES_S)
    bins = [f"countIf(b = {i})" for i in range(1, len(HISTOGRAM_EDGES_S) + 1)]
    kept = "t, " if spec.breakdown is not None else ""
    steps = (f" FROM (SELECT {kept}k, d, arrayCount(e -> d >= e, [{edges}]) AS b FROM ({persons})"
             " ARRAY JOIN arrayEnumerate(times) AS k,"
             " arrayMap(i -> if(i = 1, 0, times[i] - times[i - 1]), arrayEnumerate(times)) AS d)")
    bd = spec.breakdown
    if bd is None:
        return (f"SELECT CAST([] AS Array(String)) AS breakdown, 1 AS rank, k, count(), sum(d),"
                f" quantileExactInclusive(0.5)(d), {', '.join(bins)}{steps} GROUP BY k", params)
    # Per value and step, then the values ranked by their persons at step 1 and the others' partial
    # figures merged (the median's state holds the values): the ranking runs over these few rows.
    named = ", ".join(f"{b} AS b{i}" for i, b in enumerate(bins))
    merged = ", ".join(f"sum(b{i})" for i in range(len(bins)))
    return (f"SELECT if(vrank <= {bd.limit}, t, {bd.others!r}) AS breakdown, least(vrank, {bd.limit + 1}) AS rank,"
            f" k, sum(c), sum(s), quantileExactInclusiveMerge(0.5)(q), {merged} FROM ("
            " SELECT *, dense_rank() OVER (ORDER BY vc DESC, t ASC) AS vrank FROM ("
            "  SELECT *, max(if(k = 1, c, 0)) OVER (PARTITION BY t) AS vc FROM ("
            f"   SELECT t, k, count() AS c, sum(d) AS s, quantileExactInclusiveState(0.5)(d) AS q, {named}"
            f"  {steps} GROUP BY t, k)))"
            " GROUP BY breakdown, rank, k", params)


def at_step_query(request: People, who: Resolver, actors: bool = False) -> tuple[str, dict[str, Any]]:
    """``person, times[, actors]`` of every person at the step (pulse.core.cohorts
    keeps them as a static cohort)."""
    persons, params = persons_query(request.funnel, who, actors)
    params["step"] = request.step
    at = "level >= {step:UInt8}" if request.status == "converted" else "level = {step:UInt8} - 1"
    if request.breakdown_value is not None:
        params["value"] = list(request.breakdown_value)
        at += " AND breakdown = {value:Array(String)}"
    return f"SELECT person, times{', actors' if actors else ''} FROM ({persons}) WHERE {at}", params


def people_query(request: People, who: Resolver) -> tuple[str, dict[str, Any]]:
    """``person, actors`` of the persons at the step, in order, one page."""
    persons, params = at_step_query(request, who, actors=True)
    params.update(limit=request.limit, offset=request.offset)
    return (f"SELECT person, actors FROM ({persons}) ORDER BY times[1], person"
            " LIMIT {limit:UInt32} OFFSET {offset:UInt32}", params)


# Answers ----------------------------------------------------------------------

def _seconds(ms: float) -> float:
    return round(ms / 1000, 3)


def _steps(spec: Funnel, reached: dict[int, tuple[Any, ...]], extra: dict[str, Any]) -> list[dict[str, Any]]:
    users = [int(reached[k][0]) if k in reached else 0 for k in range(1, len(spec.steps) + 1)]
    out = []
    for k, step in enumerate(spec.steps):
        row: dict[str, Any] = {"event_type": step.event_type, **extra, "users": users[k],
                               "conversion_from_start": 100.0 if k == 0 else percent(users[k], users[0]),
                               "conversion_from_previous": 100.0 if k == 0 else percent(users[k], users[k - 1]),
                               "median_seconds_to_convert": None, "mean_seconds_to_convert": None,
                               "seconds_to_convert_histogram": None}
        if k > 0 and users[k]:
            count, total, median, *bins = reached[k + 1]
            row["median_seconds_to_convert"] = _seconds(float(median))
            row["mean_seconds_to_convert"] = _seconds(int(total) / int(count))
            row["seconds_to_convert_histogram"] = [
                {"from_seconds": low, "to_seconds": high, "users": int(b)}
                for low, high, b in zip(HISTOGRAM_EDGES_S, [*HISTOGRAM_EDGES_S[1:], None], bins, strict=True)]
        elif k > 0:
            row["seconds_to_convert_histogram"] = [
                {"from_seconds": low, "to_seconds": high, "users": 0}
                for low, high in zip(HISTOGRAM_EDGES_S, [*HISTOGRAM_EDGES_S[1:], None], strict=True)]
        out.append(row)
    return out


def shape(spec: Funnel, rows: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    groups: dict[int, tuple[list[str], dict[int, tuple[Any, ...]]]] = {}
    for value, rank, k, *rest in rows:
        groups.setdefault(int(rank), (list(value), {}))[1][int(k)] = tuple(rest)
    if spec.breakdown is None:
        return {"steps": _steps(spec, groups.get(1, ([], {}))[1], {})}
    return {"steps": [row for rank in sorted(groups)
                      for row in _steps(spec, groups[rank][1], {"breakdown": groups[rank][0]})]}


def funnel(ch: ClickHouse, spec: Funnel) -> dict[str, Any]:
    who = resolver(ch, spec.filters.project_id)
    return shape(spec, query("funnel", ch, *funnel_query(spec, who)))


def people(ch: ClickHouse, request: People) -> list[tuple[Any, list[str]]]:
    """(person key, identifiers seen in the funnel's events) per person, one page;
    the caller names them (pulse.storage.persons)."""
    who = resolver(ch, request.funnel.filters.project_id)
    return [(p, list(a)) for p, a in query("funnel-people", ch, *people_query(request, who))]
