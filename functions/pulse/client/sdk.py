"""The Pulse Python SDK.

    from pulse.client import Pulse

    pulse = Pulse("pulse_xxxxxxxx_...", host="http://127.0.0.1:8080")
    pulse.track("signup", user_id="u-1", properties={"plan": "pro"})
    pulse.flush()          # optional: also done at exit

Events are queued and sent by one background thread in batches to
``POST /v1/events``: when ``batch_size`` events are waiting, every
``flush_interval`` seconds, on ``flush()`` and at interpreter exit. Every event
gets an ``event_id`` when queued, so a retried batch is deduplicated by Pulse.
429 and 5xx answers and connection failures are retried with exponential
backoff and full jitter, waiting at least what ``Retry-After`` asks. Bodies are
gzipped; one HTTP connection is kept alive and reused.

``AsyncPulse`` is the same client for asyncio code: ``track`` never blocks the
loop (it only queues), and ``flush``/``aclose`` wait in a worker thread.
"""

from __future__ import annotations

import asyncio
import atexit
import gzip
import json
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import urllib3

log = logging.getLogger("pulse.client")
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
MAX_BATCH = 1000  # Pulse's per-request limit


class DeliveryError(Exception):
    """A batch Pulse refused (4xx) or that failed after every retry."""

    def __init__(self, message: str, status: int | None, events: list[dict[str, Any]],
                 errors: list[Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.events = events
        self.errors = errors or []


@dataclass
class Stats:
    queued: int = 0
    sent: int = 0
    requests: int = 0
    retries: int = 0
    rejected: int = 0
    dropped: int = 0
    failed: int = 0


def backoff_delay(attempt: int, base_s: float, max_s: float, retry_after_s: float | None,
                  rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff with full jitter, never shorter than ``Retry-After``."""
    ceiling = min(max_s, base_s * (2 ** attempt))
    delay = ceiling * rng()
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, max_s))
    return delay


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class Pulse:
    def __init__(self, api_key: str, host: str = "http://127.0.0.1:8080", *, batch_size: int = 500,
                 flush_interval: float = 1.0, max_queue: int = 100_000, max_retries: int = 8,
                 backoff_base: float = 0.25, backoff_max: float = 30.0, timeout: float = 15.0,
                 gzip_bodies: bool = True, on_error: Callable[[DeliveryError], Any] | None = None) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH}")
        self.url = host.rstrip("/") + "/v1/events"
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.gzip_bodies = gzip_bodies
        self.on_error = on_error
        self.stats = Stats()
        self._headers = {"X-API-Key": api_key, "Content-Type": "application/json",
                         "User-Agent": "pulse-python/0.1"}
        self._http = urllib3.PoolManager(num_pools=1, maxsize=1, retries=False,
                                         timeout=urllib3.Timeout(total=timeout))
        self._queue: deque[dict[str, Any]] = deque()
        self._lock = threading.Condition()
        self._in_flight = 0
        self._flush_now = False
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        atexit.register(self.close)

    # Recording --------------------------------------------------------------

    def track(self, event_type: str, *, user_id: str | None = None, anonymous_id: str | None = None,
              properties: Mapping[str, Any] | None = None, occurred_at: datetime | str | None = None,
              session_id: str | None = None, context: Mapping[str, Any] | None = None,
              path: str | None = None, event_id: str | None = None) -> str:
        """Queue one event; returns its ``event_id``."""
        if user_id is None and anonymous_id is None:
            raise ValueError("user_id or anonymous_id is required")
        moment = occurred_at or datetime.now(UTC)
        event: dict[str, Any] = {
            "event_id": event_id or str(uuid.uuid4()),
            "event_type": event_type,
            "occurred_at": moment.isoformat() if isinstance(moment, datetime) else moment,
        }
        for name, value in (("user_id", user_id), ("anonymous_id", anonymous_id), ("session_id", session_id),
                            ("path", path)):
            if value is not None:
                event[name] = value
        if properties:
            event["properties"] = dict(properties)
        if context:
            event["context"] = dict(context)
        self._enqueue(event)
        return event["event_id"]

    def page(self, path: str, **kwargs: Any) -> str:
        return self.track("page_view", path=path, **kwargs)

    def _enqueue(self, event: dict[str, Any]) -> None:
        if self._closed.is_set():
            raise RuntimeError("this Pulse client is closed")
        with self._lock:
            if len(self._queue) >= self.max_queue:
                self.stats.dropped += 1
                log.warning("pulse client queue is full (%d): event dropped", self.max_queue)
                return
            self._queue.append(event)
            self.stats.queued += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pulse-client", daemon=True)
                self._thread.start()
            if len(self._queue) >= self.batch_size:
                self._lock.notify_all()

    # Delivery ---------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued now; True once it is all delivered (or given up on)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._flush_now = True
            self._lock.notify_all()
            while self._queue or self._in_flight:
                if self._thread is None or not self._thread.is_alive():
                    return not self._queue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._lock.wait(remaining if remaining is not None else 0.5)
            self._flush_now = False
        return True

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush, then stop the sender thread (also run at interpreter exit)."""
        if self._closed.is_set():
            return
        self.flush(timeout)
        self._closed.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(5)
        self._http.clear()
        atexit.unregister(self.close)

    def __enter__(self) -> Pulse:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _take(self) -> list[dict[str, Any]]:
        with self._lock:
            deadline = time.monotonic() + self.flush_interval
            while not self._closed.is_set():
                if len(self._queue) >= self.batch_size or (self._queue and self._flush_now):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            self._in_flight += len(batch)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            try:
                if batch:
                    self._deliver(batch)
            except Exception as exc:  # noqa: BLE001 - the sender thread must survive anything
                log.exception("pulse client: unexpected error")
                self._report(DeliveryError(str(exc), None, batch))
            finally:
                with self._lock:
                    self._in_flight -= len(batch)
                    self._lock.notify_all()
            if self._closed.is_set() and not self._queue:
                return

    def _deliver(self, batch: list[dict[str, Any]]) -> None:
        body = json.dumps({"events": batch}, separators=(",", ":")).encode()
        headers = dict(self._headers)
        if self.gzip_bodies:
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        attempt = 0
        while True:
            status, payload, retry_after, problem = self._post(body, headers)
            if status is not None and 200 <= status < 300:
                accepted = payload.get("accepted", len(batch)) if isinstance(payload, dict) else len(batch)
                errors = payload.get("errors", []) if isinstance(payload, dict) else []
                self.stats.sent += accepted
                if errors:
                    self.stats.rejected += len(batch) - accepted
                    self._report(DeliveryError("some events were rejected", status, batch, errors))
                return
            retryable = status is None or status in RETRYABLE
            if not retryable or attempt >= self.max_retries:
                self.stats.failed += len(batch)
                errors = payload.get("errors", []) if isinstance(payload, dict) else []
                self._report(DeliveryError(problem, status, batch, errors))
                return
            delay = backoff_delay(attempt, self.backoff_base, self.backoff_max, retry_after)
            attempt += 1
            self.stats.retries += 1
            log.info("pulse client: %s; retry %d in %.2fs", problem, attempt, delay)
            self._closed.wait(delay)

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int | None, Any, float | None, str]:
        self.stats.requests += 1
        try:
            response = self._http.request("POST", self.url, body=body, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            return None, None, None, f"connection failed: {type(exc).__name__}"
        try:
            payload = json.loads(response.data) if response.data else None
        except ValueError:
            payload = None
        detail = payload.get("detail", "") if isinstance(payload, dict) else ""
        return (response.status, payload, parse_retry_after(response.headers.get("Retry-After")),
                f"HTTP {response.status} {detail}".strip())

    def _report(self, error: DeliveryError) -> None:
        if self.on_error is None:
            log.warning("pulse client: %s (%d events)", error, len(error.events))
            return
        try:
            self.on_error(error)
        except Exception:  # noqa: BLE001 - a failing callback must not stop delivery
            log.exception("pulse client: on_error raised")


class AsyncPulse:
    """``Pulse`` for asyncio code::

        async with AsyncPulse(key, host=url) as pulse:
            pulse.track("signup", user_id="u-1")   # queues; never blocks the loop
            await pulse.flush()
    """

    def __init__(self, api_key: str, host: str = "http://127.0.0.1:8080", **options: Any) -> None:
        self.sync = Pulse(api_key, host, **options)

    def track(self, event_type: str, **kwargs: Any) -> str:
        return self.sync.track(event_type, **kwargs)

    def page(self, path: str, **kwargs: Any) -> str:
        return self.sync.page(path, **kwargs)

    @property
    def stats(self) -> Stats:
        return self.sync.stats

    async def flush(self, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.sync.flush, timeout)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncPulse:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
