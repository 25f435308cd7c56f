"""Pure kernels of the client paths: id derivation, clock-skew correction,
the JSON-array framing of streamed rows, Content-Digest parsing."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from pulse.core.compat import derived_event_id, skew_corrected
from pulse.core.exporting import _json_array
from pulse.core.importing import declared_sha256
from pulse.errors import InvalidInput

PROJECT = "6f1c1d2e-0000-4000-8000-000000000001"


def test_ids_keep_uuids_and_derive_the_rest() -> None:
    given = str(uuid.uuid4())
    assert derived_event_id(PROJECT, given) == given
    assert derived_event_id(PROJECT, "msg-1") == str(uuid.uuid5(uuid.UUID(PROJECT), "msg-1"))
    assert derived_event_id(PROJECT, None) is None and derived_event_id(PROJECT, "") is None


def test_skew_correction() -> None:
    received = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    corrected = skew_corrected("2025-01-01T15:50:00Z", "2025-01-01T16:00:00Z", received)
    assert datetime.fromisoformat(corrected) == received - timedelta(minutes=10)
    assert skew_corrected("2025-01-01T15:50:00Z", None, received) == "2025-01-01T15:50:00Z"
    assert skew_corrected("garbage", "2025-01-01T16:00:00Z", received) == "garbage"


@pytest.mark.parametrize("cut", [1, 3, 7, 1000])
def test_json_array_framing_whatever_the_chunking(cut: int) -> None:
    rows = [{"a": n, "s": "x\ny"} for n in range(5)]
    stream = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    chunks = [stream[i:i + cut] for i in range(0, len(stream), cut)]
    assert orjson.loads(b"".join(_json_array(iter(chunks)))) == rows
    assert orjson.loads(b"".join(_json_array(iter([])))) == []


def test_content_digest() -> None:
    raw = hashlib.sha256(b"abc").digest()
    assert declared_sha256("sha-512=:AAAA:, sha-256=:" + base64.b64encode(raw).decode() + ":") == raw.hex()
    assert declared_sha256(None) is None
    with pytest.raises(InvalidInput):
        declared_sha256("sha-256=nope")
