"""The gateway's proxy for functions served by other processes."""

from __future__ import annotations

import orjson
from werkzeug.test import Client
from werkzeug.wrappers import Request, Response

from pulse.local.embedded import free_port
from pulse.local.gateway import Proxy, Server


def test_a_stopped_process_gets_503_problem_not_a_crash() -> None:
    answer = Client(Proxy([f"http://127.0.0.1:{free_port()}"])).post("/v1/events", data=b"{}")
    assert answer.status_code == 503
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.headers["Retry-After"] == "2"
    assert orjson.loads(answer.data)["status"] == 503


def test_requests_and_answers_pass_through_unchanged() -> None:
    seen: list[tuple[str, str, str, bytes]] = []

    def app(environ: dict, start_response: object) -> object:
        request = Request(environ)
        seen.append((request.method, request.full_path, request.headers.get("X-API-Key", ""), request.get_data()))
        return Response(b'{"ok": 1}', status=202, headers={"X-Request-ID": "r-1"},
                        content_type="application/json")(environ, start_response)

    server = Server("echo", app, "127.0.0.1", 0).start()
    try:
        body = b"x" * 300_000
        answer = Client(Proxy([server.url])).post("/v1/events?a=1&b=%C3%A9", data=body,
                                                  headers={"X-API-Key": "k1"})
        assert answer.status_code == 202
        assert answer.headers["X-Request-ID"] == "r-1"
        assert answer.data == b'{"ok": 1}'
        assert seen == [("POST", "/v1/events?a=1&b=%C3%A9", "k1", body)]
    finally:
        server.stop()
