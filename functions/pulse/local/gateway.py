"""Serving WSGI apps on local ports, and the gateway that routes one host's
paths to the functions as the cluster's ingress does."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 - werkzeug's signature
        logging.getLogger("pulse.http").debug(format, *args)


class Server:
    """One WSGI app on one port, in a thread."""

    def __init__(self, name: str, app: WSGIApp, host: str, port: int) -> None:
        self.name = name
        self.httpd: BaseWSGIServer = make_server(host, port, app, threaded=True, request_handler=_QuietHandler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name=f"http-{name}", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Server:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


def not_found(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = orjson.dumps({"type": "https://pulse.dev/problems/not-found", "title": "Not found", "status": 404,
                         "detail": f"no function serves {environ.get('PATH_INFO', '')}", "errors": []})
    start_response("404 Not Found", [("Content-Type", "application/problem+json"),
                                     ("Content-Length", str(len(body)))])
    return [body]


class Gateway:
    """Routes by path to the function apps, in process (no second HTTP hop)."""

    def __init__(self, route: Callable[[str], str | None], apps: dict[str, WSGIApp]) -> None:
        self.route = route
        self.apps = apps

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        function = self.route(environ.get("PATH_INFO", "/"))
        app = self.apps.get(function or "")
        if app is None:
            return not_found(environ, start_response)
        return app(environ, start_response)
