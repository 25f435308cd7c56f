"""Publishing CloudEvents to ``K_SINK`` (a SinkBinding puts the Broker's address
there in the cluster; the embedded runtime sets it locally).

Events are POSTed in HTTP binary mode. Publishing is not a reply: a
KafkaSource drops its sink's replies, so a function that must tell the Broker
something sends it here itself. With a ``token`` (the OIDC token a SinkBinding
mounts, or one the embedded runtime mints) each request carries it as
``Authorization: Bearer``, as the Broker's ingress requires
(pulse.security.eventauth).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import urllib3

from pulse import telemetry
from pulse.bus.cloudevents import CloudEvent, to_http
from pulse.errors import Unavailable

# Sized for the requests a function serves at once (each may publish), so
# connections are kept rather than opened and dropped per event.
_http = urllib3.PoolManager(num_pools=8, maxsize=32, retries=False)


def post_event(url: str, event: CloudEvent, timeout_s: float = 10.0,
               token: Callable[[], str] | None = None) -> int:
    """One delivery attempt; the HTTP status, or raises on a transport failure."""
    headers = to_http(event)
    if token is not None:
        headers["Authorization"] = f"Bearer {token()}"
    traceparent = event.get("traceparent") or telemetry.current_traceparent()
    if traceparent:
        headers["traceparent"] = traceparent
    response = _http.request("POST", url, body=event.data, headers=headers,
                             timeout=urllib3.Timeout(total=timeout_s), preload_content=True)
    return response.status


def publish(url: str | None, event: CloudEvent, attempts: int = 3, token: Callable[[], str] | None = None) -> bool:
    """Send ``event`` to the sink, retrying briefly; False when there is no sink."""
    if not url:
        return False
    delay = 0.1
    for attempt in range(1, attempts + 1):
        try:
            status = post_event(url, event, token=token)
            if 200 <= status < 300:
                return True
            problem = f"status {status}"
        except urllib3.exceptions.HTTPError as exc:
            problem = type(exc).__name__
        if attempt < attempts:
            time.sleep(delay)
            delay *= 2
    raise Unavailable(f"the event sink did not take {event.type}") from ConnectionError(f"sink {url}: {problem}")
