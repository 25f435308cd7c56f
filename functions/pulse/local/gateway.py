"""Serving WSGI apps on local ports, and the gateway that routes one host's
paths to the functions as the cluster's ingress does."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import quote

import urllib3
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wsgi import LimitedStream

from pulse.errors import NotFound, Unavailable
from pulse.web.http import problem_from

CHUNK = 1 << 16
WHOLE_BODY_BYTES = 8 << 20
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


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


def not_found(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    detail = f"no function serves {environ.get('PATH_INFO', '')}"
    return problem_from(NotFound(detail), "")(environ, start_response)


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
    return problem_from(Unavailable(detail, 2), "")(environ, start_response)


class Gateway:
    """Routes by path to the function apps: in process (no second HTTP hop), or
    a ``Proxy`` for a function that runs in processes of its own."""

    def __init__(self, route: Callable[[str], str | None], apps: dict[str, WSGIApp]) -> None:
        self.route = route
        self.apps = apps

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        function = self.route(environ.get("PATH_INFO", "/"))
        app = self.apps.get(function or "")
        if app is None:
            return not_found(environ, start_response)
        return app(environ, start_response)
