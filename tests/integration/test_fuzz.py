"""Property-based fuzzing from the contract: every operation of every function's
OpenAPI document (docs/openapi/, the public host's own included), with inputs
schemathesis generates from it, sent to the function on the real embedded
stack with valid credentials (the
project's ingest+read key, a signed-in owner's token, the eventing layer's
token for /_ce/*). Every answer must be:

- no 5xx;
- a status code the document lists for the operation;
- of a documented content type, and valid against the documented schema;
- for every 4xx, problem+json naming its status.

Inputs are both valid (positive) and invalid (negative) for the document.
Examples per operation are bounded (``PULSE_FUZZ_EXAMPLES``, 15 by default) and
generation is seeded, so a run is repeatable and fits the suite's budget; set
``PULSE_FUZZ_SEED`` to explore other inputs. The inputs that once broke Pulse
are replayed by test_hostile_input.py (tests/data/hostile_inputs.json).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ROOT
from tests.integration.test_auth import User, signup

DOCS = ROOT / "docs" / "openapi"
FUNCTIONS = ("ingest", "auth", "aggregate", "export", "persist", "host")  # host: the public host's own routes
METHODS = ("get", "post", "put", "patch", "delete")
EXAMPLES = int(os.environ.get("PULSE_FUZZ_EXAMPLES", "15"))
SEED = int(os.environ.get("PULSE_FUZZ_SEED", "20261130"))
# Not fuzzed here, each for its reason (and each tested on its own elsewhere):
SKIPPED = {
    ("aggregate", "GET /v1/stats/live"): "an endless event stream (test_stats covers it)",
}


def operations() -> list[tuple[str, str, str]]:
    found = []
    for name in FUNCTIONS:
        document = json.loads((DOCS / f"{name}.json").read_text())
        for path, item in document["paths"].items():
            for method in METHODS:
                if method in item and (name, f"{method.upper()} {path}") not in SKIPPED:
                    found.append((name, method.upper(), path))
    return found


def problem_json_for_every_error(ctx: Any, response: Any, case: Case) -> bool | None:
    """A 4xx or 5xx is application/problem+json with its own status in the body."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("Content-Type", response.headers.get("content-type", ""))
    if isinstance(content_type, list):
        content_type = content_type[0]
    assert content_type.startswith("application/problem+json"), f"{response.status_code} as {content_type!r}"
    body = json.loads(response.content)
    missing = {"type", "title", "status", "detail", "errors"} - set(body)
    assert not missing, f"problem without {sorted(missing)}"
    assert body["status"] == response.status_code, body
    return None


CREDENTIAL_HEADERS = {"authorization", "x-api-key"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          problem_json_for_every_error]


class Credentials:
    def __init__(self, pulse: Any, project: Any, owner: User) -> None:
        self.pulse = pulse
        self.key = project.key
        self.owner = owner
        self.owned = owner.new_project("fuzzed")

    def headers(self, function: str, operation: dict[str, Any], path: str, prefer_token: bool) -> dict[str, str]:
        """The credential the operation takes: the eventing layer's token on /_ce/*, else the
        key or the owner's token (``prefer_token`` picks one where both are accepted)."""
        if path.startswith("/_ce/"):
            return {"Authorization": f"Bearer {self.event_token(function)}"}
        schemes = {name for requirement in operation.get("security") or [] for name in requirement}
        if "bearer" in schemes and (prefer_token or "apiKey" not in schemes):
            # ingest's bearer is the key itself (as PostHog SDKs send it); elsewhere a user's token
            return {"Authorization": f"Bearer {self.key if function == 'ingest' else self.owner.access}"}
        if "apiKey" in schemes:
            return {"X-API-Key": self.key}
        return {}

    def event_token(self, function: str) -> str:
        services = self.pulse.services
        return str(self.pulse.issuer.mint(services.ce_audiences[function], services.ce_senders[function][0]))


@pytest.fixture(scope="module")
def credentials(pulse: Any, project: Any) -> Credentials:
    return Credentials(pulse, project, signup(pulse))


@pytest.fixture(scope="module")
def project(pulse: Any) -> Any:  # one project for the module: fuzzed events stay in it
    from pulse.local.demo import create_demo_key
    from tests.conftest import Api, Project

    project_id, key = create_demo_key(pulse.services, f"fuzz-{uuid.uuid4().hex[:8]}")
    return Project(project_id, key, Api(pulse.gateway_url, key))


@pytest.mark.slow
# schemathesis draws from `random` inside its strategies, which hypothesis reports as deprecated
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@pytest.mark.parametrize(("function", "method", "path"), operations(),
                         ids=[f"{f}:{m} {p}" for f, m, p in operations()])
def test_operation_answers_as_documented_whatever_the_input(pulse: Any, credentials: Credentials, function: str,
                                                             method: str, path: str) -> None:
    app = pulse.host.wsgi if function == "host" else pulse.functions[function].wsgi
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)  # the host's: every function's, merged
    operation = schema[path][method]
    documented = json.loads((DOCS / f"{function}.json").read_text())["paths"][path][method.lower()]

    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                          operation.as_strategy(GenerationMode.NEGATIVE)),
           prefer_token=st.booleans())
    def exercise(case: Case, prefer_token: bool) -> None:
        headers = credentials.headers(function, documented, path, prefer_token)
        # the credentials are ours (valid); schemathesis would otherwise make some up
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in CREDENTIAL_HEADERS}
        if "project_id" in (case.path_parameters or {}):
            case.path_parameters["project_id"] = credentials.owned  # reach past the membership check
        if "Authorization" in headers and isinstance(case.query, dict) and "project_id" in case.query:
            case.query["project_id"] = credentials.owned  # the project a token's user is a member of
        response = case.call(headers=headers)
        if os.environ.get("PULSE_FUZZ_TRACE"):
            print("fuzz", function, method, path, response.status_code)  # noqa: T201 - asked for
        case.validate_response(response, checks=CHECKS)

    exercise()
