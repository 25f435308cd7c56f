"""/metrics: parsed as Prometheus reads it, the series move as traffic flows,
and several gunicorn workers add up instead of each telling its own story."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from prometheus_client.parser import text_string_to_metric_families

from pulse.local.embedded import free_port
from tests.conftest import ROOT, Api, make_event, wait_persisted

http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=30))


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = http.request("GET", url + "/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.data.decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def raw_source(pulse: Any) -> Any:
    """The dispatcher's KafkaSource on the raw-events topic."""
    return next(w.sub for w in pulse.dispatcher.workers if pulse.settings.raw_topic in w.sub.topics)


def test_series_move_when_traffic_flows(pulse: Any, project: Any) -> None:
    ingest_url, aggregate_url = pulse.url("ingest"), pulse.url("aggregate")
    before = scrape(ingest_url)
    events = [make_event(), make_event(), make_event()]
    answer = project.api.post("/v1/events", {"events": [*events, make_event(occurred_at="yesterday-ish")]})
    assert answer.status == 202 and answer.json["accepted"] == 3
    assert project.api.post("/v1/events", {"events": [make_event()]}, key="pulse_nope").status == 401
    wait_persisted(pulse)
    assert project.api.post("/v1/events", {"events": events[:2]}).status == 202  # same ids again
    wait_persisted(pulse)
    assert project.api.get("/v1/stats/top-events").status == 200
    after = scrape(aggregate_url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("pulse_http_requests_total", function="ingest", route="events", status="202") == 2
    assert moved("pulse_http_requests_total", function="ingest", route="events", status="401") == 1
    assert moved("pulse_http_request_duration_seconds_count", function="ingest", route="events") == 3
    assert moved("pulse_http_requests_total", function="aggregate", route="top-events", status="200") == 1
    assert moved("pulse_http_requests_total", function="persist", route="ce-ingested", status="200") == 2
    assert moved("pulse_events_accepted_total", source="events") == 5
    assert moved("pulse_events_rejected_total", reason="occurred_at") == 1
    assert moved("pulse_kafka_produce_duration_seconds_count", topic=pulse.settings.raw_topic) == 2
    assert moved("pulse_persist_batch_size_count") == 2
    assert moved("pulse_persist_batch_size_sum") == 5
    assert moved("pulse_persist_events_inserted_total") == 3
    assert moved("pulse_persist_duplicates_total") == 2
    assert moved("pulse_clickhouse_insert_duration_seconds_count") == 1
    assert moved("pulse_dispatch_deliveries_total", route=raw_source(pulse).name, outcome="delivered") == 2
    assert moved("pulse_query_duration_seconds_count", endpoint="top-events") == 1
    assert value(after, "pulse_http_requests_in_flight", function="ingest") == 0


def test_consumer_lag_per_partition_returns_to_zero(pulse: Any, project: Any) -> None:
    for _ in range(3):
        assert project.api.post("/v1/events", {"events": [make_event()]}).status == 202
    wait_persisted(pulse)
    topic, partitions = pulse.settings.raw_topic, pulse.settings.raw_topic_partitions
    deadline = time.monotonic() + 30
    while True:
        samples = scrape(pulse.url("persist"))
        lags = {labels: v for (name, labels), v in samples.items() if name == "pulse_consumer_lag"
                and ("topic", topic) in labels and ("group", raw_source(pulse).group) in labels}
        if len(lags) == partitions and all(v == 0 for v in lags.values()):
            break
        assert time.monotonic() < deadline, f"lag per partition never settled at 0: {lags}"
        time.sleep(0.1)
    assert sorted(dict(labels)["partition"] for labels in lags) == [str(p) for p in range(partitions)]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_accepts_the_exposition(pulse: Any, project: Any) -> None:
    assert project.api.post("/v1/events", {"events": [make_event()]}).status == 202
    wait_persisted(pulse)
    text = http.request("GET", pulse.url("ingest") + "/metrics").data
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


@pytest.fixture
def served_ingest(pulse: Any, tmp_path: Any) -> Iterator[str]:
    """ingest as the container runs it: `pulse serve ingest` under gunicorn with two workers."""
    port = free_port()
    env = {**os.environ, "WORKERS": "2", "THREADS": "2", "PORT": str(port), "HOST": "127.0.0.1",
           "PULSE_POSTGRES_URL": pulse.settings.postgres_url, "PULSE_KAFKA_BOOTSTRAP": pulse.settings.kafka_bootstrap,
           "PULSE_STATE_DIR": str(tmp_path)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(tmp_path / "serve.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "pulse.cli", "serve", "ingest"], env=env, cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                if http.request("GET", url + "/healthz").status == 200:
                    break
            except urllib3.exceptions.HTTPError:
                pass
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "pulse serve ingest did not come up"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def test_workers_add_up_under_gunicorn(served_ingest: str, project: Any) -> None:
    api = Api(served_ingest, project.key)
    sent = 24
    for _ in range(sent):
        assert api.post("/v1/events", {"events": [make_event()]}).status == 202
    for _ in range(5):  # whichever worker answers the scrape, the total is the same
        samples = scrape(served_ingest)
        assert value(samples, "pulse_http_requests_total", function="ingest", route="events", status="202") == sent
        assert value(samples, "pulse_events_accepted_total", source="events") == sent
        assert value(samples, "pulse_kafka_produce_duration_seconds_count", topic="pulse.events.raw") == sent
