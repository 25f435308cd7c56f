"""Graceful stop and backpressure: a function that is stopping finishes what it
holds and refuses the rest; a slow broker costs 503s, never a growing queue."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import pytest
import urllib3
from werkzeug.wrappers import Request, Response

from pulse import telemetry
from pulse.bus import kafka as kafka_bus
from pulse.bus.cloudevents import CloudEvent
from pulse.errors import Unavailable
from pulse.local.embedded import Broker
from pulse.local.gateway import Server
from pulse.web.http import HttpFunction, Route, json_response
from tests.faults.conftest import wait_until

pytestmark = pytest.mark.faults
http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=30))


class Slow(HttpFunction):
    name = "slow"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        super().__init__()

    def routes(self) -> Iterable[Route]:
        return [Route("POST", "/work", self.work, "work")]

    def work(self, request: Request) -> Response:
        self.entered.set()
        assert self.release.wait(30)
        return json_response({"done": True})


def test_stopping_function_finishes_in_flight_work_and_refuses_more() -> None:
    function = Slow()
    server = Server("slow", function.wsgi, "127.0.0.1", 0).start()
    answers: list[int] = []
    try:
        first = threading.Thread(target=lambda: answers.append(http.request("POST", server.url + "/work").status))
        first.start()
        assert function.entered.wait(30)
        function.begin_stop()
        refused = http.request("POST", server.url + "/work")
        assert refused.status == 503
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert http.request("GET", server.url + "/readyz").status == 503
        assert http.request("GET", server.url + "/healthz").status == 200
        assert function.in_flight == 1
        assert not function.wait_idle(0.05)  # the first request is still held
        function.release.set()
        assert function.wait_idle(30)
        first.join(30)
        assert answers == [200]
    finally:
        function.release.set()
        server.stop()


def test_a_slow_broker_gets_503_not_a_queue(tmp_path: Path) -> None:
    broker = Broker.start(tmp_path)
    producer = kafka_bus.Producer(broker.bootstrap, ack_timeout_s=3.0, retry_after_s=1, max_in_flight=1)
    record = CloudEvent.new("dev.pulse.test", "/faults", b"{}")
    refused = telemetry.KAFKA_PRODUCE_REFUSED.labels("faults.bp")
    try:
        kafka_bus.ensure_topics(broker.bootstrap, {"faults.bp": 1})
        producer.send("faults.bp", "k", record)  # connected, metadata known
        broker.pause()
        outcomes: list[str] = []

        def waiting_send() -> None:
            try:
                producer.send("faults.bp", "k", record)
                outcomes.append("acknowledged")
            except Unavailable:
                outcomes.append("503")

        waiting = threading.Thread(target=waiting_send)
        waiting.start()
        wait_until(lambda: producer.in_flight == 1, 10, "a record waiting for the paused broker")
        before = refused._value.get()
        with pytest.raises(Unavailable) as raised:
            producer.send("faults.bp", "k", record)
        assert raised.value.retry_after_s == 1
        assert "already wait" in raised.value.detail
        assert refused._value.get() == before + 1
        broker.resume()
        waiting.join(30)
        assert len(outcomes) == 1  # acknowledged late, or refused at the ack timeout: never hung
        producer.send("faults.bp", "k", record)  # and the producer works again
    finally:
        broker.resume()
        producer.close()
        broker.stop()
