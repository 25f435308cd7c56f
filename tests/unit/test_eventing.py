from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pulse.bus.cloudevents import CloudEvent
from pulse.errors import InvalidInput
from pulse.local.dispatcher import DeliverySpec, Subscription
from pulse.local.eventing import Cron, PingScheduler


def test_backoff_policies() -> None:
    assert [DeliverySpec(backoff_delay_s=0.5).delay(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert [DeliverySpec(backoff_policy="linear", backoff_delay_s=0.5).delay(n) for n in (1, 2, 3)] == [0.5, 1.0, 1.5]


def test_trigger_filters_match_attributes_exactly() -> None:
    sub = Subscription("t", ("topic",), "g", "http://x", filter=(("source", "/a"), ("type", "t1")))
    event = CloudEvent.new("t1", "/a", b"")
    assert sub.matches(event)
    assert not sub.matches(CloudEvent.new("t1", "/ab", b""))
    assert not sub.matches(CloudEvent.new("t1x", "/a", b""))
    assert Subscription("s", ("topic",), "g", "http://x").matches(event)


def test_cron_daily_schedule() -> None:
    cron = Cron("17 3 * * *")
    assert cron.next_after(datetime(2026, 11, 22, 3, 17, tzinfo=UTC)) == datetime(2026, 11, 23, 3, 17, tzinfo=UTC)
    assert cron.next_after(datetime(2026, 11, 22, 1, 0, tzinfo=UTC)) == datetime(2026, 11, 22, 3, 17, tzinfo=UTC)


def test_cron_fields() -> None:
    cron = Cron("*/15 9-17 * * 1-5")
    assert cron.matches(datetime(2026, 11, 23, 9, 45, tzinfo=UTC))  # a Monday
    assert not cron.matches(datetime(2026, 11, 22, 9, 45, tzinfo=UTC))  # a Sunday
    assert not cron.matches(datetime(2026, 11, 23, 9, 46, tzinfo=UTC))
    assert Cron("0 0 1,15 * *").next_after(datetime(2026, 11, 2, tzinfo=UTC)) == datetime(2026, 11, 15, tzinfo=UTC)
    for bad in ("* * *", "61 * * * *", "* 24 * * *", "a * * * *"):
        with pytest.raises((InvalidInput, ValueError)):
            Cron(bad)


def test_ping_scheduler_finds_every_firing_in_a_window() -> None:
    scheduler = PingScheduler([("daily", Cron("17 3 * * *"), CloudEvent.new("t", "/s", b""), "http://x")],
                              lambda url, event: None)
    fired = scheduler.due(datetime(2026, 11, 20, 12, 0, tzinfo=UTC), datetime(2026, 11, 22, 12, 0, tzinfo=UTC))
    assert fired == [("daily", datetime(2026, 11, 21, 3, 17, tzinfo=UTC)),
                     ("daily", datetime(2026, 11, 22, 3, 17, tzinfo=UTC))]
