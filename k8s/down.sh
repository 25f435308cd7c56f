#!/usr/bin/env bash
# Deletes the local Pulse cluster (and every volume in it).
#   k8s/down.sh [kind|minikube]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
platform="${1:-kind}"
case "${platform}" in
  kind) kind delete cluster --name pulse ;;
  minikube)
    # shellcheck source=k8s/minikube.env
    source "${here}/minikube.env"
    minikube delete -p "${MINIKUBE_PROFILE}" ;;
  *) echo "usage: $0 [kind|minikube]" >&2; exit 2 ;;
esac
