#!/usr/bin/env bash
# Brings up Pulse on a local cluster:
#   1. creates a kind (default) or minikube cluster,
#   2. installs Knative Serving + Eventing + Kafka extensions (knative/install.sh),
#   3. installs Strimzi and a KRaft Kafka with every topic as a KafkaTopic,
#   4. runs Postgres and ClickHouse as StatefulSets with generated passwords
#      (with --cluster: ClickHouse as 2 shards x 2 replicas with ClickHouse
#      Keeper under Altinity's clickhouse-operator, and Postgres as a primary
#      and a standby under CloudNativePG; docs/scaling.md),
#   5. creates Pulse's Secrets (database URLs, JWT signing key) if missing,
#   6. builds and loads the image (unless --no-build) and installs the chart.
#
#   k8s/up.sh [kind|minikube] [--cluster] [--no-build] [-- extra helm args]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/.." && pwd)"
# shellcheck source=k8s/versions.env
source "${here}/versions.env"

platform="kind"
build=1
cluster_profile=0
helm_args=()
while (($#)); do
  case "$1" in
    kind|minikube) platform="$1" ;;
    --no-build) build=0 ;;
    --cluster) cluster_profile=1 ;;
    --) shift; helm_args=("$@"); break ;;
    *) echo "usage: $0 [kind|minikube] [--cluster] [--no-build] [-- helm args]" >&2; exit 2 ;;
  esac
  shift
done

cluster="pulse"
image="dev.local/pulse:dev"
step() { printf '\n==> %s\n' "$*"; }
need() { command -v "$1" >/dev/null || { echo "missing: $1" >&2; exit 1; }; }
need kubectl; need helm; need openssl

step "Cluster (${platform})"
if [[ "${platform}" == kind ]]; then
  need kind
  if ! kind get clusters | grep -qx "${cluster}"; then
    kind create cluster --name "${cluster}" --config "${here}/kind-config.yaml"
  fi
  kubectl config use-context "kind-${cluster}"
else
  need minikube
  # shellcheck source=k8s/minikube.env
  source "${here}/minikube.env"
  cluster="${MINIKUBE_PROFILE}"
  minikube start -p "${cluster}" --driver="${MINIKUBE_DRIVER}" --cpus="${MINIKUBE_CPUS}" \
    --memory="${MINIKUBE_MEMORY}" --disk-size="${MINIKUBE_DISK}" \
    --kubernetes-version="${KUBERNETES_VERSION}"
  kubectl config use-context "${cluster}"
fi

step "Knative"
"${root}/knative/install.sh"

step "Namespaces"
kubectl apply -f "${here}/100-namespaces.yaml"

step "Strimzi ${STRIMZI_VERSION} (watching namespace kafka)"
curl -fsSL "https://github.com/strimzi/strimzi-kafka-operator/releases/download/${STRIMZI_VERSION}/strimzi-cluster-operator-${STRIMZI_VERSION}.yaml" \
  | sed 's/namespace: .*/namespace: kafka/' \
  | kubectl apply --server-side --force-conflicts -n kafka -f -
kubectl -n kafka wait deployment/strimzi-cluster-operator --for=condition=Available --timeout=300s

step "Kafka ${KAFKA_VERSION} (KRaft) and topics"
kubectl apply -f "${here}/200-kafka.yaml"
kubectl -n kafka wait kafka/pulse-kafka --for=condition=Ready --timeout=600s
kubectl apply -f "${here}/210-kafka-topics.yaml"
kubectl -n kafka wait kafkatopic --all --for=condition=Ready --timeout=300s

secret_exists() { kubectl -n "$1" get secret "$2" >/dev/null 2>&1; }
password() { openssl rand -hex 24; }

secret_exists pulse-data clickhouse-credentials || kubectl -n pulse-data create secret generic clickhouse-credentials \
  --from-literal=username=pulse --from-literal=password="$(password)"
field() { kubectl -n pulse-data get secret "$1" -o "jsonpath={.data.$2}" | base64 -d; }

if ((cluster_profile)); then
  step "clickhouse-operator ${CLICKHOUSE_OPERATOR_VERSION} and CloudNativePG ${CNPG_VERSION}"
  kubectl apply --server-side --force-conflicts -f \
    "https://raw.githubusercontent.com/Altinity/clickhouse-operator/${CLICKHOUSE_OPERATOR_VERSION}/deploy/operator/clickhouse-operator-install-bundle.yaml"
  kubectl apply --server-side --force-conflicts -f \
    "https://github.com/cloudnative-pg/cloudnative-pg/releases/download/${CNPG_VERSION}/cnpg-${CNPG_VERSION#v}.yaml"
  kubectl -n kube-system wait deployment/clickhouse-operator --for=condition=Available --timeout=300s
  kubectl -n cnpg-system wait deployment/cnpg-controller-manager --for=condition=Available --timeout=300s

  step "ClickHouse Keeper, ClickHouse (2 shards x 2 replicas), Postgres (primary + standby)"
  secret_exists pulse-data postgres-app || kubectl -n pulse-data create secret generic postgres-app \
    --type=kubernetes.io/basic-auth --from-literal=username=pulse --from-literal=password="$(password)"
  kubectl apply -f "${here}/320-clickhouse-keeper.yaml" -f "${here}/330-clickhouse-cluster.yaml" \
    -f "${here}/340-postgres-cluster.yaml"
  kubectl -n pulse-data wait chk/pulse-keeper --for=jsonpath='{.status.status}'=Completed --timeout=600s
  kubectl -n pulse-data wait chi/pulse --for=jsonpath='{.status.status}'=Completed --timeout=900s
  kubectl -n pulse-data wait cluster.postgresql.cnpg.io/pulse-postgres --for=condition=Ready --timeout=600s
  # The database on every ClickHouse node; Pulse's migrations create the tables ON CLUSTER.
  kubectl -n pulse-data exec chi-pulse-events-0-0-0 -- clickhouse-client --user pulse \
    --password "$(field clickhouse-credentials password)" \
    --query "CREATE DATABASE IF NOT EXISTS pulse ON CLUSTER events"
  pg_secret=postgres-app
  pg_host=pulse-postgres-rw
  ch_host=clickhouse-pulse
  helm_args=(--set database.clickhouseCluster=events "${helm_args[@]}")
else
  step "Postgres and ClickHouse"
  secret_exists pulse-data postgres-credentials || kubectl -n pulse-data create secret generic postgres-credentials \
    --from-literal=username=pulse --from-literal=password="$(password)"
  kubectl apply -f "${here}/300-postgres.yaml" -f "${here}/310-clickhouse.yaml"
  kubectl -n pulse-data rollout status statefulset/postgres --timeout=300s
  kubectl -n pulse-data rollout status statefulset/clickhouse --timeout=300s
  pg_secret=postgres-credentials
  pg_host=postgres
  ch_host=clickhouse
fi

step "Pulse secrets"
if ! secret_exists pulse pulse-database; then
  pg_pass="$(field "${pg_secret}" password)"
  ch_pass="$(field clickhouse-credentials password)"
  kubectl -n pulse create secret generic pulse-database \
    --from-literal=postgres-url="postgresql://pulse:${pg_pass}@${pg_host}.pulse-data.svc:5432/pulse" \
    --from-literal=clickhouse-url="http://pulse:${ch_pass}@${ch_host}.pulse-data.svc:8123/pulse"
fi
if ! secret_exists pulse pulse-jwt; then
  keydir="$(mktemp -d)"
  trap 'rm -rf "${keydir}"' EXIT
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "${keydir}/signing.pem"
  kubectl -n pulse create secret generic pulse-jwt --from-file=signing.pem="${keydir}/signing.pem"
fi

if ((build)); then
  step "Image ${image}"
  need docker
  docker build -t "${image}" "${root}"
  if [[ "${platform}" == kind ]]; then
    kind load docker-image "${image}" --name "${cluster}"
  else
    minikube -p "${cluster}" image load "${image}"
  fi
fi

step "Pulse chart"
helm upgrade --install pulse "${root}/charts/pulse" --namespace pulse --wait --timeout 10m \
  --set image.repository="${image%:*}" --set image.tag="${image##*:}" \
  "${helm_args[@]}"

step "Done"
cat <<MSG
Pulse is up. Try:
  kubectl -n pulse get ksvc
  helm test pulse -n pulse
  kubectl -n contour-external port-forward svc/envoy-knative-gateway 8080:80 &
  curl -H 'Host: pulse.127.0.0.1.sslip.io' http://127.0.0.1:8080/.well-known/jwks.json
MSG
