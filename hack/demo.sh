#!/usr/bin/env bash
# `make demo`: a real local control plane (AKS-shaped node pools), a local registry with
# streaming artifacts, streamgate wired in as an admission webhook, and the examples applied
# with kubectl — printing what a developer sees.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/.venv/bin"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "Local control plane (first run builds Kubernetes from Go modules: ~15-30 min on 2 cores)"
hack/cluster.sh up
KUBECONFIG="$(hack/cluster.sh env | sed 's/^export KUBECONFIG=//')"
export KUBECONFIG

step "Local registries (olareg with the OCI referrers API on 127.0.0.1:25000), seeded"
hack/registries.sh up >/dev/null
"$BIN/python" hack/seed_registry.py --registry 127.0.0.1:25000 --plain-http seed

step "streamgate as a local process, wired in with the chart's webhook configurations"
hack/webhook.sh up

step "Node pools, as streamgate sees them"
"$BIN/streamgate" pools --kubeconfig "$KUBECONFIG"

# Start from a clean slate so the demo can be run again.
kubectl delete --ignore-not-found --wait=false -f examples/ >/dev/null 2>&1 || true
kubectl wait --for=delete namespace/payments --timeout=60s >/dev/null 2>&1 || true

step "kubectl apply, one example at a time (policy: examples/policy.yaml, mode warn)"
denied=0
for file in examples/0*.yaml; do
  printf '\n\033[36m$ kubectl apply -f %s\033[0m   # %s\n' "$file" "$(head -1 "$file" | sed 's/^# //')"
  if ! kubectl apply -f "$file" 2>&1; then denied=$((denied + 1)); fi
done

step "What /mutate wrote on the stored objects"
kubectl get deployment web -o jsonpath='{range .metadata.annotations}{end}' >/dev/null
for obj in deployment/web pod/plain statefulset/db job/migrate; do
  printf '%-18s ' "$obj"
  kubectl get "$obj" -o go-template='{{range $k, $v := .metadata.annotations}}{{if ge (len $k) 14}}{{if eq (slice $k 0 14) "streamgate.io/"}}{{$k}}={{$v}}  {{end}}{{end}}{{end}}{{"\n"}}'
done
sleep 2
printf 'pods of deployment/web: '
kubectl get pods -l app=web -o custom-columns='NAME:.metadata.name,NODE:.spec.nodeName,STREAMING:.metadata.annotations.streamgate\.io/streaming' --no-headers | tr '\n' ';'
echo

step "The cluster's streaming readiness, as a page (streamgate scan -o html)"
mkdir -p .demo
"$BIN/streamgate" scan --kubeconfig "$KUBECONFIG" --policy examples/policy.yaml -q -o html > .demo/report.html
"$BIN/streamgate" scan --kubeconfig "$KUBECONFIG" --policy examples/policy.yaml -q | sed -n '/^Totals:/,$p'

step "Policy reports, as Policy Reporter reads them (streamgate scan -o policyreport | kubectl apply -f -)"
kubectl apply --server-side --force-conflicts -f "$(hack/policyreport-crds.sh)" >/dev/null
kubectl wait --for=condition=Established crd/policyreports.wgpolicyk8s.io >/dev/null
"$BIN/streamgate" scan --kubeconfig "$KUBECONFIG" --policy examples/policy.yaml -q -o policyreport | kubectl apply -f - >/dev/null
kubectl get policyreports -A

step "Done: ${denied} example(s) denied, the rest admitted with the warnings above"
cat <<TXT
Point kubectl at the cluster:   export KUBECONFIG=$KUBECONFIG
streamgate's decision log:      hack/webhook.sh logs
Judge manifests offline (CI):   .venv/bin/streamgate check -f examples/ --policy examples/policy.yaml
Tear it all down:               make demo-down
HTML readiness report:          file://$ROOT/.demo/report.html
Policy reports:                 kubectl get policyreports -A -o yaml
TXT
