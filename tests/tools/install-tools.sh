#!/usr/bin/env bash
# Builds (once) and caches the test rig's external tools outside the repo:
#   ~/.cache/spotkube/k8s-<version>/      kube-apiserver, kube-controller-manager, kube-scheduler
#   ~/.cache/spotkube/etcd-<version>/     etcd
#   ~/.cache/spotkube/kwok-<version>/     kwok
#   ~/.cache/spotkube/moto-<version>/     a Python venv with moto[server]
#   ~/.cache/spotkube/helm-<version>/     helm (renders and lints charts/spotkube)
#   ~/.cache/spotkube/crds-<versions>/    cert-manager's and the Prometheus Operator's CRDs,
#                                         for the server-side dry-run of the chart's objects
# A warm machine skips every step. Prints the directories as KEY=path lines on stdout.
set -euo pipefail

K8S_VERSION="${SPOTKUBE_K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${SPOTKUBE_ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${SPOTKUBE_KWOK_VERSION:-v0.8.0}"
MOTO_VERSION="${SPOTKUBE_MOTO_VERSION:-5.2.1}"
HELM_VERSION="${SPOTKUBE_HELM_VERSION:-v3.22.0}"
CERT_MANAGER_VERSION="${SPOTKUBE_CERT_MANAGER_VERSION:-v1.21.2}"
PROMETHEUS_OPERATOR_VERSION="${SPOTKUBE_PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
CACHE="${SPOTKUBE_CACHE:-$HOME/.cache/spotkube}"
mkdir -p "$CACHE"
CRDS_DIR="$CACHE/crds-cert-manager-$CERT_MANAGER_VERSION-prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
log() { echo "[install-tools] $*" >&2; }

go_env() {
  # Go >= 1.27 turns encoding/json v2 on, which breaks the apiserver's OpenAPI.
  local minor
  minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
  if [ "${minor:-0}" -ge 25 ]; then export GOEXPERIMENT=nojsonv2; fi
  export CGO_ENABLED=0 GOFLAGS=-mod=mod
}

# k8s.io/kubernetes is not meant to be imported: a throwaway wrapper module requires
# it and replaces every staging module (./staging/src/k8s.io/X in its go.mod) with the
# published k8s.io/X v0.<minor>.<patch>.
build_k8s() {
  local dir="$CACHE/k8s-$K8S_VERSION"
  if [ -x "$dir/kube-apiserver" ] && [ -x "$dir/kube-controller-manager" ] && [ -x "$dir/kube-scheduler" ]; then return; fi
  command -v go >/dev/null || { log "Go is required to build Kubernetes"; exit 1; }
  go_env
  local staging="v0.${K8S_VERSION#v1.}" work="$CACHE/build/k8s-$K8S_VERSION"
  mkdir -p "$work" && cd "$work"
  log "building Kubernetes $K8S_VERSION (cold: ~7-10 min on 2 cores)"
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo "module spotkube.local/k8s-tools"
    echo "go $(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')"
    echo "require k8s.io/kubernetes $K8S_VERSION"
    grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" \
      | awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}'
  } > go.mod
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO
  go mod tidy -e >/dev/null 2>&1 || true
  # One invocation, so packages shared by the three commands compile once.
  go build -tags tools -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)" \
    -o "$work/out/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler
  mkdir -p "$dir" && mv "$work/out/"* "$dir/"
}

build_etcd() {
  local dir="$CACHE/etcd-$ETCD_VERSION"
  if [ -x "$dir/etcd" ]; then return; fi
  go_env
  local work="$CACHE/build/etcd-$ETCD_VERSION"
  mkdir -p "$work" && cd "$work"
  log "building etcd $ETCD_VERSION"
  printf 'module spotkube.local/etcd-tools\ngo %s\nrequire go.etcd.io/etcd/server/v3 %s\n' \
    "$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')" "$ETCD_VERSION" > go.mod
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
  go mod tidy -e >/dev/null 2>&1 || true
  go build -tags tools -trimpath -ldflags "-s -w" -o "$work/out/etcd" go.etcd.io/etcd/server/v3
  mkdir -p "$dir" && mv "$work/out/etcd" "$dir/"
}

build_kwok() {
  local dir="$CACHE/kwok-$KWOK_VERSION"
  if [ -x "$dir/kwok" ]; then return; fi
  go_env
  log "building kwok $KWOK_VERSION"
  GOBIN="$dir" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
}

build_helm() {
  local dir="$CACHE/helm-$HELM_VERSION"
  if [ -x "$dir/helm" ]; then return; fi
  go_env
  log "building helm $HELM_VERSION"
  GOBIN="$dir" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

# The CRDs of the optional objects the chart renders (cert-manager's Issuer and
# Certificate, the Prometheus Operator's ServiceMonitor), as their projects publish them,
# taken from the Go module proxy like the other tools.
fetch_crds() {
  if [ -f "$CRDS_DIR/monitoring.coreos.com_servicemonitors.yaml" ]; then return; fi
  go_env
  log "fetching cert-manager $CERT_MANAGER_VERSION and prometheus-operator $PROMETHEUS_OPERATOR_VERSION CRDs"
  local cm po
  cm=$(cd "$CACHE" && go mod download -json "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  po=$(cd "$CACHE" && go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  mkdir -p "$CRDS_DIR.tmp"
  cp "$cm/deploy/crds/cert-manager.io_issuers.yaml" "$cm/deploy/crds/cert-manager.io_certificates.yaml" "$CRDS_DIR.tmp/"
  cp "$po/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" "$CRDS_DIR.tmp/"
  rm -rf "$CRDS_DIR" && mv "$CRDS_DIR.tmp" "$CRDS_DIR"
}

install_moto() {
  local dir="$CACHE/moto-$MOTO_VERSION"
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c 'import moto.server, jsonpath_ng' 2>/dev/null; then return; fi
  log "installing moto[server]==$MOTO_VERSION into $dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" jsonpath-ng
}

what="${1:-all}"
case "$what" in
  all) install_moto; build_etcd; build_kwok; build_k8s; build_helm; fetch_crds ;;
  k8s) build_k8s ;; etcd) build_etcd ;; kwok) build_kwok ;; moto) install_moto ;; helm) build_helm ;;
  crds) fetch_crds ;;
  *) echo "usage: $0 [all|k8s|etcd|kwok|moto|helm|crds]" >&2; exit 2 ;;
esac
echo "SPOTKUBE_K8S_BIN=$CACHE/k8s-$K8S_VERSION"
echo "SPOTKUBE_ETCD_BIN=$CACHE/etcd-$ETCD_VERSION"
echo "SPOTKUBE_KWOK_BIN=$CACHE/kwok-$KWOK_VERSION"
echo "SPOTKUBE_MOTO_VENV=$CACHE/moto-$MOTO_VERSION"
echo "SPOTKUBE_HELM_BIN=$CACHE/helm-$HELM_VERSION"
echo "SPOTKUBE_CRDS=$CRDS_DIR"
