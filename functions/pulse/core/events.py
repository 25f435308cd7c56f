"""The event model and its validation. Knows nothing of HTTP, Kafka or SQL.

``normalize_event`` turns one client event (already parsed JSON) into a flat
row of plain strings, ready for every store (``bot`` is "1" when the user
agent is a known bot's: pulse.core.bots), or raises ``EventInvalid`` with
every field error found. ``parse_batch`` applies it to a request body and
keeps the valid events even when others fail, as API.md asks; a batch of
events that are all valid takes a fast path to the same rows (below).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

import msgspec
import orjson

from pulse.core.bots import is_bot
from pulse.errors import FieldError, InvalidInput, PayloadTooLarge
from pulse.settings import Limits

# Columns of a normalized event, in the order stores use them.
EVENT_COLUMNS = (
    "event_id", "event_type", "user_id", "anonymous_id", "session_id", "occurred_at",
    "properties", "path", "url", "referrer", "title", "user_agent", "ip", "locale", "country", "bot",
)
CONTEXT_FIELDS = ("user_agent", "ip", "locale", "country")
CONTEXT_NAMES = tuple((column, f"context.{column}") for column in CONTEXT_FIELDS)
PAGE_FIELDS = ("path", "url", "referrer", "title")
EPOCH_FLOOR = datetime(1970, 1, 1, tzinfo=UTC)
CANONICAL_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class RowView(Protocol):
    """A normalized event read by column: a row dict, or a record's Row (pulse.core.ingestion)."""

    def __getitem__(self, column: str, /) -> str: ...


class EventInvalid(Exception):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(e.as_dict()["error"] for e in errors))  # type: ignore[misc]
        self.errors = errors


@dataclass
class Batch:
    """The outcome of validating a request: rows to accept, errors by index."""

    rows: list[dict[str, str]] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)
    total: int = 0

    def error_list(self) -> list[dict[str, object]]:
        return [{"index": e.index, "field": e.field, "error": e.as_dict()["error"]} for e in self.errors]


def format_ts(moment: datetime) -> str:
    """The one wire form of a timestamp between Pulse's parts: UTC, milliseconds."""
    return moment.astimezone(UTC).isoformat(" ", "milliseconds")[:23]


def parse_ts(value: Any, name: str) -> datetime:
    """RFC 3339 text (a missing offset means UTC) or epoch seconds/milliseconds."""
    if isinstance(value, bool):
        raise ValueError("must be an RFC 3339 timestamp")
    if isinstance(value, int | float):
        seconds = value / 1000 if abs(value) > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError("is out of range") from exc
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        raise ValueError("must be an RFC 3339 timestamp")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError("must be an RFC 3339 timestamp") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def normalize_uuid(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 45:
        raise ValueError("must be a UUID")
    lowered = value.lower()
    if CANONICAL_UUID.match(lowered):
        return lowered
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise ValueError("must be a UUID") from exc


def normalize_event(raw: Any, limits: Limits, now: datetime) -> dict[str, str]:
    if type(raw) is not dict and not isinstance(raw, Mapping):
        raise EventInvalid([FieldError("event", "must be a JSON object")])
    errors: list[FieldError] = []
    row: dict[str, str] = {}
    get = raw.get

    event_id = get("event_id")
    if event_id is None:
        row["event_id"] = str(uuid.uuid4())
    elif type(event_id) is str and CANONICAL_UUID.match(event_id):
        row["event_id"] = event_id
    else:
        try:
            row["event_id"] = normalize_uuid(event_id)
        except ValueError as exc:
            errors.append(FieldError("event_id", str(exc)))

    event_type = get("event_type", get("event"))
    if event_type is None:
        errors.append(FieldError("event_type", "is required"))
    elif not isinstance(event_type, str) or not event_type.strip():
        errors.append(FieldError("event_type", "must be a non-empty string"))
    elif len(event_type) > limits.max_event_type_chars:
        errors.append(FieldError("event_type", f"must be at most {limits.max_event_type_chars} characters"))
    else:
        row["event_type"] = event_type

    for name in ("user_id", "anonymous_id", "session_id"):
        row[name] = _identifier(get(name), name, limits, errors)
    if not row["user_id"] and not row["anonymous_id"] and not any(
        e.field in ("user_id", "anonymous_id") for e in errors
    ):
        errors.append(FieldError("user_id", "user_id or anonymous_id is required"))

    when = get("occurred_at", get("timestamp"))
    if when is None:
        row["occurred_at"] = format_ts(now)
    else:
        name = "occurred_at" if "occurred_at" in raw else "timestamp"
        try:
            moment = parse_ts(when, name)
            if moment > now + timedelta(seconds=limits.max_future_skew_s):
                errors.append(FieldError(name, f"is more than {limits.max_future_skew_s} seconds in the future"))
            elif moment < EPOCH_FLOOR:
                errors.append(FieldError(name, "is before 1970-01-01"))
            else:
                row["occurred_at"] = format_ts(moment)
        except ValueError as exc:
            errors.append(FieldError(name, str(exc)))

    props_name = "properties" if "properties" in raw else "metadata"
    props = get(props_name)
    if props is None:
        row["properties"] = "{}"
    elif not isinstance(props, Mapping):
        errors.append(FieldError(props_name, "must be a JSON object"))
    else:
        try:
            text = orjson.dumps(props)
        except TypeError as exc:
            errors.append(FieldError(props_name, f"cannot be serialized: {exc}"))
        else:
            if len(text) > limits.max_properties_bytes:
                errors.append(FieldError(props_name, f"must be at most {limits.max_properties_bytes} bytes serialized"))
            else:
                row["properties"] = text.decode()

    _context(raw, row, limits, errors)
    if errors:
        raise EventInvalid(errors)
    row["bot"] = "1" if is_bot(row["user_agent"]) else "0"
    return row


def _identifier(value: Any, name: str, limits: Limits, errors: list[FieldError]) -> str:
    if type(value) is str and len(value) <= limits.max_id_chars:  # the usual case, first
        return value
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        errors.append(FieldError(name, "must be a string"))
        return ""
    text = str(value)
    if len(text) > limits.max_id_chars:
        errors.append(FieldError(name, f"must be at most {limits.max_id_chars} characters"))
        return ""
    return text


# column, top-level alias, key under context.page
PAGE_SOURCES = (("path", "path", "path"), ("url", "page_url", "url"),
                ("referrer", "referrer", "referrer"), ("title", None, "title"))


def _context(raw: Mapping[str, Any], row: dict[str, str], limits: Limits, errors: list[FieldError]) -> None:
    context = raw.get("context")
    if context is not None and not isinstance(context, Mapping):
        errors.append(FieldError("context", "must be a JSON object"))
        context = None
    page = context.get("page") if context else None
    if page is not None and not isinstance(page, Mapping):
        errors.append(FieldError("context.page", "must be a JSON object"))
        page = None
    for column, alias, page_key in PAGE_SOURCES:
        value, name = (raw.get(alias), alias) if alias else (None, "")
        if value is None and page:
            value, name = page.get(page_key), f"context.page.{page_key}"
        row[column] = _text(value, name, limits, errors)
    for column, name in CONTEXT_NAMES:
        row[column] = _text(context.get(column) if context else None, name, limits, errors)
    if not row["path"] and row["url"]:
        row["path"] = urlsplit(row["url"]).path or "/"


def _text(value: Any, name: str, limits: Limits, errors: list[FieldError]) -> str:
    if type(value) is str and len(value) <= limits.max_text_chars:  # the usual case, first
        return value
    if value is None:
        return ""
    if not isinstance(value, str):
        errors.append(FieldError(name, "must be a string"))
        return ""
    if len(value) > limits.max_text_chars:
        errors.append(FieldError(name, f"must be at most {limits.max_text_chars} characters"))
        return ""
    return value


def parse_batch(body: bytes, limits: Limits, now: datetime | None = None) -> Batch:
    """Validate a ``POST /v1/events`` body: one event, or ``{"events": [...]}``."""
    if len(body) > limits.max_body_bytes:
        raise PayloadTooLarge(f"body is larger than {limits.max_body_bytes} bytes")
    now = now or datetime.now(UTC)
    fast = _fast_batch(body, limits, now)
    if fast is not None:
        return fast
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput.field("body", f"is not valid JSON ({exc.msg} at {exc.pos})") from exc
    if isinstance(doc, Mapping) and "events" in doc:
        items = doc["events"]
        if not isinstance(items, list):
            raise InvalidInput.field("events", "must be an array")
        if not items:
            raise InvalidInput.field("events", "must hold at least one event")
        if len(items) > limits.max_batch_events:
            raise PayloadTooLarge(
                f"events: at most {limits.max_batch_events} events per request, got {len(items)}",
                [FieldError("events", f"at most {limits.max_batch_events} events per request")],
            )
    elif isinstance(doc, Mapping):
        items = [doc]
    else:
        raise InvalidInput.field("body", "must be a JSON object")
    return validate_events(items, limits, now)


def validate_events(items: list[Any], limits: Limits, now: datetime | None = None) -> Batch:
    now = now or datetime.now(UTC)
    batch = Batch(total=len(items))
    for index, item in enumerate(items):
        try:
            batch.rows.append(normalize_event(item, limits, now))
        except EventInvalid as exc:
            for error in exc.errors:
                batch.errors.append(FieldError(error.field, error.message, index))
    return batch


# The fast path ---------------------------------------------------------------
#
# ``parse_batch`` first decodes a body into the typed structs below (msgspec,
# in C: types are checked there, no dict per event) and builds the rows with
# the same rules as ``normalize_event``. It gives up, and the general path
# above runs instead, on anything but a batch of events that are all valid:
# another body shape, a value of another type, any event with an error. So
# the fast path never decides an error or a value the general path would not:
# tests/unit/test_events_fast.py holds the two to the same answers.


class _Page(msgspec.Struct, gc=False):
    path: str | None = None
    url: str | None = None
    referrer: str | None = None
    title: str | None = None


class _Context(msgspec.Struct, gc=False):
    page: _Page | None = None
    user_agent: str | None = None
    ip: str | None = None
    locale: str | None = None
    country: str | None = None


class _Event(msgspec.Struct):
    # UNSET (absent) and None (null) differ where the general path asks `in raw`.
    event_id: str | None = None
    event_type: str | None | msgspec.UnsetType = msgspec.UNSET
    event: str | None | msgspec.UnsetType = msgspec.UNSET
    user_id: str | int | None = None
    anonymous_id: str | int | None = None
    session_id: str | int | None = None
    occurred_at: str | int | float | None | msgspec.UnsetType = msgspec.UNSET
    timestamp: str | int | float | None | msgspec.UnsetType = msgspec.UNSET
    properties: dict[str, Any] | None | msgspec.UnsetType = msgspec.UNSET
    metadata: dict[str, Any] | None | msgspec.UnsetType = msgspec.UNSET
    context: _Context | None = None
    path: str | None = None
    page_url: str | None = None
    referrer: str | None = None


class _Events(msgspec.Struct):
    events: list[_Event]


_decode_events = msgspec.json.Decoder(_Events).decode
_NO_PAGE = _Page()
_NO_CONTEXT = _Context()
_UNSET = msgspec.UNSET
# Several canonical event ids checked by one regular expression over their lines.
_CANONICAL_IDS = re.compile(r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\n)*")


def canonical_ids(ids: list[str]) -> bool:
    """Every id a canonical UUID (one regular-expression pass over them all)."""
    return not ids or _CANONICAL_IDS.fullmatch("\n".join(ids) + "\n") is not None


def _wire_ts(text: str, moment: datetime) -> str:
    """``format_ts(moment)``; by slicing when ``text`` is already UTC with milliseconds."""
    offset = moment.utcoffset()
    if (offset is None or not offset) and len(text) >= 23 and text[4] == "-" and text[7] == "-" \
            and text[10] in "T " and text[13] == ":" and text[16] == ":" and text[19] == "." \
            and text[20:23].isdigit():
        return text[:10] + " " + text[11:23]
    return format_ts(moment)


def _fast_batch(body: bytes, limits: Limits, now: datetime) -> Batch | None:
    """The rows of a batch whose events are all valid; None for anything else."""
    try:
        events = _decode_events(body).events
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    if not 0 < len(events) <= limits.max_batch_events:
        return None
    if not canonical_ids([e.event_id for e in events if e.event_id is not None]):
        return None
    latest = now + timedelta(seconds=limits.max_future_skew_s)
    now_text = format_ts(now)
    max_id, max_text = limits.max_id_chars, limits.max_text_chars
    rows = []
    for e in events:
        event_type = e.event_type if e.event_type is not _UNSET else e.event
        if type(event_type) is not str or not event_type.strip() or len(event_type) > limits.max_event_type_chars:
            return None
        user_id, anonymous_id, session_id = e.user_id, e.anonymous_id, e.session_id
        user_id = "" if user_id is None else user_id if type(user_id) is str else str(user_id)
        anonymous_id = "" if anonymous_id is None else anonymous_id if type(anonymous_id) is str else str(anonymous_id)
        session_id = "" if session_id is None else session_id if type(session_id) is str else str(session_id)
        if (not user_id and not anonymous_id) or len(user_id) > max_id or len(anonymous_id) > max_id \
                or len(session_id) > max_id:
            return None
        when = e.occurred_at if e.occurred_at is not _UNSET else e.timestamp
        if when is None or when is _UNSET:
            occurred_at = now_text
        else:
            try:
                moment = parse_ts(when, "")
            except ValueError:
                return None
            if moment > latest or moment < EPOCH_FLOOR:
                return None
            occurred_at = _wire_ts(when, moment) if type(when) is str else format_ts(moment)
        props = e.properties if e.properties is not _UNSET else e.metadata
        if props is None or props is _UNSET:
            properties = "{}"
        else:
            try:
                encoded = orjson.dumps(props)
            except TypeError:
                return None
            if len(encoded) > limits.max_properties_bytes:
                return None
            properties = encoded.decode()
        context = e.context or _NO_CONTEXT
        page = context.page or _NO_PAGE
        path = e.path if e.path is not None else page.path
        url = e.page_url if e.page_url is not None else page.url
        referrer = e.referrer if e.referrer is not None else page.referrer
        title, user_agent, ip, locale, country = page.title, context.user_agent, context.ip, context.locale, \
            context.country
        texts = (path or "", url or "", referrer or "", title or "", user_agent or "", ip or "", locale or "",
                 country or "")
        if max(map(len, texts)) > max_text:
            return None
        path, url, referrer, title, user_agent, ip, locale, country = texts
        if not path and url:
            path = urlsplit(url).path or "/"
        rows.append({
            "event_id": e.event_id or str(uuid.uuid4()), "event_type": event_type, "user_id": user_id,
            "anonymous_id": anonymous_id, "session_id": session_id, "occurred_at": occurred_at,
            "properties": properties, "path": path, "url": url, "referrer": referrer, "title": title,
            "user_agent": user_agent, "ip": ip, "locale": locale, "country": country,
            "bot": "1" if user_agent and is_bot(user_agent) else "0",
        })
    return Batch(rows=rows, total=len(rows))
