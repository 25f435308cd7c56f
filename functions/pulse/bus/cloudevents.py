"""CloudEvents v1.0: one small immutable envelope and its bindings.

HTTP binary (``ce-*`` headers) and structured (``application/cloudevents+json``)
modes, the HTTP batch mode, and the Kafka binary binding (``ce_*`` headers,
``content-type`` for ``datacontenttype``). The data stays bytes: a record
passes Kafka → HTTP without being parsed, and only its consumer decodes it.
Round-trip tests check these against the ``cloudevents`` SDK.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Protocol

import orjson

from pulse.errors import FieldError, InvalidInput

SPECVERSION = "1.0"
REQUIRED = ("id", "source", "type", "specversion")
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
INGESTED = "dev.pulse.events.ingested"
PERSISTED = "dev.pulse.events.persisted"
EXPORT_REQUESTED = "dev.pulse.export.requested"
PERSON_DELETION_REQUESTED = "dev.pulse.person.deletion.requested"
MAINTENANCE_REQUESTED = "dev.pulse.maintenance.requested"


class HeaderItems(Protocol):
    """HTTP headers as any server gives them (a dict, werkzeug's ``Headers``)."""

    def items(self) -> Iterable[tuple[str, str]]: ...


@dataclass(frozen=True)
class CloudEvent:
    attributes: Mapping[str, str]
    data: bytes = b""

    @classmethod
    def new(cls, type: str, source: str, data: bytes, *, content_type: str = "application/json",
            id: str | None = None, **extensions: str | None) -> CloudEvent:
        attrs = {
            "specversion": SPECVERSION,
            "id": id or str(uuid.uuid4()),
            "source": source,
            "type": type,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "datacontenttype": content_type,
        }
        attrs.update({k: v for k, v in extensions.items() if v})
        return cls(MappingProxyType(attrs), data)

    @property
    def id(self) -> str:
        return self.attributes["id"]

    @property
    def type(self) -> str:
        return self.attributes["type"]

    @property
    def source(self) -> str:
        return self.attributes["source"]

    def get(self, name: str) -> str | None:
        return self.attributes.get(name)

    def json(self) -> Any:
        try:
            return orjson.loads(self.data)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput.field("data", f"is not valid JSON ({exc.msg})") from exc


def _checked(attrs: dict[str, str], data: bytes) -> CloudEvent:
    missing = [name for name in REQUIRED if not attrs.get(name)]
    if missing:
        raise InvalidInput(
            f"not a CloudEvent: missing {', '.join(missing)}",
            [FieldError(name, "is required") for name in missing],
        )
    if attrs["specversion"] != SPECVERSION:
        raise InvalidInput.field("specversion", f"must be {SPECVERSION}")
    return CloudEvent(MappingProxyType(attrs), data)


# HTTP -----------------------------------------------------------------------

def to_http(event: CloudEvent) -> dict[str, str]:
    """Headers of the HTTP binary mode; the body is ``event.data``."""
    headers = {}
    for name, value in event.attributes.items():
        if name == "datacontenttype":
            headers["Content-Type"] = value
        else:
            headers[f"ce-{name}"] = value
    return headers


def from_http(headers: HeaderItems, body: bytes) -> CloudEvent:
    """Binary or structured mode; raises InvalidInput when it is neither."""
    lowered = {k.lower(): v for k, v in headers.items()}
    content_type = lowered.get("content-type", "")
    if content_type.split(";")[0].strip() == STRUCTURED:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput.field("body", f"is not valid JSON ({exc.msg})") from exc
        return from_structured(doc)
    attrs = {k[3:]: v for k, v in lowered.items() if k.startswith("ce-")}
    if content_type:
        attrs["datacontenttype"] = content_type
    return _checked(attrs, body)


def from_structured(doc: Any) -> CloudEvent:
    if not isinstance(doc, Mapping):
        raise InvalidInput.field("body", "a structured CloudEvent must be a JSON object")
    attrs = {k: str(v) for k, v in doc.items() if k not in ("data", "data_base64") and v is not None}
    if "data_base64" in doc:
        try:
            data = base64.b64decode(doc["data_base64"], validate=True)
        except (ValueError, TypeError) as exc:
            raise InvalidInput.field("data_base64", "is not valid base64") from exc
    elif "data" in doc:
        value = doc["data"]
        data = value.encode() if isinstance(value, str) and not _is_json(attrs) else orjson.dumps(value)
        attrs.setdefault("datacontenttype", "application/json")
    else:
        data = b""
    return _checked(attrs, data)


def _is_json(attrs: Mapping[str, str]) -> bool:
    content_type = attrs.get("datacontenttype", "application/json")
    return content_type.startswith("application/json") or content_type.endswith("+json")


def from_batch(body: bytes) -> list[CloudEvent]:
    try:
        docs = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput.field("body", f"is not valid JSON ({exc.msg})") from exc
    if not isinstance(docs, list):
        raise InvalidInput.field("body", "a CloudEvents batch must be a JSON array")
    return [from_structured(doc) for doc in docs]


def to_structured(event: CloudEvent) -> dict[str, Any]:
    doc: dict[str, Any] = dict(event.attributes)
    if _is_json(event.attributes) and event.data:
        doc["data"] = orjson.loads(event.data)
    elif event.data:
        doc["data_base64"] = base64.b64encode(event.data).decode()
    return doc


# Kafka ----------------------------------------------------------------------

def to_kafka_headers(event: CloudEvent) -> list[tuple[str, bytes]]:
    headers = []
    for name, value in event.attributes.items():
        key = "content-type" if name == "datacontenttype" else f"ce_{name}"
        headers.append((key, value.encode()))
    return headers


def from_kafka(headers: Iterable[tuple[str, bytes | None]], value: bytes | None,
               key: bytes | str | None = None) -> CloudEvent | None:
    """The CloudEvent in a binary-mode record, or None when the record is not one.
    The record key is the ``partitionkey`` attribute, as the binding says."""
    attrs: dict[str, str] = {}
    if key is not None:
        attrs["partitionkey"] = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    for key, raw in headers:
        text = (raw or b"").decode("utf-8", "replace")
        if key.startswith("ce_"):
            attrs[key[3:]] = text
        elif key.lower() == "content-type":
            attrs["datacontenttype"] = text
    if not all(attrs.get(name) for name in REQUIRED):
        return None
    return CloudEvent(MappingProxyType(attrs), value or b"")


def receive(headers: HeaderItems, body: bytes) -> list[CloudEvent]:
    """Every CloudEvent in an HTTP request: binary, structured or batch mode."""
    content_type = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    if content_type.split(";")[0].strip() == BATCH:
        return from_batch(body)
    return [from_http(headers, body)]
