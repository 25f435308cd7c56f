#!/usr/bin/env bash
# End to end on a throwaway kind cluster: kind up, Knative and the operators
# (knative/install.sh), Strimzi and Kafka, Postgres and ClickHouse, the image
# built and loaded into kind, `helm install`, every Knative Service Ready,
# 1,000 events in through the Gateway and top-events read back exactly
# (k8s/e2e_check.py), `helm uninstall` (the dead-letter topic must survive
# it), kind down.
#
#   k8s/e2e.sh             # needs docker, kind, kubectl, helm, curl, python3
#   k8s/e2e.sh --dry-run   # prints every command it would run, in order
#   k8s/e2e.sh --keep      # leaves the cluster up at the end
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/.." && pwd)"
# shellcheck source=k8s/versions.env
source "${here}/versions.env"

dry_run=0
keep=0
while (($#)); do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --keep) keep=1 ;;
    *) echo "usage: $0 [--dry-run] [--keep]" >&2; exit 2 ;;
  esac
  shift
done

cluster="pulse-e2e"
image="dev.local/pulse:e2e"
host="pulse.127.0.0.1.sslip.io"
local_port=18080
strimzi="https://github.com/strimzi/strimzi-kafka-operator/releases/download/${STRIMZI_VERSION}/strimzi-cluster-operator-${STRIMZI_VERSION}.yaml"
forward_pid=""
keydir="$(mktemp -d)"

step() { printf '\n==> %s\n' "$*"; }
# run CMD...: print the command, then run it (unless --dry-run).
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if ((!dry_run)); then "$@"; fi
}
secret() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }

cleanup() {
  rm -rf "${keydir}"
  if [[ -n "${forward_pid}" ]]; then kill "${forward_pid}" 2>/dev/null || true; fi
  if ((!keep && !dry_run)); then kind delete cluster --name "${cluster}" || true; fi
}
trap cleanup EXIT

if ((!dry_run)); then
  for tool in docker kind kubectl helm curl python3; do
    command -v "${tool}" >/dev/null || { echo "missing: ${tool}" >&2; exit 1; }
  done
fi

step "kind ${KIND_NODE_IMAGE}"
run kind create cluster --name "${cluster}" --config "${here}/kind-config.yaml" --wait 180s
run kubectl config use-context "kind-${cluster}"

step "Knative, Gateway API, Contour"
run "${root}/knative/install.sh"

step "Strimzi ${STRIMZI_VERSION}, Kafka ${KAFKA_VERSION}, topics"
run kubectl apply -f "${here}/100-namespaces.yaml"
run bash -c "curl -fsSL '${strimzi}' | sed 's/namespace: .*/namespace: kafka/' \
  | kubectl apply --server-side --force-conflicts -n kafka -f -"
run kubectl -n kafka wait deployment/strimzi-cluster-operator --for=condition=Available --timeout=300s
run kubectl apply -f "${here}/200-kafka.yaml"
run kubectl -n kafka wait kafka/pulse-kafka --for=condition=Ready --timeout=600s
run kubectl apply -f "${here}/210-kafka-topics.yaml"
run kubectl -n kafka wait kafkatopic --all --for=condition=Ready --timeout=300s

step "Postgres and ClickHouse"
pg_pass="$(secret)"
ch_pass="$(secret)"
run kubectl -n pulse-data create secret generic postgres-credentials \
  --from-literal=username=pulse --from-literal=password="${pg_pass}"
run kubectl -n pulse-data create secret generic clickhouse-credentials \
  --from-literal=username=pulse --from-literal=password="${ch_pass}"
run kubectl apply -f "${here}/300-postgres.yaml" -f "${here}/310-clickhouse.yaml"
run kubectl -n pulse-data rollout status statefulset/postgres --timeout=300s
run kubectl -n pulse-data rollout status statefulset/clickhouse --timeout=300s

step "Pulse secrets"
run kubectl -n pulse create secret generic pulse-database \
  --from-literal=postgres-url="postgresql://pulse:${pg_pass}@postgres.pulse-data.svc:5432/pulse" \
  --from-literal=clickhouse-url="http://pulse:${ch_pass}@clickhouse.pulse-data.svc:8123/pulse"
run openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "${keydir}/signing.pem"
run kubectl -n pulse create secret generic pulse-jwt --from-file=signing.pem="${keydir}/signing.pem"

step "Image ${image}"
run docker build -t "${image}" "${root}"
run kind load docker-image "${image}" --name "${cluster}"

step "helm install"
run helm upgrade --install pulse "${root}/charts/pulse" --namespace pulse --wait --timeout 15m \
  --set image.repository="${image%:*}" --set image.tag="${image##*:}" --set routing.host="${host}"
run kubectl -n pulse wait ksvc --all --for=condition=Ready --timeout=600s
run kubectl -n pulse get ksvc

step "1,000 events through the Gateway, top-events exact"
printf '+ kubectl -n contour-external port-forward svc/envoy-knative-gateway %s:80 &\n' "${local_port}"
if ((!dry_run)); then
  kubectl -n contour-external port-forward svc/envoy-knative-gateway "${local_port}:80" >/dev/null &
  forward_pid=$!
  sleep 3
fi
run python3 "${here}/e2e_check.py" "http://127.0.0.1:${local_port}" "${host}"

step "helm uninstall (the dead letters stay: Strimzi owns pulse.events.dlq)"
run helm uninstall pulse --namespace pulse --wait --timeout 5m
run kubectl -n kafka get kafkatopic pulse-events-dlq

step "kind down"
if ((keep)); then
  echo "kept: kind cluster ${cluster} (kind delete cluster --name ${cluster})"
else
  run kind delete cluster --name "${cluster}"
fi
