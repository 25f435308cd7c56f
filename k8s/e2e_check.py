"""The measurable part of k8s/e2e.sh: through the public Gateway, register a
user, create a project and an ingest+read key, post 1,000 events in one
batch, then poll GET /v1/stats/top-events until it equals the counts computed
here, or the deadline passes. Standard library only.

    python3 k8s/e2e_check.py http://127.0.0.1:8080 pulse.127.0.0.1.sslip.io
"""

import collections
import json
import secrets
import sys
import time
import urllib.error
import urllib.request
import uuid

EVENTS = 1000
TYPES = ("signup", "page_view", "click", "purchase", "logout")


def call(base, host, method, path, body=None, headers=None):
    if not base.startswith("http://"):
        sys.exit(f"not an http:// URL: {base}")
    req = urllib.request.Request(base + path,  # noqa: S310 - http:// only, checked above data=None if body is None else json.dumps(body).encode(),
                                 method=method)
    req.add_header("Host", host)
    req.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - http:// only
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, err.read()[:500]
    except OSError as err:  # a function still scaling from zero
        return 0, str(err)


def until(base, host, method, path, body, headers, wanted, deadline):
    while True:
        status, answer = call(base, host, method, path, body, headers)
        if status == wanted or time.monotonic() > deadline:
            if status != wanted:
                sys.exit(f"{method} {path}: HTTP {status}: {answer!r}")
            return answer
        time.sleep(2)


def main(base, host, timeout_s=600.0):
    deadline = time.monotonic() + timeout_s
    email, password = f"e2e-{uuid.uuid4().hex[:12]}@example.com", secrets.token_urlsafe(18)
    until(base, host, "POST", "/v1/auth/register", {"email": email, "password": password}, None, 201, deadline)
    tokens = until(base, host, "POST", "/v1/auth/login", {"email": email, "password": password}, None, 200,
                   deadline)
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    project = until(base, host, "POST", "/v1/projects", {"name": "e2e"}, bearer, 201, deadline)
    key = until(base, host, "POST", f"/v1/projects/{project['project_id']}/api-keys",
                {"name": "e2e", "scopes": ["ingest", "read"]}, bearer, 201, deadline)["api_key"]
    events = [{"event_id": str(uuid.uuid4()), "event_type": TYPES[(i * i) % len(TYPES)], "user_id": f"u{i % 97}"}
              for i in range(EVENTS)]
    accepted = until(base, host, "POST", "/v1/events", {"events": events}, {"X-API-Key": key}, 202, deadline)
    if accepted != {"accepted": EVENTS, "errors": []}:
        sys.exit(f"ingest answered {accepted}")
    counts = collections.Counter(e["event_type"] for e in events)
    users = {t: len({e["user_id"] for e in events if e["event_type"] == t}) for t in counts}
    expected = sorted(({"event_type": t, "count": n, "users": users[t]} for t, n in counts.items()),
                      key=lambda row: (-row["count"], row["event_type"]))
    while True:
        status, top = call(base, host, "GET", "/v1/stats/top-events?limit=100", None, {"X-API-Key": key})
        if status == 200 and top == expected:
            print(f"ok: {EVENTS} events in through the Gateway, top-events exact: {expected}")
            return
        if time.monotonic() > deadline:
            sys.exit(f"top-events is {top!r}, expected {expected!r}")
        time.sleep(3)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
