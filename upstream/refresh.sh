#!/usr/bin/env bash
# Refreshes the upstream files Pulse's chart and manifests are checked against
# (CRDs, default ConfigMaps) from each project's repository at the tag pinned
# in knative/versions.env and k8s/versions.env, and rewrites PROVENANCE.yaml.
# Run it after bumping a pinned version, then run tests/chart.
#
#   upstream/refresh.sh               # every source
#   upstream/refresh.sh strimzi       # only the sources named
#
# UPSTREAM_GIT_URL is the clone URL template ({repo} is owner/name), by
# default https://github.com/{repo}. With UPSTREAM_GIT_DIR (a template too) the
# files are read from existing clones or bare mirrors instead, nothing cloned.
# Needs git and sha256sum.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/.." && pwd)"
# shellcheck source=knative/versions.env
source "${root}/knative/versions.env"
# shellcheck source=k8s/versions.env
source "${root}/k8s/versions.env"
url_template="${UPSTREAM_GIT_URL:-https://github.com/{repo\}}"
dir_template="${UPSTREAM_GIT_DIR:-}"
only=("$@")
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

# vendor NAME OWNER/REPO VERSION_VARIABLE LICENCE GLOB...
#   Copies the files of OWNER/REPO at the tag in $VERSION_VARIABLE whose paths
#   match a GLOB to upstream/NAME/<same path>, with the repository's LICENSE.
vendor() {
  local name="$1" repo="$2" variable="$3" licence="$4"
  shift 4
  if ((${#only[@]})) && [[ " ${only[*]} " != *" ${name} "* ]]; then
    keep_provenance "${name}"
    return
  fi
  local tag="${!variable}" git_dir commit
  echo "==> ${name}: ${repo} ${tag}"
  if [[ -n "${dir_template}" ]]; then
    git_dir="${dir_template//\{repo\}/${repo}}"
  else
    git -c advice.detachedHead=false clone --quiet --depth 1 --filter=blob:none --branch "${tag}" \
      --no-checkout "${url_template//\{repo\}/${repo}}" "${work}/${name}"
    git_dir="${work}/${name}/.git"
  fi
  commit="$(git --git-dir="${git_dir}" rev-parse "${tag}^{commit}")"
  rm -rf "${here:?}/${name}"
  mkdir -p "${here}/${name}"
  git --git-dir="${git_dir}" show "${commit}:LICENSE" >"${here}/${name}/LICENSE"
  {
    echo "  ${name}:"
    echo "    repository: https://github.com/${repo}"
    echo "    version_variable: ${variable}"
    echo "    tag: ${tag}"
    echo "    commit: ${commit}"
    echo "    licence: ${licence}"
    echo "    globs: [$(printf "'%s', " "$@" | sed 's/, $//')]"
    echo "    files:"
  } >"${work}/${name}.provenance"
  local mode type object path pattern count=0
  while IFS=$'\t' read -r mode_type_object path; do
    read -r mode type object <<<"${mode_type_object}"
    [[ "${type}" == blob ]] || continue
    for pattern in "$@"; do
      # shellcheck disable=SC2053 # the glob is meant to match
      if [[ "${path}" == ${pattern} ]]; then
        if [[ "${mode}" == 120000 ]]; then  # a symlink: copy the file it points to
          object="$(resolve "${git_dir}" "${commit}" "${path}")"
        fi
        mkdir -p "$(dirname "${here}/${name}/${path}")"
        git --git-dir="${git_dir}" cat-file blob "${object}" >"${here}/${name}/${path}"
        echo "      ${path}: $(sha256sum "${here}/${name}/${path}" | cut -d' ' -f1)" >>"${work}/${name}.provenance"
        count=$((count + 1))
        break
      fi
    done
  done < <(git --git-dir="${git_dir}" ls-tree -r "${commit}")
  if ((count == 0)); then
    echo "no file of ${repo}@${tag} matches: $*" >&2
    exit 1
  fi
  echo "    ${count} file(s)"
}

# resolve GIT_DIR COMMIT PATH: the blob a symlink inside the repository points to.
resolve() {
  local target parts=() part
  target="$(dirname "$3")/$(git --git-dir="$1" cat-file blob "$2:$3")"
  IFS=/ read -ra segments <<<"${target}"
  for part in "${segments[@]}"; do
    case "${part}" in
      . | "") ;;
      ..) unset 'parts[${#parts[@]}-1]' ;;
      *) parts+=("${part}") ;;
    esac
  done
  git --git-dir="$1" rev-parse "$2:$(IFS=/; echo "${parts[*]}")"
}

# keep_provenance NAME: a source not refreshed this run keeps its entry.
keep_provenance() {
  awk -v name="  $1:" '
    $0 == name { on = 1; print; next }
    on && /^  [^ ]/ { on = 0 }
    on { print }' "${here}/PROVENANCE.yaml" >"${work}/$1.provenance"
}

# One line per upstream project. To check against another operator, add a line
# (and its version to a versions.env), run this script, and load the new
# folder's CRDs in tests/chart/upstream.py.
vendor knative-serving knative/serving KNATIVE_SERVING_VERSION Apache-2.0 \
  'config/core/300-resources/*.yaml' 'config/core/configmaps/*.yaml'
vendor knative-eventing knative/eventing KNATIVE_EVENTING_VERSION Apache-2.0 \
  'config/core/resources/*.yaml' 'config/core/configmaps/*.yaml'
vendor knative-eventing-kafka knative-extensions/eventing-kafka-broker KNATIVE_KAFKA_VERSION Apache-2.0 \
  'control-plane/config/eventing-kafka-broker/100-*/100-kafka-*.yaml' \
  'control-plane/config/eventing-kafka-broker/200-controller/100-config-kafka-features.yaml' \
  'data-plane/config/*/100-config-kafka-*-data-plane.yaml'
vendor knative-net-gateway-api knative-extensions/net-gateway-api KNATIVE_NET_GATEWAY_API_VERSION Apache-2.0 \
  'config/config-gateway.yaml'
vendor gateway-api kubernetes-sigs/gateway-api GATEWAY_API_VERSION Apache-2.0 \
  'config/crd/standard/*.yaml'
vendor contour projectcontour/contour CONTOUR_VERSION Apache-2.0 \
  'examples/contour/01-crds.yaml'
vendor strimzi strimzi/strimzi-kafka-operator STRIMZI_VERSION Apache-2.0 \
  'packaging/install/cluster-operator/04*-Crd-*.yaml'
vendor prometheus-operator prometheus-operator/prometheus-operator PROMETHEUS_OPERATOR_VERSION Apache-2.0 \
  'example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml' \
  'example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml'
vendor clickhouse-operator Altinity/clickhouse-operator CLICKHOUSE_OPERATOR_VERSION Apache-2.0 \
  'deploy/helm/clickhouse-operator/crds/*.yaml'
vendor cloudnative-pg cloudnative-pg/cloudnative-pg CNPG_VERSION Apache-2.0 \
  'config/crd/bases/postgresql.cnpg.io_clusters.yaml'

{
  echo "# Where every file under upstream/ comes from. Written by upstream/refresh.sh:"
  echo "# do not edit by hand (tests/chart check the tags against the versions.env"
  echo "# files and every file against its sha256)."
  echo "sources:"
  for f in "${work}"/*.provenance; do cat "${f}"; done
} >"${here}/PROVENANCE.yaml.new"
mv "${here}/PROVENANCE.yaml.new" "${here}/PROVENANCE.yaml"
echo "==> wrote ${here}/PROVENANCE.yaml"
