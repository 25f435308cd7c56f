"""The public host's own answers and the gateway's request ids, in process."""

from __future__ import annotations

import orjson
from werkzeug.test import Client

from pulse.host import Host, function_urls, probe_functions
from pulse.local.embedded import free_port
from pulse.local.gateway import Gateway, Proxy


def routes(path: str) -> str | None:
    return "ingest" if path.startswith("/v1/events") else None


def test_readyz_is_503_naming_the_functions_not_ready() -> None:
    states = {"auth": False, "ingest": True, "export": False}
    answer = Client(Host(lambda: states).wsgi).get("/readyz")
    assert answer.status_code == 503
    body = orjson.loads(answer.data)
    assert body["not_ready"] == ["auth", "export"]
    assert body["functions"] == {"auth": "not ready", "export": "not ready", "ingest": "ready"}
    states.update(auth=True, export=True)
    assert Client(Host(lambda: states).wsgi).get("/readyz").status_code == 200


def test_a_function_that_does_not_answer_is_not_ready() -> None:
    assert probe_functions({"auth": f"http://127.0.0.1:{free_port()}"}, timeout_s=1) == {"auth": False}
    assert function_urls(" ingest=http://a:80 , auth=https://b ") == {"ingest": "http://a:80", "auth": "https://b"}


def test_a_proxied_failure_carries_the_request_id() -> None:
    gateway = Gateway(routes, {"ingest": Proxy([f"http://127.0.0.1:{free_port()}"])}, Host(lambda: {}))
    answer = Client(gateway).post("/v1/events", data=b"{}", headers={"X-Request-ID": "r-42"})
    assert answer.status_code == 503
    assert answer.headers["X-Request-ID"] == "r-42"
    assert orjson.loads(answer.data)["request_id"] == "r-42"
    fresh = Client(gateway).post("/v1/events", data=b"{}")
    assert len(fresh.headers["X-Request-ID"]) == 32
    assert orjson.loads(fresh.data)["request_id"] == fresh.headers["X-Request-ID"]


def test_paths_no_function_serves_get_the_hosts_404_with_an_id() -> None:
    gateway = Gateway(routes, {}, Host(lambda: {}))
    for path in ("/", "/v2/anything", "/metrics", "/docs/nothing.js"):
        answer = Client(gateway).get(path)
        assert answer.status_code == 404, path
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert orjson.loads(answer.data)["request_id"] == answer.headers["X-Request-ID"]


def test_swagger_ui_comes_installed_with_pulse() -> None:
    """Its files are a dependency's (installed by `pip install -e .` and by the
    image's `pip install .`), and the page's own files are package data."""
    import tomllib

    from pulse.host import PAGE, SWAGGER_UI_FILES, swagger_ui_dir
    from tests.conftest import ROOT

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert any(d.startswith("flask-swagger-ui==") for d in project["project"]["dependencies"])
    assert "apidocs/*" in project["tool"]["setuptools"]["package-data"]["pulse"]
    for name in SWAGGER_UI_FILES:
        assert (swagger_ui_dir() / name).stat().st_size > 500, name
    assert {p.name for p in PAGE.iterdir()} >= {"index.html", "init.js", "docs.css"}
