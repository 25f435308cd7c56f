"""host — HTTP function: what the one public host answers itself, beside the
five functions' paths. The embedded gateway consults it before routing to a
function; in the cluster it is a Knative Service of its own behind the same
HTTPRoutes (``functions.host.routes`` in the chart, ``PATHS`` here).

  GET /healthz        the host is alive
  GET /readyz         200 when every function is ready; 503 naming those that are not
  GET /openapi.json   one document with every public operation (pulse.web.openapi), with ``servers``
  GET /docs           the API reference page: Swagger UI, its files served from the
                      installed ``flask-swagger-ui`` package, nothing from elsewhere
  anything else       404 problem+json: no function serves that path

Readiness of the functions comes from a callable (in process: each function's
own readiness; in the cluster: ``GET /readyz`` of each function's cluster-local
address, ``PULSE_HOST_FUNCTIONS``), asked in parallel with a bounded wait.
"""

from __future__ import annotations

import functools
import importlib.util
import mimetypes
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import urllib3
from werkzeug.wrappers import Request, Response

from pulse.errors import NotFound
from pulse.settings import Settings, SettingsError
from pulse.web import openapi
from pulse.web.http import HttpFunction, Route, json_response

PATHS = ("/healthz", "/readyz", "/openapi.json", "/docs")
PAGE = Path(__file__).with_name("apidocs")
SWAGGER_UI_FILES = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png")
PROBE_TIMEOUT_S = 3.0
# The reference page runs Swagger UI's own script file and ours, no inline
# script or style; its icons are data: images.
DOCS_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
Readiness = Callable[[], Mapping[str, bool]]


def serves(path: str) -> bool:
    """Is ``path`` one of the host's own?"""
    return path in PATHS or path.startswith("/docs/")


def swagger_ui_dir() -> Path:
    """The Swagger UI distribution inside the installed ``flask_swagger_ui`` package."""
    spec = importlib.util.find_spec("flask_swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the flask-swagger-ui package (Swagger UI's files) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "dist"


class Host(HttpFunction):
    name = "host"
    serves_metrics = False  # the public host exposes no process internals

    def __init__(self, functions: Readiness, public_url: str | None = None) -> None:
        self.functions = functions
        self.public_url = public_url.rstrip("/") if public_url else None
        self.documents = {name: openapi.load(name) for name in openapi.FUNCTION_DOCUMENTS}
        self.own = openapi.load("host")
        openapi.merge(self.own, self.documents, [])  # a clash between documents fails at start
        self.swagger_ui = swagger_ui_dir()
        super().__init__()

    def routes(self) -> Iterable[Route]:
        return [
            Route("GET", "/docs", self.docs, "docs"),
            Route("GET", "/docs/<name>", self.docs_file, "docs-file"),
        ]

    def readiness(self) -> dict[str, Any]:
        states = dict(self.functions())
        waiting = sorted(name for name, ready in states.items() if not ready)
        ready = not waiting and not self.stopping
        body: dict[str, Any] = {"status": "ready" if ready else "not ready", "function": self.name,
                                "functions": {n: "ready" if ok else "not ready" for n, ok in sorted(states.items())},
                                "not_ready": waiting}
        if self.stopping:
            body["shutdown"] = "in progress"
        return body

    def _openapi(self, request: Request) -> Response:
        base = self.public_url or request.host_url.rstrip("/")
        return json_response(openapi.merge(self.own, self.documents, [{"url": base, "description": "Pulse"}]))

    def docs(self, request: Request) -> Response:
        return self._file(PAGE / "index.html", "no-cache")

    def docs_file(self, request: Request, name: str) -> Response:
        if name in SWAGGER_UI_FILES:
            return self._file(self.swagger_ui / name, "public, max-age=86400")
        own = {p.name: p for p in PAGE.iterdir() if p.is_file()}
        if name not in own:
            raise NotFound(f"no file /docs/{name[:80]}")
        return self._file(own[name], "no-cache")

    def _file(self, path: Path, cache: str) -> Response:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return Response(path.read_bytes(), content_type=content_type,
                        headers={"Cache-Control": cache, "Content-Security-Policy": DOCS_POLICY,
                                 "X-Content-Type-Options": "nosniff"})


def probe_functions(urls: Mapping[str, str], timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, bool]:
    """``GET <url>/readyz`` of each function at once: name → answered 200 within ``timeout_s``."""
    http = _http()

    def ready(url: str) -> bool:
        try:
            answer = http.request("GET", url.rstrip("/") + "/readyz", timeout=timeout_s, retries=False)
        except urllib3.exceptions.HTTPError:
            return False
        return answer.status == 200

    if not urls:
        return {}
    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        return dict(zip(urls, pool.map(ready, urls.values()), strict=True))


@functools.cache
def _http() -> urllib3.PoolManager:
    return urllib3.PoolManager(maxsize=8)


def function_urls(text: str) -> dict[str, str]:
    """``ingest=http://...,auth=http://...`` (``PULSE_HOST_FUNCTIONS``) → name → URL."""
    urls = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, url = item.partition("=")
        if not name or not url.startswith(("http://", "https://")):
            raise SettingsError(f"PULSE_HOST_FUNCTIONS: {item!r} is not name=http://address")
        urls[name.strip()] = url.strip()
    return urls


@functools.cache
def _function() -> Host:
    settings = Settings.load()
    urls = function_urls(settings.host_functions)
    return Host(lambda: probe_functions(urls), settings.public_url)


def host(request: Request) -> Response:
    """functions-framework target."""
    return _function().handle(request)
