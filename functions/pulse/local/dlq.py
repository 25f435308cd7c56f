"""Dead letters: list what the dead-letter topic holds, and replay it.

A record lands on the dead-letter topic when its delivery failed for good
(persist answered 4xx, or 5xx after every retry). It keeps the original
CloudEvent (binary mode, or structured when the KafkaSink writes that) plus
the ``knativeerror*`` attributes saying who refused it and why.

Replay re-produces the chosen records, as binary-mode CloudEvents without the
error attributes, to the raw-events topic (after the cause was fixed). It is
idempotent: the CloudEvent id is the batch id persist dedups by, so a record
that was already persisted (or is replayed twice) is stored once. Reading the
dead-letter topic uses no consumer group and commits nothing: the topic stays
as it was, for the record.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from pulse.bus import kafka as kafka_bus
from pulse.bus.cloudevents import (
    CloudEvent,
    from_kafka,
    from_structured,
    to_kafka_headers,
)
from pulse.errors import PulseError

ERROR_ATTRIBUTES = ("knativeerrorcode", "knativeerrordest", "knativeerrordata",
                    "pulsesourcetopic", "pulsesourceoffset")


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    event: CloudEvent | None  # None: the record is not a CloudEvent at all
    value: bytes

    @property
    def id(self) -> str:
        return self.event.id if self.event else f"partition:{self.partition}/offset:{self.offset}"

    def attribute(self, name: str) -> str:
        return (self.event.get(name) if self.event else None) or ""

    @property
    def error(self) -> str:
        """The refusal's body as the dispatcher or Knative recorded it (base64)."""
        raw = self.attribute("knativeerrordata")
        try:
            return base64.b64decode(raw, validate=True).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            return raw

    def summary(self) -> dict[str, object]:
        return {
            "partition": self.partition, "offset": self.offset,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.timestamp_ms / 1000)),
            "id": self.id, "type": self.attribute("type"), "source": self.attribute("source"),
            "key": (self.key or b"").decode("utf-8", "replace"),
            "status": self.attribute("knativeerrorcode"), "destination": self.attribute("knativeerrordest"),
            "error": self.error[:200], "bytes": len(self.value),
        }

    def replayable(self) -> CloudEvent | None:
        """The original CloudEvent without the dead-letter attributes."""
        if self.event is None:
            return None
        attrs = {k: v for k, v in self.event.attributes.items() if k not in ERROR_ATTRIBUTES}
        return CloudEvent(MappingProxyType(attrs), self.event.data)


def _decode(record: ConsumerRecord) -> DeadLetter:
    headers = list(record.headers or [])
    event = from_kafka(headers, record.value, record.key)
    if event is None and record.value:
        content_type = next((v for k, v in headers if k.lower() == "content-type"), b"") or b""
        if content_type.startswith(b"application/cloudevents+json"):
            try:
                event = from_structured(orjson.loads(record.value))
            except (orjson.JSONDecodeError, PulseError):
                event = None
    return DeadLetter(record.partition, record.offset, record.timestamp, record.key, event, record.value or b"")


def read(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[DeadLetter]:
    """Every record now on ``topic``, oldest first per partition."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             max_partition_fetch_bytes=kafka_bus.MAX_RECORD_BYTES,
                             fetch_max_bytes=4 * kafka_bus.MAX_RECORD_BYTES)
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        letters: list[DeadLetter] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} took longer than {timeout_s}s")
            for records in consumer.poll(timeout_ms=500).values():
                letters.extend(_decode(r) for r in records if r.offset < ends[TopicPartition(topic, r.partition)])
        return sorted(letters, key=lambda d: (d.partition, d.offset))
    finally:
        consumer.close(autocommit=False)


def select(letters: Sequence[DeadLetter], ids: Iterable[str] = ()) -> list[DeadLetter]:
    wanted = set(ids)
    return [d for d in letters if not wanted or d.id in wanted]


def replay(bootstrap: str, letters: Sequence[DeadLetter], topic: str,
           timeout_s: float = 30.0) -> tuple[list[DeadLetter], list[DeadLetter]]:
    """Re-produce ``letters`` to ``topic``; (replayed, skipped as not a CloudEvent)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                             max_request_size=kafka_bus.MAX_RECORD_BYTES)
    replayed, skipped = [], []
    try:
        futures = []
        for letter in letters:
            event = letter.replayable()
            if event is None:
                skipped.append(letter)
                continue
            key = letter.key or (event.get("partitionkey") or "").encode() or None
            futures.append(producer.send(topic, key=key, value=event.data, headers=to_kafka_headers(event)))
            replayed.append(letter)
        for future in futures:
            future.get(timeout=timeout_s)
    finally:
        producer.close(timeout=10)
    return replayed, skipped
