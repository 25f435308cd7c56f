"""`helm test` for Pulse: one event in through ingest, back out through export.

Registers a throwaway user, creates a project and an API key with the
`ingest` and `read` scopes, posts one event with a fresh event_id, then polls
GET /v1/export until that event_id comes back or the deadline passes.
Standard library only; URLs come from the environment.
"""

import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
import uuid

AUTH = os.environ["PULSE_AUTH_URL"]
INGEST = os.environ["PULSE_INGEST_URL"]
EXPORT = os.environ["PULSE_EXPORT_URL"]
DEADLINE = time.monotonic() + float(os.environ.get("PULSE_TEST_TIMEOUT", "180"))


def call(method, url, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - http URLs from the chart
    req.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - http URLs from the chart
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def expect(status, payload, wanted, step):
    if status not in wanted:
        sys.exit(f"{step}: HTTP {status}: {payload[:500]!r}")
    return json.loads(payload) if payload else {}


def until_ok(method, url, body=None, headers=None, wanted=(200,)):
    """Retry while functions scale from zero or dependencies warm up."""
    while True:
        status, payload = call(method, url, body, headers)
        if status in wanted or time.monotonic() > DEADLINE or status < 500:
            return status, payload
        time.sleep(2)


def main():
    email = f"helm-test-{uuid.uuid4().hex[:12]}@example.com"
    password = secrets.token_urlsafe(18)
    expect(*until_ok("POST", f"{AUTH}/v1/auth/register",
                     {"email": email, "password": password}, wanted=(201,)),
           (201,), "register")
    tokens = expect(*call("POST", f"{AUTH}/v1/auth/login",
                          {"email": email, "password": password}), (200,), "login")
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    project = expect(*call("POST", f"{AUTH}/v1/projects", {"name": "helm-test"}, bearer),
                     (201,), "create project")
    pid = project["project_id"]
    key = expect(*call("POST", f"{AUTH}/v1/projects/{pid}/api-keys",
                       {"name": "helm-test", "scopes": ["ingest", "read"]}, bearer),
                 (201,), "create api key")
    api_key = {"X-API-Key": key["api_key"]}

    event_id = str(uuid.uuid4())
    event = {"event_id": event_id, "event_type": "helm_test", "user_id": "helm-test"}
    accepted = expect(*until_ok("POST", f"{INGEST}/v1/events", event, api_key, wanted=(202,)),
                      (202,), "ingest")
    if accepted.get("accepted") != 1:
        sys.exit(f"ingest: expected 1 accepted event, got {accepted}")

    url = f"{EXPORT}/v1/export?format=ndjson&event_type=helm_test&project_id={pid}"
    while time.monotonic() < DEADLINE:
        status, payload = call("GET", url, headers=api_key)
        if status == 200 and event_id.encode() in payload:
            print(f"ok: event {event_id} ingested, persisted and exported")
            return
        time.sleep(3)
    sys.exit(f"event {event_id} did not come back through export in time")


if __name__ == "__main__":
    main()
