#!/usr/bin/env bash
# Renders manifests/ from the Helm chart charts/spotkube, its one source of truth:
#   charts/render-manifests.sh           rewrite manifests/ (make manifests)
#   charts/render-manifests.sh --check   fail if manifests/ differs from the chart (make lint)
# Values: charts/spotkube/ci/manifests-values.yaml; Kubernetes version: the rig's, so the
# scheduler image matches what the tests run. manifests/controller/aws/ (CloudFormation,
# IAM) and the READMEs are not Kubernetes objects and stay hand-written.
set -euo pipefail
cd "$(dirname "$0")/.."
HELM_BIN="$(bash tests/tools/install-tools.sh helm | sed -n 's/^SPOTKUBE_HELM_BIN=//p')/helm"
K8S_VERSION="${SPOTKUBE_K8S_VERSION:-v1.36.3}"
CHART=charts/spotkube
COMPONENTS=(base webhook extender scheduler controller)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

render() { # <out dir> <helm args...>
  local out=$1; shift
  "$HELM_BIN" template spotkube "$CHART" --namespace spotkube-system \
    --kube-version "$K8S_VERSION" -f "$CHART/ci/manifests-values.yaml" "$@" --output-dir "$out" >/dev/null
}

# One file per template, under <dir>/<component>/, each with a header and a kustomization.
assemble() { # <target dir>
  local target=$1
  render "$work/default"
  # The optional objects, each on its own (--show-only does not mix with --output-dir).
  mkdir -p "$work/monitoring/spotkube/templates/monitoring"
  for file in servicemonitor.yaml grafana-dashboard.yaml; do
    "$HELM_BIN" template spotkube "$CHART" --namespace spotkube-system \
      --kube-version "$K8S_VERSION" -f "$CHART/ci/manifests-values.yaml" \
      --set monitoring.serviceMonitor.enabled=true --set monitoring.dashboard.enabled=true \
      --show-only "templates/monitoring/$file" | sed '1{/^---$/d}' \
      > "$work/monitoring/spotkube/templates/monitoring/$file"
  done
  for component in "${COMPONENTS[@]}" monitoring; do
    local from=$work/default/spotkube/templates/$component
    [ "$component" = monitoring ] && from=$work/monitoring/spotkube/templates/monitoring
    mkdir -p "$target/$component"
    local files=()
    for file in "$from"/*.yaml; do
      local name; name=$(basename "$file")
      { echo "# Rendered from charts/spotkube by \`make manifests\`: edit the chart, not this file."
        grep -v '^# Source: ' "$file" | sed '1{/^---$/d}'; } > "$target/$component/$name"
      # The ServiceMonitor needs the Prometheus Operator's CRDs: applied on its own.
      [ "$name" = servicemonitor.yaml ] || files+=("$name")
    done
    { echo "# Rendered from charts/spotkube by \`make manifests\`: edit the chart, not this file."
      if [ "$component" = monitoring ]; then
        echo "# Optional, not in ../kustomization.yaml: kubectl apply -k manifests/monitoring."
        echo "# servicemonitor.yaml needs the Prometheus Operator CRDs: kubectl apply -f it."
      fi
      echo "apiVersion: kustomize.config.k8s.io/v1beta1"
      echo "kind: Kustomization"
      echo "resources:"
      printf '  - %s\n' "${files[@]}"; } > "$target/$component/kustomization.yaml"
  done
  { echo "# Everything spotkube runs in the cluster:  kubectl apply -k manifests/"
    echo "# Rendered from charts/spotkube by \`make manifests\` (edit the chart, not these files)."
    echo "# Needs cert-manager for the webhook's certificate; without it, install with Helm and"
    echo "# webhook.tls.mode=helm (README.md, \"Install\"). Before applying, set the queue URL,"
    echo "# region and account in controller/deployment.yaml and the IAM role in"
    echo "# controller/serviceaccount.yaml. The AWS side is in controller/aws/."
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "resources:"
    printf '  - %s\n' "${COMPONENTS[@]}"; } > "$target/kustomization.yaml"
}

generated() { # the files of manifests/ this script owns
  (cd "$1" && find . -name '*.yaml' -not -path './controller/aws/*' | sort)
}

if [ "${1:-}" = "--check" ]; then
  assemble "$work/manifests"
  if ! diff -r -q <(generated manifests) <(generated "$work/manifests") >/dev/null \
     || ! (cd manifests && generated . | xargs -I{} cmp -s {} "$work/manifests/{}"); then
    echo "manifests/ is not what charts/spotkube renders; run: make manifests" >&2
    diff -ru --exclude=aws --exclude='*.md' manifests "$work/manifests" >&2 || true
    exit 1
  fi
  echo "manifests/ is up to date with charts/spotkube"
else
  generated manifests | (cd manifests && xargs -r rm -f)
  find manifests -type d -empty -delete
  assemble manifests
  echo "rendered manifests/ from charts/spotkube"
fi
