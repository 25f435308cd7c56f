"""The Python SDK against the running embedded Pulse: batching, flush, asyncio,
rejections, and a retry through a real 503 (the broker paused)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pulse.client import AsyncPulse, DeliveryError, Pulse
from pulse.client.sdk import backoff_delay
from tests.conftest import wait_persisted


def stored_ids(pulse: Any, project_id: str) -> list[str]:
    return [r[0] for r in pulse.services.ch.rows(
        "SELECT toString(event_id) FROM events WHERE project_id = {p:UUID}", {"p": project_id})]


def test_batches_flush_and_every_event_lands_once(pulse: Any, project: Any) -> None:
    errors: list[DeliveryError] = []
    with Pulse(project.key, host=pulse.gateway_url, batch_size=200, flush_interval=0.05,
               on_error=errors.append) as client:
        ids = [client.track("click", user_id=f"u{n % 7}", properties={"n": n}) for n in range(1050)]
        ids.append(client.page("/pricing", anonymous_id="anon"))
        assert client.flush(30)
        assert client.stats.sent == 1051 and errors == []
        assert client.stats.requests == 6  # 1051 events in batches of at most 200
    wait_persisted(pulse)
    got = stored_ids(pulse, project.project_id)
    assert sorted(got) == sorted(ids)


def test_rejected_events_are_reported(pulse: Any, project: Any) -> None:
    errors: list[DeliveryError] = []
    client = Pulse(project.key, host=pulse.gateway_url, on_error=errors.append)
    client.track("ok", user_id="u")
    client.track("x" * 300, user_id="u")
    client.close()
    assert client.stats.sent == 1 and client.stats.rejected == 1
    assert errors and errors[0].errors[0]["field"] == "event_type"
    bad = Pulse("pulse_nope0000_" + "x" * 32, host=pulse.gateway_url, on_error=errors.append)
    bad.track("ok", user_id="u")
    bad.close()
    assert errors[-1].status == 401 and bad.stats.failed == 1 and bad.stats.retries == 0


def test_asyncio_use(pulse: Any, project: Any) -> None:
    async def main() -> list[str]:
        async with AsyncPulse(project.key, host=pulse.gateway_url, flush_interval=0.05) as client:
            ids = [client.track("async", user_id="a") for _ in range(50)]
            assert await client.flush(30)
            return ids

    ids = asyncio.run(main())
    wait_persisted(pulse)
    assert sorted(stored_ids(pulse, project.project_id)) == sorted(ids)


def test_backoff_is_exponential_with_jitter_and_honours_retry_after() -> None:
    assert [backoff_delay(n, 0.25, 30, None, rng=lambda: 1.0) for n in range(9)] == [
        0.25, 0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff_delay(3, 0.25, 30, None, rng=lambda: 0.5) == 1.0
    assert backoff_delay(0, 0.25, 30, 5.0, rng=lambda: 0.1) == 5.0
    assert backoff_delay(0, 0.25, 30, 500.0, rng=lambda: 0.1) == 30


def test_retries_through_a_503_and_lands_exactly_once(pulse: Any, project: Any) -> None:
    errors: list[DeliveryError] = []
    client = Pulse(project.key, host=pulse.gateway_url, batch_size=100, flush_interval=0.05,
                   backoff_base=0.1, on_error=errors.append)
    broker = pulse.stack.broker
    broker.pause()
    try:
        ids = [client.track("during-outage", user_id=f"u{n}") for n in range(250)]
        deadline = time.monotonic() + 60
        while client.stats.retries < 1:  # ingest answered 503 (Kafka unacknowledged) and the SDK backs off
            assert time.monotonic() < deadline, "the SDK never retried"
            time.sleep(0.05)
    finally:
        broker.resume()
    assert client.flush(90)
    client.close()
    assert errors == [] and client.stats.sent == 250 and client.stats.retries >= 1
    wait_persisted(pulse)
    got = stored_ids(pulse, project.project_id)
    assert len(got) == 250 and sorted(got) == sorted(ids)
