"""Internal events are authenticated (pulse.security.eventauth): every /_ce/*
route of every function, and the Broker's ingress, refuse a CloudEvent without
a valid OIDC token for their audience from a sender the chart points at them,
with 401; the made-up CloudEvent of the finding lands nowhere. The cluster's
side is exercised against an OIDC discovery document and JWKS served as the
Kubernetes API server serves them (RS256 keys with kids of their own)."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
import urllib3
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug.wrappers import Request, Response

from pulse.bus.cloudevents import CloudEvent, to_http
from pulse.core.events import parse_batch
from pulse.core.ingestion import encode_batch
from pulse.errors import Unauthorized
from pulse.local.eventing import sender
from pulse.security.eventauth import ClusterIssuer, EventAuth, LocalIssuer
from pulse.security.tokens import generate_key_file
from pulse.settings import Limits
from tests.conftest import make_event

http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=30))


def internal_routes(pulse: Any) -> list[tuple[str, str]]:
    return [(name, rule) for name, function in pulse.functions.items()
            for method, rule in function.registered_routes() if rule.startswith("/_ce/")]


def post(url: str, event: CloudEvent, token: str | None) -> urllib3.BaseHTTPResponse:
    headers = to_http(event)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return http.request("POST", url, body=event.data, headers=headers)


def refused(answer: urllib3.BaseHTTPResponse) -> bool:
    return (answer.status == 401 and answer.headers["Content-Type"] == "application/problem+json"
            and orjson.loads(answer.data)["status"] == 401)


def forged_batch(project_id: str) -> CloudEvent:
    """A raw batch as ingest would publish it, naming a project the sender does not own."""
    rows = parse_batch(orjson.dumps(make_event(event_type="forged", user_id="mallory")), Limits()).rows
    return encode_batch(project_id, rows)


def test_internal_routes_are_those_of_persist_aggregate_and_export(pulse: Any) -> None:
    assert {name for name, _ in internal_routes(pulse)} == {"persist", "aggregate", "export"}


@pytest.fixture(scope="module")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> LocalIssuer:
    return LocalIssuer(generate_key_file(tmp_path_factory.mktemp("intruder") / "key.pem"))


def bad_tokens(pulse: Any, function: str, other_key: LocalIssuer) -> dict[str, str | None]:
    issuer: LocalIssuer = pulse.issuer
    audience = pulse.services.ce_audiences[function]
    allowed = pulse.services.ce_senders[function][0]
    now = time.time()
    signed = issuer.signing
    return {
        "no token": None,
        "not a JWT": "garbage",
        "another audience": issuer.mint("serving.knative.dev/service/pulse/pulse-auth", allowed),
        "another sender": issuer.mint(audience, "system:serviceaccount:pulse:intruder"),
        "a sender of another namespace": issuer.mint(audience, allowed.replace(":pulse:", ":elsewhere:")),
        "an unknown key": other_key.mint(audience, allowed),
        "expired": issuer.mint(audience, allowed, now=now - 7200),
        "another issuer": jwt.encode({"iss": "https://evil.example", "aud": [audience], "sub": allowed,
                                      "iat": int(now), "exp": int(now) + 600}, signed.key, algorithm=signed.alg,
                                     headers={"kid": signed.kid}),
        "alg none": jwt.encode({"iss": issuer.issuer(), "aud": [audience], "sub": allowed, "iat": int(now),
                                "exp": int(now) + 600}, None, algorithm="none", headers={"kid": signed.kid}),
        "HS256 with the public key": _hs256_with_public_key(issuer, audience, allowed),
    }


def _hs256_with_public_key(issuer: LocalIssuer, audience: str, subject: str) -> str:
    public = issuer.signing.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "kid": issuer.signing.kid, "typ": "JWT"}
    claims = {"iss": issuer.issuer(), "aud": [audience], "sub": subject, "iat": int(time.time()),
              "exp": int(time.time()) + 600}

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    import hashlib
    import hmac

    signing_input = b64(orjson.dumps(header)) + b"." + b64(orjson.dumps(claims))
    return (signing_input + b"." + b64(hmac.new(public, signing_input, hashlib.sha256).digest())).decode()


def test_every_internal_route_refuses_what_is_not_a_valid_token_of_an_allowed_sender(
        pulse: Any, project: Any, other_key: LocalIssuer) -> None:
    for function, rule in internal_routes(pulse):
        event = forged_batch(project.project_id)
        for case, token in bad_tokens(pulse, function, other_key).items():
            answer = post(pulse.url(function) + rule, event, token)
            assert refused(answer), (function, rule, case, answer.status, answer.data[:200])


def test_the_made_up_ingested_event_of_the_finding_lands_nowhere(pulse: Any, project: Any) -> None:
    event = forged_batch(project.project_id)
    assert refused(post(pulse.url("persist") + "/_ce/ingested", event, None))
    # the same with a valid token of the KafkaSource: this is what the pipeline itself sends
    (source,) = pulse.wiring.sources
    token = pulse.issuer.mint(source.sink.audience, sender("KafkaSource", source.name))
    assert post(pulse.url("persist") + "/_ce/ingested", event, token).status == 200
    rows = pulse.services.ch.rows("SELECT count() FROM events WHERE project_id = {p:UUID} AND event_type = 'forged'",
                                  {"p": project.project_id})
    assert rows[0][0] == 1  # only the authenticated delivery was stored


def test_a_trigger_token_is_accepted_only_where_that_trigger_points(pulse: Any) -> None:
    export_trigger = next(t for t in pulse.wiring.triggers if t.subscriber.function == "export")
    token = pulse.issuer.mint(export_trigger.subscriber.audience, sender("Trigger", export_trigger.name))
    event = CloudEvent.new("dev.pulse.events.persisted", "/pulse/persist", orjson.dumps(
        {"project_id": str(uuid.uuid4()), "inserted": 0, "duplicates": 0}))
    # right sender, but aggregate's audience differs; and a token minted for aggregate's audience
    # by the export Trigger's identity is not one of aggregate's senders
    assert refused(post(pulse.url("aggregate") + "/_ce/persisted", event, token))
    wrong_sender = pulse.issuer.mint(pulse.services.ce_audiences["aggregate"], sender("Trigger", export_trigger.name))
    assert refused(post(pulse.url("aggregate") + "/_ce/persisted", event, wrong_sender))
    persisted = next(t for t in pulse.wiring.triggers if t.subscriber.function == "aggregate")
    good = pulse.issuer.mint(persisted.subscriber.audience, sender("Trigger", persisted.name))
    assert post(pulse.url("aggregate") + "/_ce/persisted", event, good).status == 200


def test_the_broker_ingress_refuses_events_without_a_token(pulse: Any) -> None:
    (broker,) = pulse.wiring.brokers
    event = CloudEvent.new("dev.pulse.export.requested", "/pulse/export", orjson.dumps(
        {"export_id": str(uuid.uuid4()), "project_id": str(uuid.uuid4())}))
    url = pulse.brokers[broker.name].url + "/"
    assert refused(post(url, event, None))
    outsider = pulse.issuer.mint(f"eventing.knative.dev/broker/pulse/{broker.name}",
                                 "system:serviceaccount:elsewhere:someone")
    assert refused(post(url, event, outsider))


def test_internal_paths_are_not_reachable_through_the_public_host(pulse: Any) -> None:
    for _function, rule in internal_routes(pulse):
        answer = http.request("POST", pulse.gateway_url + rule, body=b"{}")
        assert answer.status == 404, (rule, answer.status)


# The cluster: Kubernetes' issuer, its discovery document and JWKS ---------------------------

class FakeApiServer:
    """The two documents the API server serves for its service-account issuer, over
    real HTTP, with RSA keys named by kids of their own (not RFC 7638 thumbprints)."""

    def __init__(self) -> None:
        from pulse.local.gateway import Server

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "k8s-" + uuid.uuid4().hex[:12]
        self.issuer = "https://kubernetes.default.svc.cluster.local"
        self.bearer_seen: list[str] = []
        self.server = Server("apiserver", self.app, "127.0.0.1", 0).start()

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        self.bearer_seen.append(request.headers.get("Authorization", ""))
        if request.path == "/.well-known/openid-configuration":
            body = {"issuer": self.issuer, "jwks_uri": self.server.url + "/openid/v1/jwks",
                    "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"]}
        elif request.path == "/openid/v1/jwks":
            jwk = orjson.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
            body = {"keys": [{**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}]}
        else:
            return Response(status=404)(environ, start_response)
        return Response(orjson.dumps(body), content_type="application/json")(environ, start_response)

    def token(self, audience: str, subject: str, **changes: Any) -> str:
        now = int(time.time())
        claims = {"aud": [audience], "exp": now + 3600, "iat": now, "nbf": now, "iss": self.issuer, "sub": subject,
                  "kubernetes.io": {"namespace": "pulse", "serviceaccount": {"name": subject.rsplit(":", 1)[-1]}},
                  **changes}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture(scope="module")
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    yield server
    server.server.stop()


def test_cluster_tokens_verify_against_the_issuers_discovery_document(apiserver: FakeApiServer,
                                                                      tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("pod-token\n")
    keys = ClusterIssuer(apiserver.server.url, str(token_file), None)
    audience = "serving.knative.dev/service/pulse/pulse-persist"
    kafka_source = "system:serviceaccount:pulse:pulse-raw-events-oidc-sources.knative.dev-kafkasource"
    check = EventAuth(keys, keys.issuer, audience,
                      ("system:serviceaccount:pulse:*-oidc-sources.knative.dev-kafkasource",))
    assert check.verify("Bearer " + apiserver.token(audience, kafka_source)) == kafka_source
    assert "Bearer pod-token" in apiserver.bearer_seen  # read as the pod, as Knative reads it
    for case, token in {
        "another audience": apiserver.token("eventing.knative.dev/broker/pulse/pulse", kafka_source),
        "a trigger": apiserver.token(audience, "system:serviceaccount:pulse:x-oidc-eventing.knative.dev-trigger"),
        "expired": apiserver.token(audience, kafka_source, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
        "another issuer": apiserver.token(audience, kafka_source, iss="https://kubernetes.default.svc"),
    }.items():
        with pytest.raises(Unauthorized):
            check.verify("Bearer " + token)
            pytest.fail(case)
    unknown = jwt.encode({"aud": [audience], "sub": kafka_source, "iss": apiserver.issuer, "iat": int(time.time()),
                          "exp": int(time.time()) + 60},
                         rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm="RS256",
                         headers={"kid": "not-a-cluster-key"})
    with pytest.raises(Unauthorized):
        check.verify("Bearer " + unknown)


def test_an_unconfigured_function_refuses_every_internal_event(pulse: Any, project: Any) -> None:
    from werkzeug.test import Client

    from pulse.persist import Persist
    from pulse.services import Services

    services = Services(pulse.settings.with_(ce_token_key_file=None, ce_audience=None, ce_subjects=""))
    try:
        persist = Client(Persist(services).wsgi)
        event = forged_batch(project.project_id)
        answer = persist.post("/_ce/ingested", data=event.data, headers={**to_http(event), "Authorization": "Bearer x"})
        assert answer.status_code == 401 and answer.headers["Content-Type"] == "application/problem+json"
    finally:
        services.close()


def test_events_still_flow_end_to_end_with_tokens(pulse: Any, project: Any) -> None:
    from tests.conftest import wait_persisted

    assert project.api.post("/v1/events", make_event(event_type="through-the-pipeline")).status == 202
    wait_persisted(pulse)
    rows = pulse.services.ch.rows("SELECT count() FROM events WHERE project_id = {p:UUID}", {"p": project.project_id})
    assert rows[0][0] == 1
