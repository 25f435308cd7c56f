#!/usr/bin/env bash
# Installs Knative Serving + Eventing with the Kafka extensions (source,
# broker, sink) and Gateway API networking (Contour), at pinned versions, then
# applies Pulse's configuration. Idempotent: re-run to converge.
#
#   knative/install.sh            # uses the current kubectl context
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=knative/versions.env
source "${here}/versions.env"

gh="https://github.com"
serving="${gh}/knative/serving/releases/download/${KNATIVE_SERVING_VERSION}"
eventing="${gh}/knative/eventing/releases/download/${KNATIVE_EVENTING_VERSION}"
kafka="${gh}/knative-extensions/eventing-kafka-broker/releases/download/${KNATIVE_KAFKA_VERSION}"
netgw="${gh}/knative-extensions/net-gateway-api/releases/download/${KNATIVE_NET_GATEWAY_API_VERSION}"

step() { printf '\n==> %s\n' "$*"; }
apply() { kubectl apply --server-side --force-conflicts -f "$@"; }
wait_deployments() { kubectl -n "$1" wait deployment --all --for=condition=Available --timeout="${2:-300s}"; }

step "010 Gateway API ${GATEWAY_API_VERSION} CRDs"
apply "${gh}/kubernetes-sigs/gateway-api/releases/download/${GATEWAY_API_VERSION}/standard-install.yaml"

step "020 Contour ${CONTOUR_VERSION} gateway provisioner"
apply "https://raw.githubusercontent.com/projectcontour/contour/${CONTOUR_VERSION}/examples/render/contour-gateway-provisioner.yaml"
wait_deployments projectcontour

step "100 Gateways for Knative"
apply "${here}/100-gateways.yaml"

step "110 Knative Serving ${KNATIVE_SERVING_VERSION}"
apply "${serving}/serving-crds.yaml"
kubectl wait crd --all --for=condition=Established --timeout=120s
apply "${serving}/serving-core.yaml"
# The HPA autoscaler (class hpa.autoscaling.knative.dev: cpu or memory
# metrics), which the chart offers per function next to the default KPA.
apply "${serving}/serving-hpa.yaml"

step "120 net-gateway-api ${KNATIVE_NET_GATEWAY_API_VERSION}"
apply "${netgw}/net-gateway-api.yaml"

step "200 Serving configuration"
apply "${here}/200-serving-config.yaml"
wait_deployments knative-serving

step "300 Knative Eventing ${KNATIVE_EVENTING_VERSION}"
apply "${eventing}/eventing-crds.yaml"
kubectl wait crd --all --for=condition=Established --timeout=120s
apply "${eventing}/eventing-core.yaml"

step "310 Kafka extensions ${KNATIVE_KAFKA_VERSION}: controller, source, broker, sink"
apply "${kafka}/eventing-kafka-controller.yaml"
apply "${kafka}/eventing-kafka-source.yaml"
apply "${kafka}/eventing-kafka-broker.yaml"
apply "${kafka}/eventing-kafka-sink.yaml"

step "320 Eventing configuration"
apply "${here}/300-eventing-config.yaml"
wait_deployments knative-eventing 600s
apply "${kafka}/eventing-kafka-post-install.yaml" || true

kubectl -n contour-external wait gateway/knative-gateway --for=condition=Programmed --timeout=300s
kubectl -n contour-internal wait gateway/knative-local-gateway --for=condition=Programmed --timeout=300s
step "Knative is ready"
