"""Serving WSGI apps on local ports, and the gateway: the one public host of
the embedded run, routing paths to the functions as the cluster's HTTPRoutes do."""

from __future__ import annotations

import hmac
import itertools
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import quote

import urllib3
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wsgi import LimitedStream

from pulse.errors import Unavailable
from pulse.host import serves as host_serves
from pulse.web.http import REQUEST_ID, HttpFunction, problem_from

CHUNK = 1 << 16
WHOLE_BODY_BYTES = 8 << 20
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
access = logging.getLogger("pulse.access")


class _QuietHandler(WSGIRequestHandler):
    def setup(self) -> None:
        super().setup()
        # werkzeug writes a response's headers and body apart: with Nagle's algorithm
        # the body waits for the client's delayed ACK of the headers (~40 ms a request).
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def version_string(self) -> str:
        return "Pulse"  # not werkzeug's and Python's versions

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 - werkzeug's signature
        logging.getLogger("pulse.http").debug(format, *args)


class Server:
    """One WSGI app on one port, in a thread; on ``listener`` when given (a socket
    bound and listening already, shared by several processes)."""

    def __init__(self, name: str, app: WSGIApp, host: str, port: int, listener: socket.socket | None = None) -> None:
        self.name = name
        if listener is not None:
            host, port = listener.getsockname()[:2]
        self.httpd: BaseWSGIServer = make_server(host, port, app, threaded=True, request_handler=_QuietHandler,
                                                 fd=listener.fileno() if listener is not None else None)
        self._thread = threading.Thread(target=self.httpd.serve_forever, name=f"http-{name}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.httpd.host}:{self.httpd.port}"

    def start(self) -> Server:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailers", "transfer-encoding", "upgrade", "host", "content-length"})


PEER = "X-Pulse-Peer"  # a front's client address, for the gateway behind it
FRONT = "X-Pulse-Front"  # the key that shows a request comes from a front


class Proxy:
    """A function served by other processes: each request goes to the next of
    their URLs, the body streamed both ways. With ``front_key`` (a front
    handing paths to the main process's gateway) the client's address goes
    along in ``X-Pulse-Peer``, vouched for by the key."""

    def __init__(self, urls: list[str], front_key: str = "") -> None:
        self.urls = itertools.cycle(urls)
        self.front_key = front_key
        self.http = urllib3.PoolManager(maxsize=64, retries=False)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        target = environ.get("RAW_URI") or quote(environ.get("PATH_INFO", "/").encode("latin-1")) + (
            "?" + environ["QUERY_STRING"] if environ.get("QUERY_STRING") else "")
        url = next(self.urls) + target
        headers = {key[5:].replace("_", "-").title(): value for key, value in environ.items()
                   if key.startswith("HTTP_") and key[5:].replace("_", "-").lower() not in HOP_BY_HOP}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        if self.front_key:
            headers[PEER] = environ.get("REMOTE_ADDR", "")
            headers[FRONT] = self.front_key
        length = environ.get("CONTENT_LENGTH")
        body: Any = None
        if length:
            headers["Content-Length"] = length
            stream = LimitedStream(environ["wsgi.input"], int(length))
            body = stream.read() if int(length) <= WHOLE_BODY_BYTES else stream  # one send for the usual sizes
        elif environ.get("wsgi.input_terminated"):
            body = iter(lambda: environ["wsgi.input"].read(CHUNK), b"")
        try:
            response = self.http.request(environ["REQUEST_METHOD"], url, body=body, headers=headers,
                                         chunked=body is not None and not length, preload_content=False,
                                         redirect=False, timeout=urllib3.Timeout(connect=5, read=None))
        except urllib3.exceptions.HTTPError:  # the process is stopping or gone
            return unavailable(environ, start_response)
        start_response(f"{response.status} {response.reason or ''}".strip(),
                       [(k, v) for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP]
                       + ([("Content-Length", response.headers["Content-Length"])]
                          if "Content-Length" in response.headers else []))
        return _relay(response)


def _relay(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    try:
        yield from response.stream(CHUNK)
    finally:
        response.release_conn()


def unavailable(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    detail = f"no process serves {environ.get('PATH_INFO', '')} now"
    request_id = environ.get("HTTP_X_REQUEST_ID", "")
    return problem_from(Unavailable(detail, 2), request_id)(environ, start_response)


class Gateway:
    """The public host of the embedded run. Its own paths (pulse.host: probes,
    the merged OpenAPI document, /docs) are answered by ``host``, consulted
    first; every other path goes to the function the route table names, in
    process (no second HTTP hop) or through a ``Proxy`` to processes of its
    own, and a path no function serves gets the host's 404.

    Every answer carries ``X-Request-ID``: the client's (when well formed) or
    one made here, handed to the function as if the client had sent it, so
    the function's logs and the answer agree, and set here on answers that
    lack it (a proxied failure). One ``pulse.access`` log line per answer
    (method, path, status, milliseconds, function) once its body is sent.

    Two places, one class: with ingest processes, each serves the public port
    with a gateway of ``{"ingest": <its own ingest>}`` whose ``host`` is a
    ``Proxy`` to the main process (a *front*: ingest's requests never enter
    the main process, whose interpreter persist keeps busy); the main process
    serves every other path on a loopback port with the gateway that holds
    the host's own routes, takes the client's address a front vouches for
    (``front_key``) and logs nothing a front already logged.
    """

    def __init__(self, route: Callable[[str], str | None], apps: dict[str, WSGIApp],
                 host: HttpFunction | WSGIApp, front_key: str = "", log_access: bool = True) -> None:
        self.route = route
        self.apps = apps
        self.host: WSGIApp = host.wsgi if isinstance(host, HttpFunction) else host
        self.front_key = front_key
        self.log_access = log_access

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        vouched = environ.pop("HTTP_X_PULSE_FRONT", "")
        peer = environ.pop("HTTP_X_PULSE_PEER", "")
        if self.front_key and peer and hmac.compare_digest(vouched, self.front_key):
            environ["REMOTE_ADDR"] = peer  # the client's, as the front saw it
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
        environ["HTTP_X_REQUEST_ID"] = request_id
        path = environ.get("PATH_INFO", "/")
        function = "host" if host_serves(path) else (self.route(path) or "host")
        app = self.apps.get(function) if function != "host" else None
        if app is None:  # the host's own path, one no function serves (its 404), or in a front: the main process
            app = self.host
        status = ["-"]

        def answer(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[0] = line.split(" ", 1)[0]
            if not any(k.lower() == "x-request-id" for k, _ in headers):
                headers = [*headers, ("X-Request-ID", request_id)]
            return start_response(line, headers, exc_info) if exc_info else start_response(line, headers)

        body = app(environ, answer)
        if not self.log_access or not access.isEnabledFor(logging.INFO):  # JSON logs: each function logs its own
            return body
        return _Logged(body, lambda: access.info(
            "%s %s %s", environ.get("REQUEST_METHOD", ""), path, status[0],
            extra={"fields": {"method": environ.get("REQUEST_METHOD", ""), "path": path, "status": status[0],
                              "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                              "function": function, "request_id": request_id}}))


class _Logged:
    """A WSGI body that calls ``done`` once it is sent (or abandoned)."""

    def __init__(self, body: Iterable[bytes], done: Callable[[], None]) -> None:
        self.body = body
        self.done = done

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.done()
