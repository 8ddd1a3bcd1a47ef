#!/usr/bin/env bash
# Run streamgate as a local process wired into the local control plane (hack/cluster.sh):
# a certificate for 127.0.0.1, `streamgate serve` watching the cluster, and the chart's own
# webhook configurations rendered in URL mode (clientConfig.url + caBundle) and applied.
#
# Usage: hack/webhook.sh up | down | status | logs
#   STREAMGATE_WEBHOOK_PORT   (default 28443)
#   STREAMGATE_METRICS_PORT   (default 28090: http://127.0.0.1:28090/metrics)
#   STREAMGATE_POLICY         policy file (default examples/policy.yaml), copied to
#                             $DIR/policy.yaml: edit that copy and the webhook reloads it
#   STREAMGATE_FAILURE_POLICY Ignore (default) | Fail
#   STREAMGATE_RELEASE        release name, so the webhook configurations' names (default
#                             streamgate); test runs use their own
#   STREAMGATE_ONLY_LABEL     key=value: only namespaces with this label are sent to the
#                             webhook (test runs sharing one cluster keep to their own)
#   STREAMGATE_HELM_SET       more chart values, space-separated key=value (helm --set), e.g.
#                             policy.namespaceLabel.allowRelax=true to match the policy file
#   STREAMGATE_SERVE_ARGS     more `streamgate serve` flags, space-separated (e.g. --events)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${STREAMGATE_CACHE:-$HOME/.cache/streamgate}"
DIR="${STREAMGATE_WEBHOOK_DIR:-$CACHE/webhook}"
PORT="${STREAMGATE_WEBHOOK_PORT:-28443}"
METRICS_PORT="${STREAMGATE_METRICS_PORT:-28090}"
POLICY="${STREAMGATE_POLICY:-$ROOT/examples/policy.yaml}"
FAILURE_POLICY="${STREAMGATE_FAILURE_POLICY:-Ignore}"
RELEASE="${STREAMGATE_RELEASE:-streamgate}"
ONLY_LABEL="${STREAMGATE_ONLY_LABEL:-}"
HELM_SET="${STREAMGATE_HELM_SET:-}"
read -r -a SERVE_ARGS <<< "${STREAMGATE_SERVE_ARGS:-}"
NAMESPACE=streamgate-system
BIN="$ROOT/.venv/bin"
PIDFILE="$DIR/streamgate.pid"
LOG="$DIR/streamgate.log"

say() { echo "webhook: $*" >&2; }
die() { echo "webhook: ERROR: $*" >&2; exit 1; }

kubeconfig() { "$ROOT/hack/cluster.sh" env | sed 's/^export KUBECONFIG=//'; }
helm_bin() { echo "$("$ROOT/hack/k8s-binaries.sh" --print-dir)/helm"; }

running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

render() {
  local ca_b64 only=() extra=() pair
  for pair in $HELM_SET; do extra+=(--set "$pair"); done
  ca_b64=$(base64 -w0 < "$DIR/certs/ca.crt")
  if [[ -n "$ONLY_LABEL" ]]; then
    only=(--set "webhook.namespaceSelectorExpressions[0].key=${ONLY_LABEL%%=*}"
          --set "webhook.namespaceSelectorExpressions[0].operator=In"
          --set-string "webhook.namespaceSelectorExpressions[0].values[0]=${ONLY_LABEL#*=}")
  fi
  "$(helm_bin)" template "$RELEASE" "$ROOT/chart" --namespace "$NAMESPACE" \
    --set deployment.enabled=false \
    --set "webhook.url=https://127.0.0.1:$PORT" \
    --set "webhook.caBundle=$ca_b64" \
    --set "webhook.failurePolicy=$FAILURE_POLICY" "${only[@]}" "${extra[@]}"
}

cmd_up() {
  [[ -x "$BIN/streamgate" ]] || die "run 'make install' first"
  mkdir -p "$DIR"
  local kc; kc=$(kubeconfig)
  [[ -f "$kc" ]] || die "the local cluster is not up (hack/cluster.sh up)"
  if running; then
    say "already running (pid $(cat "$PIDFILE"))"
  else
    "$BIN/streamgate" certs "$DIR/certs" --host 127.0.0.1 --host localhost >/dev/null
    cp "$POLICY" "$DIR/policy.yaml"
    setsid "$BIN/streamgate" serve --host 127.0.0.1 --port "$PORT" \
      --cert "$DIR/certs/tls.crt" --key "$DIR/certs/tls.key" \
      --metrics-port "$METRICS_PORT" --policy-reload-interval 1 \
      --policy "$DIR/policy.yaml" --kubeconfig "$kc" ${SERVE_ARGS[@]+"${SERVE_ARGS[@]}"} \
      >"$LOG" 2>&1 < /dev/null &
    echo $! > "$PIDFILE"
    local i
    for i in $(seq 1 150); do
      if curl -sf --cacert "$DIR/certs/ca.crt" "https://127.0.0.1:$PORT/readyz" >/dev/null; then
        break
      fi
      running || { tail -20 "$LOG" >&2; die "streamgate exited"; }
      sleep 0.2
    done
    curl -sf --cacert "$DIR/certs/ca.crt" "https://127.0.0.1:$PORT/readyz" >/dev/null \
      || { tail -20 "$LOG" >&2; die "streamgate not ready after 30s"; }
    say "streamgate serving on https://127.0.0.1:$PORT (log $LOG)"
  fi
  render | kubectl --kubeconfig "$kc" apply -f - >/dev/null
  say "webhook configurations applied (failurePolicy $FAILURE_POLICY)"
}

cmd_down() {
  local kc; kc=$(kubeconfig)
  if [[ -f "$kc" && -f "$DIR/certs/ca.crt" ]]; then
    render | kubectl --kubeconfig "$kc" delete --ignore-not-found -f - >/dev/null 2>&1 || true
  fi
  if running; then
    local pid; pid=$(cat "$PIDFILE")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
  say "stopped"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) if running; then echo "streamgate running pid $(cat "$PIDFILE") https://127.0.0.1:$PORT"; else echo "streamgate not running"; exit 1; fi ;;
  logs) tail -n "${2:-50}" "$LOG" ;;
  render) render ;;
  *) echo "usage: $0 up|down|status|logs|render" >&2; exit 2 ;;
esac
