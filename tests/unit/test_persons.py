"""The person model without a store: which operations events carry, and
how links merge, chain, and are refused."""

from __future__ import annotations

import uuid

import orjson

from pulse.core.persons import (
    Identify,
    Identities,
    Link,
    Person,
    SetProperties,
    identifiers,
    operations,
    overrides,
    person_id,
)

PROJECT = "5e0f6c1a-0000-4000-8000-00000000000a"


def row(event_type: str, user_id: str = "", anonymous_id: str = "", at: str = "2026-01-01 00:00:00.000",
        **properties: object) -> dict[str, str]:
    return {"event_type": event_type, "user_id": user_id, "anonymous_id": anonymous_id, "occurred_at": at,
            "properties": orjson.dumps(properties).decode()}


def test_identity_calls_become_links_in_event_time_order() -> None:
    rows = [row("$alias", "u2", at="2026-01-01 00:00:02.000", previous_id="u1"),
            row("$identify", "u1", "a1", at="2026-01-01 00:00:01.000", **{"$set": {"plan": "pro"}}),
            row("page_view", "u9"),
            row("$create_alias", "c", alias="b"), row("$merge_dangerously", "m", alias="n")]
    assert operations(rows) == [
        Link("b", "c"), Identify("c"), Link("n", "m", force=True), Identify("m"),
        Link("a1", "u1"), Identify("u1"), SetProperties("u1", {"plan": "pro"}, {}),
        Link("u1", "u2"), Identify("u2")]


def test_segment_traits_and_posthog_set_once_are_person_properties() -> None:
    assert operations([row("$identify", "u1", plan="pro", **{"$browser": "x"})]) == [
        Identify("u1"), SetProperties("u1", {"plan": "pro"}, {})]
    assert operations([row("click", "", "a1", **{"$set_once": {"first": "/"}})]) == [
        SetProperties("a1", {}, {"first": "/"})]
    assert operations([row("$identify", "u1", "a1", **{"$force": True})])[0] == Link("a1", "u1", force=True)


def test_an_anonymous_visitor_joins_the_user() -> None:
    ids = Identities(PROJECT, [])
    outcome = ids.apply([Link("a1", "u1"), Identify("u1")])
    (person,) = outcome.changed
    assert person.primary == "u1" and person.members == {"a1", "u1"} and person.identified
    assert person.person_id == person_id(PROJECT, "u1") == str(uuid.uuid5(uuid.UUID(PROJECT), "u1"))
    assert overrides(outcome.changed) == [("a1", "u1")]


def test_links_chain_into_one_person_keeping_the_identified_one() -> None:
    ids = Identities(PROJECT, [])
    outcome = ids.apply([Link("a", "b"), Identify("b"), Link("b", "c"), Identify("c")])
    (person,) = outcome.changed
    assert person.primary == "b" and person.members == {"a", "b", "c"}
    assert sorted(overrides(outcome.changed)) == [("a", "b"), ("c", "b")]


def test_two_identified_persons_merge_only_when_forced() -> None:
    stored = [Person(person_id(PROJECT, "u1"), "u1", True, {"plan": "free"}, {"u1", "a1"}),
              Person(person_id(PROJECT, "u2"), "u2", True, {"plan": "pro", "seats": 3}, {"u2"})]
    refused = Identities(PROJECT, stored).apply([Link("a1", "u2")])
    assert refused.refused == [Link("a1", "u2")] and not refused.changed and not refused.absorbed
    forced = Identities(PROJECT, [Person(p.person_id, p.primary, p.identified, dict(p.properties), set(p.members))
                                  for p in stored]).apply([Link("u1", "u2", force=True)])
    (survivor,) = forced.changed
    assert survivor.primary == "u2" and survivor.members == {"u1", "a1", "u2"}
    assert survivor.properties == {"plan": "pro", "seats": 3}, "the survivor's properties win"
    assert [p.primary for p in forced.absorbed] == ["u1"]
    assert sorted(overrides(forced.changed)) == [("a1", "u2"), ("u1", "u2")]


def test_set_once_fills_only_what_is_missing() -> None:
    ids = Identities(PROJECT, [])
    outcome = ids.apply([SetProperties("u1", {"plan": "pro"}, {}), SetProperties("u1", {}, {"plan": "free", "x": 1})])
    assert outcome.changed[0].properties == {"plan": "pro", "x": 1}


def test_identifiers_are_listed_once_in_order() -> None:
    assert identifiers([Link("a", "b"), Identify("b"), SetProperties("c", {}, {})]) == ["a", "b", "c"]
