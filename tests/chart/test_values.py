"""values.schema.json and the chart's own checks reject impossible values."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest

from .conftest import render

SCHEMA_REJECTS: dict[str, dict[str, Any]] = {
    "unknown top-level key": {"replicas": 3},
    "unknown function": {"functions": {"billing": {}}},
    "bad initialOffset": {"eventing": {"source": {"initialOffset": "middle"}}},
    "bad ordering": {"eventing": {"source": {"ordering": "random"}}},
    "zero consumers": {"eventing": {"source": {"consumers": 0}}},
    "bad backoffPolicy": {"eventing": {"broker": {"delivery": {"backoffPolicy": "fibonacci"}}}},
    "non-ISO backoffDelay": {"eventing": {"triggers": {"persisted": {"delivery": {"backoffDelay": "500ms"}}}}},
    "negative retry": {"eventing": {"source": {"delivery": {"retry": -1}}}},
    "bad metric": {"functions": {"ingest": {"autoscaling": {"metric": "qps"}}}},
    "negative minScale": {"functions": {"auth": {"autoscaling": {"minScale": -1}}}},
    "string containerConcurrency": {"functions": {"persist": {"containerConcurrency": "four"}}},
    "visibility is not a setting (always cluster-local)": {"functions": {"auth": {"visibility": "external"}}},
    "route with trailing slash": {"functions": {"auth": {"routes": ["/v1/auth/"]}}},
    "relative route": {"functions": {"auth": {"routes": ["v1/auth"]}}},
    "trigger to unknown function": {"eventing": {"triggers": {"persisted": {"subscriber": {"function": "billing"}}}}},
    "trigger path outside /_ce": {"eventing": {"triggers": {"persisted": {"subscriber": {"path": "/v1/stats"}}}}},
    "sink binding to unknown function": {"eventing": {"sinkBindings": ["billing"]}},
    "bad monitoring kind": {"monitoring": {"kind": "Probe"}},
    "root allowed": {"securityContext": {"runAsNonRoot": False}},
    "writable root filesystem": {"securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": True}},
    "bad bootstrap": {"kafka": {"bootstrapServers": "kafka"}},
    "bad topic name": {"kafka": {"topics": {"raw": {"name": "pulse events"}}}},
    "zero partitions": {"kafka": {"topics": {"dlq": {"partitions": 0}}}},
    "bad log level": {"config": {"logLevel": "LOUD"}},
    "bad postgres url": {"database": {"create": True, "postgresUrl": "mysql://x", "clickhouseUrl": "http://x"}},
    "bad ping schedule": {"eventing": {"pings": {"maintenance": {"schedule": "daily"}}}},
    "bad host": {"routing": {"host": "Pulse_Host"}},
    "empty host": {"routing": {"host": ""}},
    "bad image digest": {"image": {"digest": "latest"}},
}

CHART_REJECTS: dict[str, tuple[dict[str, Any], str]] = {
    "maxScale below minScale": ({"functions": {"ingest": {"autoscaling": {"minScale": 5, "maxScale": 2}}}}, "below minScale"),
    "scale to zero with minScale": ({"functions": {"auth": {"autoscaling": {"minScale": 1}}}}, "scaleToZero is true"),
    "no scale to zero with minScale 0": ({"functions": {"ingest": {"autoscaling": {"minScale": 0}}}}, "scaleToZero is false"),
    "hpa scaling to zero": ({"functions": {"auth": {"autoscaling": {"class": "hpa.autoscaling.knative.dev", "metric": "cpu"}}}}, "cannot scale to zero"),
    "hpa on rps": ({"functions": {"ingest": {"autoscaling": {"class": "hpa.autoscaling.knative.dev"}}}}, "cpu or memory"),
    "kpa on cpu": ({"functions": {"auth": {"autoscaling": {"metric": "cpu"}}}}, "concurrency or rps"),
    "target above containerConcurrency": ({"functions": {"persist": {"autoscaling": {"target": 10}}}}, "exceeds containerConcurrency"),
    "internal events routed": ({"functions": {"persist": {"routes": ["/_ce"]}}}, "internal paths"),
    "internal event path routed": ({"functions": {"aggregate": {"routes": ["/_ce/persisted"]}}}, "internal paths"),
    "metrics routed": ({"functions": {"export": {"routes": ["/metrics"]}}}, "internal paths"),
    "everything routed": ({"functions": {"auth": {"routes": ["/"]}}}, "internal paths"),
    "route given twice": ({"functions": {"aggregate": {"routes": ["/v1/stats", "/v1/export"]}}}, "given to both"),
    "no database secret": ({"database": {"existingSecret": ""}}, "database.existingSecret"),
    "created database without urls": ({"database": {"create": True}}, "postgresUrl"),
    "created jwt without signing key": ({"jwt": {"create": True, "keys": {"other.pem": "-----BEGIN X"}}}, "signing key"),
    "more consumers than partitions": ({"eventing": {"source": {"consumers": 7}}}, "partitions"),
    "keda beyond partitions": ({"eventing": {"source": {"keda": {"enabled": True, "maxScale": 12}}}}, "partitions"),
    "emptyDir exports that scale": ({"exports": {"persistence": {"enabled": False}}}, "exports.persistence.enabled is false"),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_REJECTS))
def test_schema_rejects(case: str) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        render(SCHEMA_REJECTS[case])


@pytest.mark.parametrize("case", sorted(CHART_REJECTS))
def test_chart_fails_on_impossible_combinations(case: str) -> None:
    values, message = CHART_REJECTS[case]
    with pytest.raises((helm_python.HelmRenderError, helm_python.HelmValuesError)) as err:
        render(values)
    assert message in str(err.value)


def test_defaults_hold_no_secret_material() -> None:
    import yaml

    from .conftest import CHART

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["database"]["postgresUrl"] == values["database"]["clickhouseUrl"] == ""
    assert values["database"]["create"] is False and values["jwt"]["create"] is False
    assert values["jwt"]["keys"] == {}
    manifests = "\n".join(t for path, t in render().items() if path.endswith(".yaml"))
    assert "BEGIN" not in manifests and "postgresql://" not in manifests and "stringData" not in manifests
