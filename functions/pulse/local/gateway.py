"""Serving WSGI apps on local ports, and the gateway: the one public host of
the embedded run, routing paths to the functions as the cluster's HTTPRoutes do."""

from __future__ import annotations

import itertools
import logging
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
    def version_string(self) -> str:
        return "Pulse"  # not werkzeug's and Python's versions

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 - werkzeug's signature
        logging.getLogger("pulse.http").debug(format, *args)


class Server:
    """One WSGI app on one port, in a thread."""

    def __init__(self, name: str, app: WSGIApp, host: str, port: int) -> None:
        self.name = name
        self.httpd: BaseWSGIServer = make_server(host, port, app, threaded=True, request_handler=_QuietHandler)
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


class Proxy:
    """A function served by other processes: each request goes to the next of
    their URLs, the body streamed both ways."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = itertools.cycle(urls)
        self.http = urllib3.PoolManager(maxsize=64, retries=False)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        target = environ.get("RAW_URI") or quote(environ.get("PATH_INFO", "/").encode("latin-1")) + (
            "?" + environ["QUERY_STRING"] if environ.get("QUERY_STRING") else "")
        url = next(self.urls) + target
        headers = {key[5:].replace("_", "-").title(): value for key, value in environ.items()
                   if key.startswith("HTTP_") and key[5:].replace("_", "-").lower() not in HOP_BY_HOP}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
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
    """

    def __init__(self, route: Callable[[str], str | None], apps: dict[str, WSGIApp], host: HttpFunction) -> None:
        self.route = route
        self.apps = apps
        self.host = host

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
        environ["HTTP_X_REQUEST_ID"] = request_id
        path = environ.get("PATH_INFO", "/")
        function = "host" if host_serves(path) else (self.route(path) or "host")
        app = self.apps.get(function) if function != "host" else None
        if app is None:
            function, app = "host", self.host.wsgi
        status = ["-"]

        def answer(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[0] = line.split(" ", 1)[0]
            if not any(k.lower() == "x-request-id" for k, _ in headers):
                headers = [*headers, ("X-Request-ID", request_id)]
            return start_response(line, headers, exc_info) if exc_info else start_response(line, headers)

        body = app(environ, answer)
        if not access.isEnabledFor(logging.INFO):  # JSON logs: each function logs its own line
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
