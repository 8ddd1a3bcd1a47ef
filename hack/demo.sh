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
# The demo's policy is examples/policy.yaml plus remediation for one namespace, `fixme`: there
# streamgate starts the streaming conversions of images that have none, on the ACR stand-in
# (127.0.0.1:25445: ACR's /oauth2 and /acr/v1 endpoints before a real registry), logged in as
# `docker login` would be (the null user and a refresh token from /oauth2/exchange).
eval "$(hack/registries.sh env)"
hack/webhook.sh down >/dev/null 2>&1 || true  # started afresh: this policy, these credentials
FRONT=$STREAMGATE_ACR_REFERRERS_FRONT
mkdir -p .demo
"$BIN/python" - "$FRONT" "$STREAMGATE_CA_CERT" > .demo/policy.yaml <<'PY'
import sys, yaml
front, ca = sys.argv[1], sys.argv[2]
policy = yaml.safe_load(open("examples/policy.yaml"))
policy["acrRegistries"].append(front)
policy["acrRegistryNames"][front] = "demoacr"
policy["registry"]["registries"][front] = {
    "acr": True, "auth": "basic", "caFile": ca,
    "usernameEnv": "DEMO_ACR_USER", "passwordEnv": "DEMO_ACR_PASSWORD",
}
policy["remediation"] = {"namespaces": {"fixme": "convert"}, "registries": [front], "pollSeconds": 1}
yaml.safe_dump(policy, sys.stdout, sort_keys=False)
PY
export DEMO_ACR_USER=00000000-0000-0000-0000-000000000000
DEMO_ACR_PASSWORD=$(curl -sf --cacert "$STREAMGATE_CA_CERT" "https://$FRONT/oauth2/exchange" \
  -d grant_type=access_token -d "service=$FRONT" -d "access_token=$STREAMGATE_AAD_TOKEN" \
  | "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["refresh_token"])')
export DEMO_ACR_PASSWORD
STREAMGATE_POLICY=.demo/policy.yaml STREAMGATE_SERVE_ARGS=--events \
  STREAMGATE_HELM_SET=policy.remediation.namespaces.fixme=convert hack/webhook.sh up

step "Node pools, as streamgate sees them"
"$BIN/streamgate" pools --kubeconfig "$KUBECONFIG"

# Start from a clean slate so the demo can be run again.
kubectl delete --ignore-not-found --wait=false -f examples/ >/dev/null 2>&1 || true
kubectl delete namespace fixme --ignore-not-found --wait=false >/dev/null 2>&1 || true
kubectl wait --for=delete namespace/payments namespace/fixme --timeout=60s >/dev/null 2>&1 || true

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

step "Fix it: remediation: convert in namespace fixme (policy .demo/policy.yaml)"
# A fresh repository each run: a conversion leaves its streaming artifact behind.
REPO="fixme-$(date +%s)"
"$BIN/python" hack/seed_registry.py --registry "$FRONT" --ca-cert "$STREAMGATE_CA_CERT" \
  --aad-token "$STREAMGATE_AAD_TOKEN" --quiet seed --namespace "$REPO" >/dev/null
IMAGE="$FRONT/$REPO/plain:v1"
kubectl delete namespace fixme --ignore-not-found >/dev/null
kubectl create namespace fixme >/dev/null
deployment() {
  cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: app, namespace: fixme}
spec:
  replicas: 1
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec: {containers: [{name: app, image: $IMAGE}]}
YAML
}
printf '\n\033[36m$ kubectl apply -f app.yaml\033[0m   # Deployment fixme/app, image %s (no streaming artifact)\n' "$IMAGE"
deployment | kubectl apply -f - 2>&1
METRICS="http://127.0.0.1:${STREAMGATE_METRICS_PORT:-28090}/metrics"
printf 'waiting for the conversion'
for _ in $(seq 1 60); do
  if curl -sf "$METRICS" | grep -q '^streamgate_conversions_succeeded_total [1-9]'; then break; fi
  printf '.'; sleep 1
done
echo
curl -sf "$METRICS" | grep '^streamgate_conversions_\(started\|succeeded\)_total' || true
printf '\n\033[36m$ kubectl get events -n fixme --field-selector reason=StreamingConversionSucceeded\033[0m\n'
for _ in $(seq 1 20); do
  kubectl get events -n fixme --field-selector reason=StreamingConversionSucceeded -o name 2>/dev/null | grep -q . && break
  sleep 0.5
done
kubectl get events -n fixme --field-selector reason=StreamingConversionSucceeded \
  -o custom-columns='TYPE:.type,REASON:.reason,OBJECT:.involvedObject.kind,MESSAGE:.message' --no-headers
printf '\n\033[36m$ kubectl rollout restart deployment/app -n fixme\033[0m   # the next rollout: no warning\n'
kubectl rollout restart deployment/app -n fixme 2>&1
sleep 2
printf 'new pod: '
kubectl get pods -n fixme --sort-by=.metadata.creationTimestamp \
  -o custom-columns='NAME:.metadata.name,REPORT:.metadata.annotations.streamgate\.io/report' --no-headers | tail -1

step "Done: ${denied} example(s) denied, the rest admitted with the warnings above"
cat <<TXT
Point kubectl at the cluster:   export KUBECONFIG=$KUBECONFIG
streamgate's decision log:      hack/webhook.sh logs
Judge manifests offline (CI):   .venv/bin/streamgate check -f examples/ --policy examples/policy.yaml
Tear it all down:               make demo-down
HTML readiness report:          file://$ROOT/.demo/report.html
Policy reports:                 kubectl get policyreports -A -o yaml
Remediation (namespace fixme):  docs/remediation.md; the demo's policy is .demo/policy.yaml
TXT
