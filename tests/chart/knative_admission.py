"""The admission rules of Knative Serving's webhook and net-gateway-api's
config-gateway parser that Pulse's objects depend on, as the pinned upstream
code applies them (knative/serving at KNATIVE_SERVING_VERSION:
pkg/apis/serving/k8s_validation.go, fieldmask.go, v1/revision_validation.go,
pkg/apis/autoscaling/annotation_validation.go; net-gateway-api at
KNATIVE_NET_GATEWAY_API_VERSION: pkg/reconciler/ingress/config/gateway.go).

The rules read the effective configuration: the upstream default ConfigMaps
(upstream/) with knative/'s ConfigMaps applied over them.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

import yaml

from .upstream import configmaps

# k8s_validation.go
RESERVED_PATHS = {"/", "/dev", "/dev/log"}
RESERVED_ENV = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}
# networking.BackendHTTPPort, BackendHTTP2Port, QueueAdminPort, AutoscalingQueueMetricsPort,
# UserQueueMetricsPort, runtime.ProfilingDefaultPort
RESERVED_PORTS = {8012, 8013, 8022, 9090, 9091, 8008}
PORT_NAMES = {"h2c", "http1", ""}
RESERVED_CONTAINER_NAMES = {"queue-proxy"}
# fieldmask.go: what a revision template may set (feature-gated ones below)
POD_FIELDS = {"serviceAccountName", "containers", "volumes", "imagePullSecrets", "enableServiceLinks",
              "automountServiceAccountToken"}
POD_FIELDS_BY_FLAG = {
    "affinity": "kubernetes.podspec-affinity", "topologySpreadConstraints": "kubernetes.podspec-topologyspreadconstraints",
    "hostAliases": "kubernetes.podspec-hostaliases", "nodeSelector": "kubernetes.podspec-nodeselector",
    "runtimeClassName": "kubernetes.podspec-runtimeclassname", "tolerations": "kubernetes.podspec-tolerations",
    "shareProcessNamespace": "kubernetes.podspec-shareprocessnamespace",
    "priorityClassName": "kubernetes.podspec-priorityclassname", "schedulerName": "kubernetes.podspec-schedulername",
    "initContainers": "kubernetes.podspec-init-containers", "dnsPolicy": "kubernetes.podspec-dnspolicy",
    "dnsConfig": "kubernetes.podspec-dnsconfig", "hostIPC": "kubernetes.podspec-hostipc",
    "hostPID": "kubernetes.podspec-hostpid", "hostNetwork": "kubernetes.podspec-hostnetwork",
}
REVISION_FIELDS = {"containerConcurrency", "timeoutSeconds", "responseStartTimeoutSeconds", "idleTimeoutSeconds"}
CONTAINER_FIELDS = {"name", "args", "command", "env", "workingDir", "envFrom", "image", "imagePullPolicy",
                    "livenessProbe", "ports", "readinessProbe", "resources", "securityContext", "startupProbe",
                    "terminationMessagePath", "terminationMessagePolicy", "volumeMounts"}
VOLUME_MOUNT_FIELDS = {"name", "readOnly", "mountPath", "subPath"}
PROBE_FIELDS = {"exec", "httpGet", "tcpSocket", "grpc", "initialDelaySeconds", "timeoutSeconds", "periodSeconds",
                "successThreshold", "failureThreshold", "terminationGracePeriodSeconds"}
HTTP_GET_FIELDS = {"host", "path", "scheme", "httpHeaders", "port"}
PORT_FIELDS = {"containerPort", "name", "protocol"}
SECURITY_CONTEXT_FIELDS = {"capabilities", "readOnlyRootFilesystem", "runAsUser", "runAsGroup", "runAsNonRoot",
                           "allowPrivilegeEscalation", "seccompProfile"}
POD_SECURITY_CONTEXT_FIELDS = {"runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "supplementalGroups",
                               "seccompProfile"}
VOLUME_SOURCES_BY_FLAG = {"emptyDir": "kubernetes.podspec-volumes-emptydir",
                          "persistentVolumeClaim": "kubernetes.podspec-persistent-volume-claim",
                          "hostPath": "kubernetes.podspec-volumes-hostpath", "csi": "kubernetes.podspec-volumes-csi",
                          "image": "kubernetes.podspec-volumes-image"}
VOLUME_SOURCES = {"secret", "configMap", "projected"}
# pkg/apis/autoscaling
KPA, HPA = "kpa.autoscaling.knative.dev", "hpa.autoscaling.knative.dev"
WINDOW_MAX_S = 3600
DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|m|s|ms|us|µs|ns))+$")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
UNIT_S = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def effective(name: str, namespace: str, ours: list[dict[str, Any]]) -> dict[str, str]:
    """A ConfigMap's data as the component reads it: upstream's defaults (the
    values its ``_example`` documents, then its data), with ours applied over it."""
    theirs = configmaps()[(namespace, name)].get("data") or {}
    example = yaml.safe_load(theirs.get("_example", "")) or {}
    data = {k: str(v) for k, v in example.items()} if isinstance(example, dict) else {}
    data.update({k: v for k, v in theirs.items() if k != "_example"})
    for doc in ours:
        if doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == name \
                and doc["metadata"].get("namespace") == namespace:
            data.update(doc.get("data") or {})
    return data


def go_duration_s(text: str) -> float | None:
    if text == "0":
        return 0.0
    if not DURATION.match(text):
        return None
    return sum(float(n) * UNIT_S[u] for n, u in DURATION_PART.findall(text))


def _extra(obj: dict[str, Any], allowed: set[str], where: str) -> list[str]:
    return [f"{where}.{k}: must not set" for k in sorted(set(obj) - allowed)]


def serving_errors(ksvc: dict[str, Any], features: dict[str, str], defaults: dict[str, str],
                   autoscaler: dict[str, str]) -> list[str]:
    """What Knative Serving's webhook refuses in a Service (v1) under this configuration."""
    def on(flag: str) -> bool:
        return features.get(flag, "disabled") != "disabled"

    errors: list[str] = []
    template = ksvc["spec"]["template"]
    spec = template["spec"]
    w = "spec.template.spec"
    allowed = POD_FIELDS | REVISION_FIELDS | {f for f, flag in POD_FIELDS_BY_FLAG.items() if on(flag)}
    if on("kubernetes.podspec-securitycontext") or on("secure-pod-defaults"):
        allowed.add("securityContext")
    errors += _extra(spec, allowed, w)
    if spec.get("automountServiceAccountToken") is True:
        errors.append(f"{w}.automountServiceAccountToken: may only be false")

    # revision_validation.go: timeoutSeconds within max-revision-timeout-seconds
    timeout = spec.get("timeoutSeconds")
    max_timeout = int(defaults["max-revision-timeout-seconds"])
    if timeout is not None and timeout != 0 and not 0 <= timeout <= max_timeout:
        errors.append(f"{w}.timeoutSeconds: {timeout} is out of bounds 0..{max_timeout} "
                      "(max-revision-timeout-seconds in config-defaults)")
    cc = spec.get("containerConcurrency")
    if cc is not None and not 0 <= cc <= int(defaults.get("container-concurrency-max-limit", "1000")):
        errors.append(f"{w}.containerConcurrency: {cc} is out of bounds")

    psc = spec.get("securityContext") or {}
    psc_allowed = set(POD_SECURITY_CONTEXT_FIELDS) if on("kubernetes.podspec-securitycontext") else set()
    if features.get("secure-pod-defaults") in ("enabled", "root-allowed"):
        psc_allowed.add("seccompProfile")
    errors += _extra(psc, psc_allowed, f"{w}.securityContext")

    containers = spec.get("containers") or []
    ports = [p for c in containers for p in c.get("ports") or []]
    if len(ports) > 1:
        errors.append(f"{w}.containers[*].ports: more than one container port is set")
    port = ports[0] if ports else {}
    port_name = port.get("name") or "http"

    mounted = {m["name"] for c in containers for m in c.get("volumeMounts") or []}
    volumes = {}
    for i, volume in enumerate(spec.get("volumes") or []):
        vw = f"{w}.volumes[{i}]"
        volumes[volume["name"]] = volume
        if volume["name"] not in mounted:
            errors.append(f"{vw}: volume with name {volume['name']!r} not mounted")
        sources = set(volume) - {"name"}
        allowed_sources = VOLUME_SOURCES | {s for s, flag in VOLUME_SOURCES_BY_FLAG.items() if on(flag)}
        for source in sorted(sources):
            if source not in allowed_sources:
                errors.append(f"{vw}: {source} volumes are disabled (config-features)")
        if len(sources) != 1:
            errors.append(f"{vw}: expected exactly one volume source, got {sorted(sources)}")
        pvc = volume.get("persistentVolumeClaim")
        if pvc is not None and not pvc.get("readOnly") and features.get(
                "kubernetes.podspec-persistent-volume-write") != "enabled":
            errors.append(f"{vw}: persistent volume write support is disabled, but {pvc.get('claimName')} is "
                          "not read-only")

    for ci, c in enumerate(containers):
        cw = f"{w}.containers[{ci}]"
        errors += _extra(c, CONTAINER_FIELDS, cw)
        if c.get("name") in RESERVED_CONTAINER_NAMES:
            errors.append(f"{cw}.name: {c['name']!r} is a reserved container name")
        if not c.get("image"):
            errors.append(f"{cw}.image: missing field")
        for env in c.get("env") or []:
            if env.get("name") in RESERVED_ENV:
                errors.append(f"{cw}.env: {env['name']!r} is a reserved environment variable")
        for p in c.get("ports") or []:
            errors += _extra(p, PORT_FIELDS, f"{cw}.ports")
            if p.get("name", "") not in PORT_NAMES:
                errors.append(f"{cw}.ports: port name {p['name']} is not allowed (empty, 'h2c' or 'http1')")
            if p.get("containerPort") in RESERVED_PORTS:
                errors.append(f"{cw}.ports: {p['containerPort']} is a reserved port")
            if p.get("protocol", "TCP") != "TCP":
                errors.append(f"{cw}.ports.protocol: must be TCP")
        for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = c.get(probe_name)
            if probe is None:
                continue
            pw = f"{cw}.{probe_name}"
            errors += _extra(probe, PROBE_FIELDS, pw)
            handlers = [h for h in ("httpGet", "tcpSocket", "exec", "grpc") if h in probe]
            if len(handlers) != 1:
                errors.append(f"{pw}: expected exactly one of httpGet, tcpSocket, exec, grpc")
            for h in ("httpGet", "tcpSocket"):
                if h in probe:
                    if h == "httpGet":
                        errors += _extra(probe[h], HTTP_GET_FIELDS, f"{pw}.httpGet")
                    probe_port = probe[h].get("port")
                    if isinstance(probe_port, str) and probe_port != port_name:
                        errors.append(f"{pw}.{h}.port: probe port must match container port ({port_name})")
            if probe_name == "readinessProbe" and probe.get("periodSeconds", 0) == 0:
                for field in ("failureThreshold", "timeoutSeconds"):
                    if probe.get(field):
                        errors.append(f"{pw}.{field}: disallowed when periodSeconds is zero")
        sc = c.get("securityContext") or {}
        errors += _extra(sc, SECURITY_CONTEXT_FIELDS | ({"privileged"} if sc.get("privileged") is False else set()),
                         f"{cw}.securityContext")
        caps = sc.get("capabilities") or {}
        if caps.get("add") and not on("kubernetes.containerspec-addcapabilities") \
                and caps["add"] != ["NET_BIND_SERVICE"]:
            errors.append(f"{cw}.securityContext.capabilities.add: must not set")
        seen = set()
        for mi, m in enumerate(c.get("volumeMounts") or []):
            mw = f"{cw}.volumeMounts[{mi}]"
            errors += _extra(m, VOLUME_MOUNT_FIELDS, mw)
            path = posixpath.normpath(m.get("mountPath", ""))
            if m.get("name") not in volumes:
                errors.append(f"{mw}.name: volumeMount has no matching volume")
            if path in RESERVED_PATHS:
                errors.append(f"{mw}.mountPath: {path!r} is a reserved path")
            elif not path.startswith("/"):
                errors.append(f"{mw}.mountPath: must be absolute")
            elif path in seen:
                errors.append(f"{mw}.mountPath: {path!r} must be unique")
            seen.add(path)

    errors += autoscaling_errors(template.get("metadata", {}).get("annotations") or {}, autoscaler)
    return errors


def autoscaling_errors(annotations: dict[str, str], autoscaler: dict[str, str]) -> list[str]:
    """annotation_validation.go for the autoscaling.knative.dev/* annotations."""
    a = {k.removeprefix("autoscaling.knative.dev/"): v for k, v in annotations.items()
         if k.startswith("autoscaling.knative.dev/")}
    errors = []
    cls = a.get("class", autoscaler.get("pod-autoscaler-class", KPA))
    if cls.endswith(".autoscaling.knative.dev") and cls not in (KPA, HPA):
        errors.append(f"autoscaling class {cls!r} is not valid")
    scales = {}
    for key in ("min-scale", "max-scale", "initial-scale"):
        if key in a:
            if not re.fullmatch(r"\d+", a[key]) or int(a[key]) > 2**31 - 1:
                errors.append(f"{key}: {a[key]!r} is not an integer >= 0")
            else:
                scales[key] = int(a[key])
    lo, hi = scales.get("min-scale", 0), scales.get("max-scale", 0)
    if hi and hi < lo:
        errors.append(f"max-scale={hi} is less than min-scale={lo}")
    limit = int(autoscaler.get("max-scale-limit", "0"))
    if limit and "max-scale" in a and (hi == 0 or hi > limit):
        errors.append(f"max-scale={hi} is over max-scale-limit={limit}")
    if scales.get("initial-scale") == 0 and autoscaler.get("allow-zero-initial-scale", "false") != "true":
        errors.append("initial-scale=0 not allowed by cluster (allow-zero-initial-scale)")
    if "target" in a:
        try:
            if float(a["target"]) < 0.01:
                errors.append(f"target {a['target']} should be at least 0.01")
        except ValueError:
            errors.append(f"target {a['target']!r} is not a number")
    for key in ("scale-down-delay", "scale-to-zero-pod-retention-period"):
        if key in a:
            seconds = go_duration_s(a[key])
            if seconds is None or not 0 <= seconds <= WINDOW_MAX_S:
                errors.append(f"{key}: {a[key]!r} is not a duration within 0s..1h")
    if "window" in a:
        seconds = go_duration_s(a["window"])
        if seconds is None or not 6 <= seconds <= WINDOW_MAX_S:
            errors.append(f"window: {a['window']!r} is not within 6s..1h")
    metric = a.get("metric")
    if metric is not None:
        if cls == KPA and metric not in ("concurrency", "rps"):
            errors.append(f"metric {metric!r} is not valid for the KPA (concurrency or rps)")
        if cls == HPA and metric == "":
            errors.append("metric must be set for the HPA")
    return errors


GATEWAY_ENTRY_KEYS = {"gateway", "service", "class", "supported-features"}
NAMESPACED_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def gateway_config(data: dict[str, str]) -> tuple[list[str], dict[str, list[dict[str, Any]]]]:
    """net-gateway-api's config-gateway (gateway.go FromConfigMap), strictly:
    (errors, {"external-gateways": [...], "local-gateways": [...]}). A key
    net-gateway-api does not read, or an entry field it ignores, is an error
    here: upstream would silently fall back to its Istio defaults."""
    errors = [f"config-gateway: {k!r} is not read by net-gateway-api (external-gateways, local-gateways)"
              for k in sorted(set(data) - {"external-gateways", "local-gateways", "_example"})]
    parsed: dict[str, list[dict[str, Any]]] = {}
    for key in ("external-gateways", "local-gateways"):
        if key not in data:
            errors.append(f"config-gateway: {key} is missing: net-gateway-api would use istio-system's gateway")
            continue
        try:
            entries = yaml.safe_load(data[key])
        except yaml.YAMLError as exc:
            errors.append(f"config-gateway: {key}: {exc}")
            continue
        if not isinstance(entries, list) or len(entries) != 1:
            errors.append(f"config-gateway: {key} must be a list of exactly one gateway")
            continue
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                errors.append(f"config-gateway: {key}[{i}] must be a mapping")
                continue
            errors += [f"config-gateway: {key}[{i}].{k}: unknown field" for k in sorted(set(entry) - GATEWAY_ENTRY_KEYS)]
            for field in ("gateway", "service"):
                value = entry.get(field)
                if (field == "gateway" or value is not None) and not (
                        isinstance(value, str) and NAMESPACED_NAME.match(value)):
                    errors.append(f"config-gateway: {key}[{i}].{field}: {value!r} is not namespace/name")
            if not str(entry.get("class") or "").strip():
                errors.append(f'config-gateway: {key}[{i}] field "class" is required')
        parsed[key] = entries
    return errors, parsed
