#!/usr/bin/env bash
# streamgate on a kind cluster with the real image and chart (needs Docker, kind, kubectl, helm).
# Not runnable on machines without Docker; hack/cluster.sh is the Docker-free equivalent.
#
# Usage: hack/kind-e2e.sh [up|down]
#   up    create the kind cluster (if missing), build and load the image, install the chart,
#         apply a pod and show the webhook's warnings and annotations (default)
#   down  delete the kind cluster
#
# Environment: KIND_CLUSTER (default streamgate), IMAGE (default streamgate:e2e)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${KIND_CLUSTER:-streamgate}"
IMAGE="${IMAGE:-streamgate:e2e}"
NS=streamgate-system
DEMO=streamgate-demo

say() { echo "kind-e2e: $*" >&2; }

if [[ "${1:-up}" == down ]]; then
  kind delete cluster --name "$CLUSTER"
  exit 0
fi

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { say "$tool not found on PATH"; exit 1; }
done

if ! kind get clusters | grep -qx "$CLUSTER"; then
  say "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

say "building $IMAGE"
docker build -t "$IMAGE" "$ROOT"
kind load docker-image "$IMAGE" --name "$CLUSTER"

say "installing the chart (self-managed certificates)"
helm upgrade --install streamgate "$ROOT/chart" --namespace "$NS" --create-namespace \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
  --wait --timeout 180s
kubectl -n "$NS" rollout status deployment/streamgate --timeout 120s
# The pods patch the caBundle at start; wait until the apiserver can trust them.
for _ in $(seq 60); do
  [[ -n "$(kubectl get validatingwebhookconfiguration streamgate -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ]] && break
  sleep 1
done

say "applying a pod from ACR in namespace $DEMO (server dry run)"
kubectl create namespace "$DEMO" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$DEMO" streamgate.io/mode=warn --overwrite >/dev/null
# The registry is not reachable from kind: the webhook answers with its onError policy (allow
# with a warning) and annotates the pod; both show it was called.
out="$(kubectl -n "$DEMO" run try --image=streamgatedemo.azurecr.io/app:v1 --dry-run=server \
  -o jsonpath='{.metadata.annotations}' 2>&1)"
echo "$out"
if grep -q 'streamgate.io/' <<<"$out"; then
  say "OK: the webhook judged the pod (see the annotations and warnings above)"
else
  say "FAILED: no streamgate annotations; logs:"
  kubectl -n "$NS" logs deployment/streamgate --tail 50 >&2
  exit 1
fi
say "cluster kept; delete it with: $0 down"
