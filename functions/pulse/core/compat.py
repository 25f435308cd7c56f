"""Other wire formats mapped onto Pulse events: Segment, PostHog, CloudEvents.

Pure: a parsed payload in, plain Pulse event dicts out, then the one
validation of ``pulse.core.events.validate_events``. Nothing here knows HTTP
beyond the shapes of the payloads; the routes live in ``pulse.ingest``.

Ids: a client id that is a UUID is the ``event_id``; any other id becomes
``uuid5(project_id, id)``, so a client retrying the same message lands on the
same event and the ledger drops the copy.

A message Pulse cannot map (a clock correction that leaves the calendar, a
PostHog ``offset`` of centuries) is refused alone, with the field named, and
its neighbours in the batch are kept: Segment and PostHog answer a batch as a
whole, and their SDKs retry a 5xx forever.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from pulse.bus.cloudevents import CloudEvent
from pulse.core.events import Batch, parse_ts, validate_events
from pulse.errors import FieldError, InvalidInput
from pulse.settings import Limits

# Segment's own limits (https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/).
SEGMENT_MAX_MESSAGE_BYTES = 32 * 1024
SEGMENT_MAX_BATCH_BYTES = 500 * 1024
SEGMENT_TYPES = ("track", "page", "screen", "identify", "group", "alias")
SEGMENT_EVENT_TYPES = {"page": "page_view", "screen": "screen_view", "identify": "$identify",
                       "group": "$group", "alias": "$alias"}
POSTHOG_EVENT_TYPES = {"$pageview": "page_view", "$screen": "screen_view"}


def derived_event_id(project_id: str, client_id: Any) -> str | None:
    """The event_id for a client's message id (None when it gave none)."""
    if client_id is None or client_id == "":
        return None
    text = str(client_id)
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return str(uuid.uuid5(uuid.UUID(project_id), text))


class Unmappable(ValueError):
    """A message field Pulse cannot turn into an event field; the message is refused alone."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.error = (field, message)


def skew_corrected(timestamp: Any, sent_at: Any, received_at: datetime) -> Any:
    """``received_at - (sent_at - timestamp)``: the event's time on the server's
    clock. Unparseable values are returned untouched for validation to name;
    a correction that leaves the calendar raises ``Unmappable``."""
    if timestamp is None or sent_at is None:
        return timestamp
    try:
        moment, sent = parse_ts(timestamp, "timestamp"), parse_ts(sent_at, "sentAt")
    except ValueError:
        return timestamp
    try:
        return (received_at - (sent - moment)).isoformat()
    except OverflowError as exc:
        raise Unmappable("timestamp", "is too far from sentAt to correct the clock skew") from exc


def offset_time(offset: int, received_at: datetime) -> str:
    """PostHog's ``offset``: milliseconds before the request was received."""
    try:
        return (received_at - timedelta(milliseconds=offset)).isoformat()
    except OverflowError as exc:
        raise Unmappable("offset", "is out of range") from exc


def _mapped(mapper: Callable[..., Any], message: Any, *args: Any) -> Any:
    """The mapper's event, or the refusal ``_validate`` reports for this message alone."""
    try:
        return mapper(message, *args)
    except Unmappable as exc:
        return {"_error": exc.error}


def load_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput.field("body", f"is not valid JSON ({exc.msg} at {exc.pos})") from exc


def _object(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


# Segment --------------------------------------------------------------------

def segment_messages(doc: Any, kind: str | None) -> tuple[list[Any], Any]:
    """The messages of a Segment body and its batch-level ``sentAt``.

    ``kind`` is the endpoint's call type (``track``...), or None for ``/v1/batch``."""
    if not isinstance(doc, Mapping):
        raise InvalidInput.field("body", "must be a JSON object")
    if kind is not None:
        return [{**doc, "type": kind}], doc.get("sentAt")
    batch = doc.get("batch")
    if not isinstance(batch, list):
        raise InvalidInput.field("batch", "must be an array of messages")
    if not batch:
        raise InvalidInput.field("batch", "must hold at least one message")
    return batch, doc.get("sentAt")


def segment_write_key(doc: Any) -> str | None:
    """Segment also takes the write key in the body (``writeKey``)."""
    key = doc.get("writeKey") if isinstance(doc, Mapping) else None
    return key if isinstance(key, str) else None


def check_segment_sizes(messages: list[Any]) -> None:
    """Segment refuses a message over 32 KB with 400; so does Pulse."""
    for index, message in enumerate(messages):
        size = len(orjson.dumps(message))
        if size > SEGMENT_MAX_MESSAGE_BYTES:
            raise InvalidInput(
                f"message {index} is {size} bytes; Segment messages are at most {SEGMENT_MAX_MESSAGE_BYTES}",
                [FieldError("batch", f"at most {SEGMENT_MAX_MESSAGE_BYTES} bytes per message", index)])


def segment_event(message: Any, project_id: str, sent_at: Any, received_at: datetime) -> Any:
    """One Segment message as a Pulse event (a non-object passes through for validation to refuse)."""
    if not isinstance(message, Mapping):
        return message
    kind = message.get("type")
    if kind not in SEGMENT_TYPES:
        return {"event_type": None, "_error": ("type", f"must be one of {', '.join(SEGMENT_TYPES)}")}
    properties = _object(message.get("properties"))
    event_type = message.get("event") if kind == "track" else SEGMENT_EVENT_TYPES[kind]
    if kind in ("page", "screen") and message.get("name") is not None:
        properties.setdefault("name", message.get("name"))
    if kind == "page" and message.get("category") is not None:
        properties.setdefault("category", message.get("category"))
    if kind == "identify":
        properties = _object(message.get("traits"))
    elif kind == "group":
        properties = {**_object(message.get("traits")), "group_id": message.get("groupId")}
    elif kind == "alias":
        properties = {"previous_id": message.get("previousId")}
    context = _object(message.get("context"))
    page = _object(context.get("page"))
    if kind == "page":
        for name in ("path", "url", "referrer", "title"):
            if name not in page and isinstance(properties.get(name), str):
                page[name] = properties[name]
    location = _object(context.get("location"))
    event: dict[str, Any] = {
        "event_type": event_type,
        "user_id": message.get("userId"),
        "anonymous_id": message.get("anonymousId"),
        "properties": properties,
        "context": {k: v for k, v in {
            "page": page or None,
            "user_agent": context.get("userAgent"),
            "ip": context.get("ip"),
            "locale": context.get("locale"),
            "country": location.get("country"),
        }.items() if v is not None},
    }
    event_id = derived_event_id(project_id, message.get("messageId"))
    if event_id:
        event["event_id"] = event_id
    when = message.get("timestamp", message.get("originalTimestamp"))
    if when is not None:
        event["occurred_at"] = skew_corrected(when, message.get("sentAt", sent_at), received_at)
    return event


def segment_batch(doc: Any, kind: str | None, project_id: str, limits: Limits,
                  received_at: datetime | None = None) -> Batch:
    received_at = received_at or datetime.now(UTC)
    messages, sent_at = segment_messages(doc, kind)
    check_segment_sizes(messages)
    return _validate([_mapped(segment_event, m, project_id, sent_at, received_at) for m in messages], limits,
                     received_at)


# PostHog --------------------------------------------------------------------

def posthog_messages(doc: Any) -> tuple[list[Any], Any, str | None]:
    """(events, sent_at, api key in the body) of a PostHog capture body:
    ``{"batch": [...]}``, a JSON array, or one event."""
    envelope: Mapping[str, Any] = {}
    if isinstance(doc, list):
        items = doc
    elif isinstance(doc, Mapping):
        envelope = doc
        items = doc.get("batch", [doc])
        if not isinstance(items, list):
            raise InvalidInput.field("batch", "must be an array of events")
    else:
        raise InvalidInput.field("body", "must be a JSON object or array")
    if not items:
        raise InvalidInput.field("batch", "must hold at least one event")
    key = envelope.get("api_key") or envelope.get("token")
    if not key:
        first = items[0] if isinstance(items[0], Mapping) else {}
        key = first.get("api_key") or first.get("token") or _object(first.get("properties")).get("token")
    return items, envelope.get("sent_at"), key if isinstance(key, str) else None


def posthog_event(message: Any, project_id: str, sent_at: Any, received_at: datetime) -> Any:
    if not isinstance(message, Mapping):
        return message
    properties = _object(message.get("properties"))
    name = message.get("event")
    event: dict[str, Any] = {
        "event_type": POSTHOG_EVENT_TYPES.get(name, name) if isinstance(name, str) else name,
        "user_id": message.get("distinct_id", properties.get("distinct_id")),
        # $identify links the browser's anonymous id to the user (pulse.core.persons).
        "anonymous_id": properties.get("$anon_distinct_id") if name == "$identify" else None,
        "session_id": message.get("session_id", properties.get("$session_id")),
        "properties": properties,
        "context": {k: v for k, v in {
            "page": {k: v for k, v in {"path": properties.get("$pathname"), "url": properties.get("$current_url"),
                                       "referrer": properties.get("$referrer")}.items()
                     if isinstance(v, str)} or None,
            "user_agent": properties.get("$raw_user_agent"),
            "ip": properties.get("$ip"),
            "locale": properties.get("$locale"),
            "country": properties.get("$geoip_country_code"),
        }.items() if v is not None},
    }
    event_id = derived_event_id(project_id, message.get("uuid"))
    if event_id:
        event["event_id"] = event_id
    when = message.get("timestamp")
    offset = message.get("offset")
    if when is not None:
        event["occurred_at"] = skew_corrected(when, message.get("sent_at", sent_at), received_at)
    elif isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0:
        event["occurred_at"] = offset_time(offset, received_at)
    return event


def posthog_batch(items: list[Any], sent_at: Any, project_id: str, limits: Limits,
                  received_at: datetime | None = None) -> Batch:
    received_at = received_at or datetime.now(UTC)
    return _validate([_mapped(posthog_event, m, project_id, sent_at, received_at) for m in items], limits,
                     received_at)


def posthog_results(items: list[Any], batch: Batch) -> dict[str, dict[str, str]]:
    """PostHog's v1 per-event answer: ``{uuid: {"result": "ok"}}``, ``drop`` with
    details for an event Pulse refused."""
    failed: dict[int, list[str]] = {}
    for error in batch.errors:
        failed.setdefault(error.index or 0, []).append(str(error.as_dict()["error"]))
    results = {}
    for index, item in enumerate(items):
        uid = item.get("uuid") if isinstance(item, Mapping) else None
        key = str(uid) if uid is not None else str(index)
        if index in failed:
            results[key] = {"result": "drop", "details": "; ".join(failed[index])}
        else:
            results[key] = {"result": "ok"}
    return results


# CloudEvents ----------------------------------------------------------------

def cloudevent_event(event: CloudEvent, project_id: str) -> Any:
    """A CloudEvent whose data is a Pulse event: ``id`` → ``event_id``; ``type``,
    ``time`` and ``subject`` fill ``event_type``, ``occurred_at`` and
    ``user_id`` when the data leaves them out."""
    try:
        data = orjson.loads(event.data) if event.data else None
    except orjson.JSONDecodeError:
        return {"_error": ("data", "must be a JSON object (a Pulse event)")}
    if not isinstance(data, Mapping):
        return {"_error": ("data", "must be a JSON object (a Pulse event)")}
    out = dict(data)
    out["event_id"] = derived_event_id(project_id, event.id)
    if "event_type" not in out and "event" not in out:
        out["event_type"] = event.type
    if "occurred_at" not in out and "timestamp" not in out and event.get("time"):
        out["occurred_at"] = event.get("time")
    if "user_id" not in out and "anonymous_id" not in out and event.get("subject"):
        out["user_id"] = event.get("subject")
    return out


def cloudevents_batch(events: list[CloudEvent], project_id: str, limits: Limits,
                      received_at: datetime | None = None) -> Batch:
    return _validate([cloudevent_event(e, project_id) for e in events], limits, received_at)


# Native identify ------------------------------------------------------------

NATIVE_IDENTIFY_KEYS = frozenset({"anonymous_id", "user_id", "traits", "force", "timestamp", "occurred_at",
                                  "event_id", "context"})


def is_native_identify(doc: Any) -> bool:
    """``POST /v1/identify`` takes Pulse's own ``{anonymous_id, user_id, traits?}``
    as well as Segment's ``identify`` (``userId``/``anonymousId``): snake_case
    names and no Segment ones make it the native form."""
    return (isinstance(doc, Mapping) and ("anonymous_id" in doc or "user_id" in doc)
            and not any(k in doc for k in ("userId", "anonymousId", "type", "batch")))


def native_identify(doc: Mapping[str, Any], limits: Limits, received_at: datetime | None = None) -> Batch:
    """The native identify body as one ``$identify`` event (pulse.core.persons):
    both ids required and different; ``traits`` set person properties;
    ``force: true`` merges even two identified persons."""
    unknown = sorted(set(doc) - NATIVE_IDENTIFY_KEYS)
    if unknown:
        raise InvalidInput.field(str(unknown[0])[:64], "is not an identify field")
    errors = []
    for name in ("anonymous_id", "user_id"):
        value = doc.get(name)
        if not isinstance(value, str) or not value:
            errors.append(FieldError(name, "is required (a non-empty string)"))
        elif len(value) > limits.max_id_chars:
            errors.append(FieldError(name, f"must be at most {limits.max_id_chars} characters"))
    traits = doc.get("traits", {})
    if traits is None:
        traits = {}
    if not isinstance(traits, Mapping):
        errors.append(FieldError("traits", "must be a JSON object"))
    force = doc.get("force", False)
    if not isinstance(force, bool):
        errors.append(FieldError("force", "must be true or false"))
    if not errors and doc["anonymous_id"] == doc["user_id"]:
        errors.append(FieldError("anonymous_id", "must differ from user_id"))
    if errors:
        raise InvalidInput(f"{errors[0].field}: {errors[0].message}", errors)
    properties: dict[str, Any] = {"$set": dict(traits)}
    if force:
        properties["$force"] = True
    event = {"event_type": "$identify", "user_id": doc["user_id"], "anonymous_id": doc["anonymous_id"],
             "properties": properties, **{k: doc[k] for k in ("event_id", "occurred_at", "timestamp", "context")
                                          if k in doc}}
    batch = validate_events([event], limits, received_at)
    if batch.errors:
        raise InvalidInput(str(batch.errors[0].as_dict()["error"]), batch.errors)
    return batch


# ---------------------------------------------------------------------------

def _validate(events: list[Any], limits: Limits, received_at: datetime | None) -> Batch:
    """validate_events, plus the errors a mapper left as ``{"_error": (field, message)}``."""
    failed = {i: e["_error"] for i, e in enumerate(events) if isinstance(e, Mapping) and "_error" in e}
    batch = validate_events([None if i in failed else e for i, e in enumerate(events)], limits, received_at)
    if failed:
        batch.errors = [e for e in batch.errors if e.index not in failed]
        batch.errors += [FieldError(name, message, i) for i, (name, message) in failed.items()]
        batch.errors.sort(key=lambda e: e.index or 0)
    return batch
