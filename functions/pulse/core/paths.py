"""Paths: what persons do after a start event, or before an end event.

A person's path (pulse.core.persons: their events under every linked
identifier) is their events inside the range that match the filters, in time
order (ties: by name; event types before page paths), from their first ``start`` event on
(``end``: back from their last ``end`` event), with consecutive repeats of one
name collapsed into one node. Edges run in time order (before an end event,
from step -k to step -k+1). A name is the event type; with ``pages=true`` a
page view is named by its page path instead, and ``start``/``end`` may name a
page path (a value beginning with ``/``).

Step 0 is the start (end) event; the path's next names are steps 1..``steps``
(before an end event: -1..-``steps``). A node ``(step, name)`` counts the
persons whose path has that name at that step (``users``) and the events
collapsed into it (``events``); an edge counts the persons going from one
node to the next. Nodes and edges with fewer than ``min_users`` persons are
left out (an edge never has more persons than either of its nodes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pulse.core.filters import Filters, check_text, condition
from pulse.core.persons import Resolver, resolver
from pulse.core.stats import query
from pulse.errors import InvalidInput
from pulse.storage.clickhouse import ClickHouse

MAX_STEPS = 5
DEFAULT_STEPS = 3
MAX_MIN_USERS = 1_000_000


@dataclass(frozen=True)
class Paths:
    filters: Filters
    anchor: str  # the start or end name
    forward: bool  # from a start event (else back from an end event)
    steps: int = DEFAULT_STEPS
    min_users: int = 1
    pages: bool = False


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name) or []
    if len(values) > 1:
        raise InvalidInput.field(name, "may be given once")
    return values[0] if values else None


def _number(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 7 or not low <= int(raw) <= high:
        raise InvalidInput.field(name, f"must be an integer from {low} to {high}")
    return int(raw)


def parse_paths(params: Mapping[str, Sequence[str]], filters: Filters) -> Paths:
    start, end = _one(params, "start"), _one(params, "end")
    if (start is None) == (end is None):
        raise InvalidInput.field("start", "give start or end (an event type), not both")
    name, anchor = ("start", start) if start is not None else ("end", end or "")
    if not 1 <= len(check_text(name, anchor)) <= 1024:
        raise InvalidInput.field(name, "must be 1 to 1024 characters")
    pages = (_one(params, "pages") or "false").lower()
    if pages not in ("true", "false"):
        raise InvalidInput.field("pages", "must be true or false")
    steps = _number(_one(params, "steps"), "steps", DEFAULT_STEPS, 1, MAX_STEPS)
    min_users = _number(_one(params, "min_users"), "min_users", 1, 1, MAX_MIN_USERS)
    return Paths(filters, anchor, start is not None, steps, min_users, pages == "true")


CODE_BITS = 21  # an event packs as: its time (ms), its name's number in the query's dictionary, the anchor flag
NO_NAME = (1 << CODE_BITS) - 1


def paths_query(spec: Paths, who: Resolver) -> tuple[str, dict[str, Any]]:
    """``is_edge, step, name, to_name, persons, events``: one row per node
    (``to_name`` empty) and per edge (``step``: its first node's).

    Names are numbered in a dictionary of the range's event types (then page
    paths), sorted, so each event packs into one number (time, anchor flag,
    name, whether it is the anchor): sorting a person's events is sorting
    numbers, ties by name. Runs of
    one name are found by comparing each name with the one before it."""
    where, params = condition(spec.filters)
    params.update(anchor=spec.anchor, steps=spec.steps + 1)
    pages = spec.pages
    types = f"(SELECT arraySort(groupUniqArray(toString(event_type))) FROM events WHERE {where})"
    paths_dict = (f"(SELECT arraySort(groupUniqArray(path)) FROM events WHERE {where} AND event_type = 'page_view')"
                  if pages else "CAST([], 'Array(String)')")
    page = "event_type = 'page_view'" if pages else "0"
    code = (f"if({page}, length(types) + transform(path, paths, range(length(paths)), 0),"
            " transform(event_type, types, range(length(types)), 0))")
    anchored = "(event_type = {anchor:String}" + (" OR (event_type = 'page_view' AND path = {anchor:String}))"
                                                  if pages else ")")
    find = "arrayFirstIndex" if spec.forward else "arrayLastIndex"
    seq = "arraySlice(ev, i)" if spec.forward else "arrayReverse(arraySlice(ev, 1, i))"
    sign = "" if spec.forward else "-"
    sql = f"""
        WITH {types} AS types, {paths_dict} AS paths
        SELECT item.1 AS is_edge, item.2 AS step,
               if(item.3 < length(types), (types[item.3 + 1], ''), ('page_view', paths[item.3 - length(types) + 1]))
                   AS name,
               if(item.4 = {NO_NAME}, ('', ''), if(item.4 < length(types), (types[item.4 + 1], ''),
                  ('page_view', paths[item.4 - length(types) + 1]))) AS to_name,
               count(), sum(item.5)
        FROM (
            SELECT arrayConcat(
                       arrayMap((k, a, n) -> (toUInt8(0), toInt8({sign}(k - 1)), a, toUInt64({NO_NAME}), toUInt64(n)),
                                arrayEnumerate(run_names), run_names, run_lens),
                       arrayMap((k, a, b) -> (toUInt8(1), toInt8({sign}(k - 1)), a, b, toUInt64(0)),
                                arrayEnumerate(arrayPopBack(run_names)), arrayPopBack(run_names),
                                arrayPopFront(run_names))) AS items
            FROM (
                SELECT arrayMap(x -> bitAnd(bitShiftRight(x, 1), {NO_NAME}), {seq}) AS names,
                       arrayPushFront(arrayPopBack(names), toUInt64({NO_NAME})) AS before,
                       arraySlice(arrayFilter((a, b) -> a != b, names, before), 1, {{steps:UInt8}}) AS run_names,
                       arraySlice(arrayPopFront(arrayDifference(arrayPushBack(
                           arrayFilter((j, a, b) -> a != b, arrayEnumerate(names), names, before),
                           length(names) + 1))), 1, {{steps:UInt8}}) AS run_lens
                FROM (
                    SELECT arraySort(groupArray(bitShiftLeft(toUInt64(toUnixTimestamp64Milli(occurred_at)),
                                                             {CODE_BITS + 1})
                                                + bitShiftLeft(toUInt64({code}), 1) + toUInt64({anchored}))) AS ev,
                           {find}(x -> bitTest(x, 0), ev) AS i
                    FROM events WHERE {where}
                    GROUP BY {who.key}
                    HAVING i > 0
                )
            )
        ) ARRAY JOIN items AS item
        GROUP BY is_edge, step, name, to_name"""
    return sql, params


def _node_id(step: int, name: tuple[str, str]) -> str:
    return f"{step}:{name[1] or name[0]}"


def shape(spec: Paths, rows: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    for is_edge, step, name, to_name, persons, events in rows:
        if int(persons) < spec.min_users:
            continue
        step = int(step)
        if is_edge:  # from the node at ``step`` to the next one along the path; edges run in time order
            pair = ((step, name), (step + 1, to_name)) if spec.forward else ((step - 1, to_name), (step, name))
            edges.append({"from": _node_id(*pair[0]), "to": _node_id(*pair[1]), "users": int(persons)})
            continue
        node: dict[str, Any] = {"id": _node_id(step, name), "step": step, "event_type": name[0],
                                "users": int(persons), "events": int(events)}
        if spec.pages:
            node["path"] = name[1] or None
        nodes.append(node)
    steps = {n["id"]: n["step"] for n in nodes}
    nodes.sort(key=lambda n: (n["step"], -n["users"], n["id"]))
    edges.sort(key=lambda e: (steps.get(e["from"], 0), -e["users"], e["from"], e["to"]))
    return {"nodes": nodes, "edges": edges}


def paths(ch: ClickHouse, spec: Paths) -> dict[str, Any]:
    who = resolver(ch, spec.filters.project_id)
    return shape(spec, query("paths", ch, *paths_query(spec, who)))
