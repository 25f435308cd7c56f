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


def test_the_main_gateway_takes_the_client_address_only_from_a_front_with_the_key() -> None:
    """A front (an ingest process serving the public port) proxies other paths to
    the main process's gateway with the client's address; the gateway believes it
    only with the key, and no function ever sees the two headers."""
    from pulse.local.gateway import Gateway

    seen: list[tuple[str, str, str]] = []

    def auth(environ: dict, start_response: object) -> object:
        request = Request(environ)
        seen.append((request.remote_addr or "", request.headers.get("X-Pulse-Peer", ""),
                     request.headers.get("X-Pulse-Front", "")))
        return Response(b"{}", content_type="application/json")(environ, start_response)

    main = Server("main", Gateway(lambda path: "auth", {"auth": auth}, auth, front_key="k3y"), "127.0.0.1", 0).start()
    try:
        front = Client(Proxy([main.url], front_key="k3y"))
        assert front.post("/v1/auth/login", environ_base={"REMOTE_ADDR": "203.0.113.7"}).status_code == 200
        forged = Client(Proxy([main.url], front_key="guess"))
        assert forged.post("/v1/auth/login", environ_base={"REMOTE_ADDR": "198.51.100.1"}).status_code == 200
        direct = Client(Proxy([main.url]))  # a client on the loopback port sending the headers itself
        assert direct.post("/v1/auth/login", headers={"X-Pulse-Peer": "192.0.2.1", "X-Pulse-Front": "k3y2"}
                           ).status_code == 200
    finally:
        main.stop()
    assert [peer for peer, _, _ in seen] == ["203.0.113.7", "127.0.0.1", "127.0.0.1"]
    assert all(header == "" and key == "" for _, header, key in seen)
