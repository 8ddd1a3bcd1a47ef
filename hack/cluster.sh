#!/usr/bin/env bash
# A real local Kubernetes control plane without Docker:
#   etcd + kube-apiserver + kube-controller-manager + kube-scheduler + KWOK,
# with fake AKS-shaped node pools (hack/cluster/nodes.yaml) that KWOK keeps
# Ready and whose bound pods KWOK moves to Running. Everything listens on
# 127.0.0.1 only.
#
# Usage: hack/cluster.sh up | down | status | logs [component] [-f] | env
#
#   up      build/fetch binaries (hack/k8s-binaries.sh), start everything, create
#           the node pools, wait until ready; no-op if already up
#   down    stop every process started by `up` (also after a failed `up`)
#   status  what is running
#   logs    last lines of every log, or of one component (-f follows)
#   env     print `export KUBECONFIG=...`
#
# State (certs, etcd data, logs, pids, kubeconfig) lives in
#   ${STREAMGATE_CLUSTER_DIR:-${STREAMGATE_CACHE:-$HOME/.cache/streamgate}/cluster}
# Ports (all 127.0.0.1; override with the env vars):
#   STREAMGATE_ETCD_PORT=23790  STREAMGATE_ETCD_PEER_PORT=23800
#   STREAMGATE_APISERVER_PORT=26443  STREAMGATE_KCM_PORT=26257
#   STREAMGATE_SCHEDULER_PORT=26259  STREAMGATE_KWOK_PORT=26080
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${STREAMGATE_CACHE:-$HOME/.cache/streamgate}"
DIR="${STREAMGATE_CLUSTER_DIR:-$CACHE/cluster}"
PKI="$DIR/pki"
PIDS="$DIR/pids"
LOGS="$DIR/logs"
KUBECONFIG_FILE="$DIR/kubeconfig"

HOST=127.0.0.1
ETCD_PORT="${STREAMGATE_ETCD_PORT:-23790}"
ETCD_PEER_PORT="${STREAMGATE_ETCD_PEER_PORT:-23800}"
APISERVER_PORT="${STREAMGATE_APISERVER_PORT:-26443}"
KCM_PORT="${STREAMGATE_KCM_PORT:-26257}"
SCHEDULER_PORT="${STREAMGATE_SCHEDULER_PORT:-26259}"
KWOK_PORT="${STREAMGATE_KWOK_PORT:-26080}"
SERVICE_CIDR="${STREAMGATE_SERVICE_CIDR:-10.96.0.0/16}"   # a config value only; nothing listens there

# Start order; `down` stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
# component -> port(s) it listens on (for the free-port check and `down`)
declare -A PORTS=(
  [etcd]="$ETCD_PORT $ETCD_PEER_PORT"
  [kube-apiserver]="$APISERVER_PORT"
  [kube-controller-manager]="$KCM_PORT"
  [kube-scheduler]="$SCHEDULER_PORT"
  [kwok]="$KWOK_PORT"
)

say() { echo "cluster: $*" >&2; }
die() { echo "cluster: ERROR: $*" >&2; exit 1; }

# ---- processes ----------------------------------------------------------------

# pid_of NAME: pid from the pid file if that process is still the binary we
# started (guards against pid reuse); prints nothing otherwise.
pid_of() {
  local f="$PIDS/$1.pid" pid exe
  [[ -f "$f" ]] || return 0
  read -r pid exe <"$f" || true
  [[ -n "${pid:-}" && -d "/proc/$pid" ]] || return 0
  [[ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" == "$exe" ]] && echo "$pid"
  return 0
}

# start NAME BINARY ARGS...: run in its own session (so `down` can kill the
# whole process group), detached from the terminal, output to $LOGS/NAME.log.
start() {
  local name="$1" bin="$2"; shift 2
  local exe; exe="$(readlink -f "$bin")"
  say "starting $name"
  # 8>&-: the daemon must not inherit the lock fd of up/down (it would hold the lock forever)
  setsid "$bin" "$@" </dev/null >>"$LOGS/$name.log" 2>&1 8>&- &
  local pid=$! i
  echo "$pid $exe" >"$PIDS/$name.pid"
  # wait (briefly) until the child has exec'd the binary, so pid_of sees it
  for ((i = 0; i < 50; i++)); do
    [[ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" == "$exe" ]] && return 0
    [[ -d "/proc/$pid" ]] || return 0
    sleep 0.05
  done
}

# stop_pid PID: TERM its process group, wait up to 15s, then KILL.
stop_pid() {
  local pid="$1" pgid i
  pgid="$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')"
  if [[ -n "$pgid" && "$pgid" == "$pid" ]]; then
    kill -TERM -- "-$pgid" 2>/dev/null || true
  else
    kill -TERM "$pid" 2>/dev/null || true
  fi
  for ((i = 0; i < 150; i++)); do
    [[ -d "/proc/$pid" ]] || return 0
    # a zombie child of ours counts as gone
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == Z ]] && return 0
    sleep 0.1
  done
  say "  pid $pid did not stop on TERM; killing"
  if [[ -n "$pgid" && "$pgid" == "$pid" ]]; then kill -KILL -- "-$pgid" 2>/dev/null || true; fi
  kill -KILL "$pid" 2>/dev/null || true
}

# listeners PORT: pids listening on 127.0.0.1:PORT (or any address) over TCP.
listeners() {
  ss -ltnpH "sport = :$1" 2>/dev/null | grep -oE 'pid=[0-9]+' | cut -d= -f2 | sort -u
}

# our_binaries: resolved paths of the binaries in the bin dir (what `up` runs).
our_binaries() {
  local b
  for b in "$CACHE/bin"/*; do [[ -x "$b" ]] && readlink -f "$b"; done
  return 0
}

port_in_use() { [[ -n "$(ss -ltnH "sport = :$1" 2>/dev/null)" ]]; }

# ---- certificates -------------------------------------------------------------

# gen_cert NAME SUBJ EXT: key + cert signed by our CA.
gen_cert() {
  local name="$1" subj="$2" ext="$3"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  printf '%b\n' "$ext" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

# Certificates are kept between runs while valid for another day (etcd data is not).
ensure_pki() {
  if [[ -f "$PKI/ca.crt" && -f "$PKI/apiserver.crt" && -f "$PKI/admin.crt" && -f "$PKI/sa.key" && -f "$PKI/front-proxy-client.crt" ]] \
     && openssl x509 -checkend 86400 -noout -in "$PKI/apiserver.crt" >/dev/null 2>&1 \
     && openssl x509 -checkend 86400 -noout -in "$PKI/admin.crt" >/dev/null 2>&1; then
    return 0
  fi
  say "generating certificates in $PKI"
  rm -rf "$PKI"; mkdir -p "$PKI"; chmod 700 "$PKI"
  openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -days 3650 -sha256 \
    -subj "/CN=streamgate-local-ca" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" -out "$PKI/ca.crt" 2>/dev/null
  gen_cert apiserver "/CN=kube-apiserver" \
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:${SERVICE_CIDR%.*/*}.1"
  gen_cert admin "/O=system:masters/CN=admin" \
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth"
  # Front proxy (aggregation layer) CA + client: kube-apiserver publishes the
  # requestheader CA that controller-manager/scheduler (and any aggregated API
  # server) read; without it they log errors in a loop.
  openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI/front-proxy-ca.key" -days 3650 -sha256 \
    -subj "/CN=streamgate-front-proxy-ca" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" -out "$PKI/front-proxy-ca.crt" 2>/dev/null
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/front-proxy-client.key" -subj "/CN=front-proxy-client" \
    -out "$PKI/front-proxy-client.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >"$PKI/fp.ext"
  openssl x509 -req -in "$PKI/front-proxy-client.csr" -CA "$PKI/front-proxy-ca.crt" -CAkey "$PKI/front-proxy-ca.key" \
    -CAcreateserial -days 365 -sha256 -extfile "$PKI/fp.ext" -out "$PKI/front-proxy-client.crt" 2>/dev/null
  rm -f "$PKI/front-proxy-client.csr" "$PKI/fp.ext"
  # Service-account token signing key pair.
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  chmod 600 "$PKI"/*.key
}

write_kubeconfig() {
  local b64="base64 -w0"
  cat >"$KUBECONFIG_FILE.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: streamgate-local
  cluster:
    server: https://$HOST:$APISERVER_PORT
    certificate-authority-data: $($b64 <"$PKI/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $($b64 <"$PKI/admin.crt")
    client-key-data: $($b64 <"$PKI/admin.key")
contexts:
- name: streamgate-local
  context:
    cluster: streamgate-local
    user: admin
current-context: streamgate-local
EOF
  chmod 600 "$KUBECONFIG_FILE.tmp"
  mv -f "$KUBECONFIG_FILE.tmp" "$KUBECONFIG_FILE"
}

# ---- readiness ----------------------------------------------------------------

# wait_for COMPONENT WHAT SECONDS CMD...: poll CMD until it succeeds; on
# timeout, or when COMPONENT's process dies first, show its log tail and fail.
wait_for() {
  local comp="$1" what="$2" secs="$3" i; shift 3
  for ((i = 0; i < secs * 2; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    if [[ -z "$(pid_of "$comp")" ]]; then
      tail -n 20 "$LOGS/$comp.log" >&2 || true
      die "$comp exited during start-up (log: $LOGS/$comp.log)"
    fi
    sleep 0.5
  done
  tail -n 20 "$LOGS/$comp.log" >&2 || true
  die "timed out after ${secs}s waiting for $what (log: $LOGS/$comp.log)"
}

curl_api() {  # curl_api PATH: GET on the apiserver as admin
  curl -sf --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://$HOST:$APISERVER_PORT$1"
}
curl_insecure() { curl -skf --max-time 5 "$1"; }
kc() { kubectl --kubeconfig "$KUBECONFIG_FILE" "$@"; }

all_running() {
  local c
  for c in "${COMPONENTS[@]}"; do [[ -n "$(pid_of "$c")" ]] || return 1; done
}

nodes_ready() {
  local want got
  want="$(grep -c '^kind: Node' "$HERE/cluster/nodes.yaml")"
  got="$(kc get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$' || true)"
  [[ "$got" -ge "$want" ]]
}

print_env() {
  echo "kubeconfig: $KUBECONFIG_FILE" >&2
  echo "export KUBECONFIG=$KUBECONFIG_FILE"
}

# ---- commands -----------------------------------------------------------------

# lock_dir SECONDS: serialize up/down on one cluster dir (fd 8; never passed to
# daemons). The file is named up-down.lock because daemons started by an early
# version of this script still hold the old ".lock".
lock_dir() {
  exec 8>"$DIR/up-down.lock"
  flock -w "$1" 8
}

already_up() {
  all_running && curl_api /readyz >/dev/null 2>&1 || return 1
  [[ -f "$KUBECONFIG_FILE" ]] || write_kubeconfig
  say "already up"
  print_env
}

cmd_up() {
  mkdir -p "$DIR" "$PIDS" "$LOGS"
  # Fast path, no lock needed: everything is running and the apiserver is ready.
  if already_up; then return 0; fi
  lock_dir 300 || die "another up/down still holds $DIR/up-down.lock after 300s"
  # Someone else may have brought it up while we waited for the lock.
  if already_up; then return 0; fi
  # Anything left over from a half-finished run goes first.
  if compgen -G "$PIDS/*.pid" >/dev/null; then
    say "cleaning up a partial cluster"
    do_down
  fi

  local BIN
  BIN="$("$HERE/k8s-binaries.sh" --print-dir)" || die "could not get the Kubernetes binaries"
  command -v kubectl >/dev/null || die "kubectl not found on PATH"

  # Ports inside the kernel's ephemeral range can be taken at any moment by an
  # outgoing connection's local port, so a listener may fail to bind.
  local c p lo=32768 hi=60999
  read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
  for c in "${COMPONENTS[@]}"; do
    for p in ${PORTS[$c]}; do
      if ((p >= lo && p <= hi)); then
        say "warning: port $p ($c) is inside the ephemeral port range $lo-$hi; start-up may fail at random. Prefer ports below $lo."
      fi
      if port_in_use "$p"; then
        die "port $p (for $c) is already in use: $(ss -ltnpH "sport = :$p" | head -1). Stop it, or set the STREAMGATE_*_PORT variables."
      fi
    done
  done

  ensure_pki
  write_kubeconfig
  # Fresh logs for this run (the previous run's are kept as *.log.1).
  for c in "${COMPONENTS[@]}"; do [[ -f "$LOGS/$c.log" ]] && mv -f "$LOGS/$c.log" "$LOGS/$c.log.1"; done
  : # and a fresh etcd data dir
  rm -rf "$DIR/etcd"
  local t0=$SECONDS

  # If anything below fails, stop what was started (the logs stay).
  UP_OK=0
  trap '[[ ${UP_OK:-0} == 1 ]] || { say "up failed; stopping what was started (logs: $LOGS)"; do_down >/dev/null 2>&1; }' EXIT

  start etcd "$BIN/etcd" \
    --name=streamgate --data-dir="$DIR/etcd" \
    --listen-client-urls="http://$HOST:$ETCD_PORT" --advertise-client-urls="http://$HOST:$ETCD_PORT" \
    --listen-peer-urls="http://$HOST:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://$HOST:$ETCD_PEER_PORT" \
    --initial-cluster="streamgate=http://$HOST:$ETCD_PEER_PORT" --initial-cluster-state=new \
    --unsafe-no-fsync --snapshot-count=10000 --log-level=warn
  wait_for etcd "etcd /health" 30 curl -sf --max-time 2 "http://$HOST:$ETCD_PORT/health"

  # --endpoint-reconciler-type=none: the "kubernetes" Service gets no Endpoints,
  # because Endpoints reject the loopback advertise address (the lease reconciler
  # would log "may not be in the loopback range" every 10s).
  # --requestheader-*/--proxy-client-*: the aggregation layer's front proxy.
  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers="http://$HOST:$ETCD_PORT" \
    --bind-address=$HOST --advertise-address=$HOST --secure-port="$APISERVER_PORT" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --authorization-mode=Node,RBAC \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --allow-privileged=true \
    --endpoint-reconciler-type=none \
    --profiling=false \
    --v=1
  wait_for kube-apiserver "kube-apiserver /readyz" 120 curl_api /readyz

  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$KUBECONFIG_FILE" \
    --authentication-kubeconfig="$KUBECONFIG_FILE" --authorization-kubeconfig="$KUBECONFIG_FILE" \
    --bind-address=$HOST --secure-port="$KCM_PORT" \
    --leader-elect=false --controllers='*' \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --profiling=false --v=1

  start kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig="$KUBECONFIG_FILE" \
    --authentication-kubeconfig="$KUBECONFIG_FILE" --authorization-kubeconfig="$KUBECONFIG_FILE" \
    --bind-address=$HOST --secure-port="$SCHEDULER_PORT" \
    --leader-elect=false --profiling=false --v=1

  # KWOK_WORKDIR keeps a user's ~/.kwok/kwok.yaml from being loaded.
  KWOK_WORKDIR="$DIR/kwok" start kwok "$BIN/kwok" \
    --config="$HERE/cluster/kwok.yaml" \
    --kubeconfig="$KUBECONFIG_FILE" \
    --server-address="$HOST:$KWOK_PORT" \
    --v="${STREAMGATE_KWOK_LOG_LEVEL:-WARN}"   # INFO logs every lease renewal of every node

  wait_for kube-controller-manager "kube-controller-manager /healthz" 60 curl_insecure "https://$HOST:$KCM_PORT/healthz"
  wait_for kube-scheduler "kube-scheduler /healthz" 60 curl_insecure "https://$HOST:$SCHEDULER_PORT/healthz"
  wait_for kwok "kwok /healthz" 60 curl -sf --max-time 2 "http://$HOST:$KWOK_PORT/healthz"

  say "creating node pools and RuntimeClass"
  kc apply -f "$HERE/cluster/nodes.yaml" >/dev/null
  kc apply -f "$HERE/cluster/runtimeclasses.yaml" >/dev/null
  wait_for kwok "all nodes Ready (KWOK)" 90 nodes_ready
  wait_for kube-controller-manager "ServiceAccount default/default" 60 kc get serviceaccount default -n default
  UP_OK=1

  say "up in $((SECONDS - t0))s: $(kc get nodes --no-headers | wc -l) nodes Ready, Kubernetes $(curl_api /version | awk -F'"' '/gitVersion/{print $4}')"
  print_env
}

# do_down: stop everything; never fails.
do_down() {
  local c pid p i stopped=0 bins
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    c="${COMPONENTS[$i]}"
    pid="$(pid_of "$c")"
    if [[ -n "$pid" ]]; then
      say "stopping $c (pid $pid)"
      stop_pid "$pid"
      stopped=1
    fi
    rm -f "$PIDS/$c.pid"
  done
  # Pid files lost (e.g. cluster dir wiped while running)? Free our ports from
  # processes that run one of our binaries -- never anything else.
  bins="$(our_binaries)"
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    c="${COMPONENTS[$i]}"
    for p in ${PORTS[$c]}; do
      for pid in $(listeners "$p"); do
        if grep -qxF "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" <<<"$bins"; then
          say "stopping stray $c on port $p (pid $pid)"
          stop_pid "$pid"
          stopped=1
        else
          say "warning: port $p is held by a process not started by this script (pid $pid); left alone"
        fi
      done
    done
  done
  [[ $stopped == 1 ]] && say "stopped" || say "not running"
  return 0
}

cmd_down() {
  mkdir -p "$DIR" "$PIDS"
  lock_dir 30 || say "warning: $DIR/up-down.lock is busy; stopping anyway"
  do_down
}

cmd_status() {
  local c pid p up=0
  for c in "${COMPONENTS[@]}"; do
    pid="$(pid_of "$c")"
    if [[ -n "$pid" ]]; then
      printf '%-24s running  pid %-7s port %s\n' "$c" "$pid" "${PORTS[$c]}"; up=$((up + 1))
    else
      printf '%-24s stopped\n' "$c"
    fi
  done
  if [[ -n "$(pid_of kube-apiserver)" ]] && curl_api /readyz >/dev/null 2>&1; then
    echo "apiserver: https://$HOST:$APISERVER_PORT ready ($(curl_api /version | awk -F'"' '/gitVersion/{print $4}'))"
    echo "nodes: $(kc get nodes --no-headers 2>/dev/null | awk '$2=="Ready"' | wc -l) Ready of $(kc get nodes --no-headers 2>/dev/null | wc -l)"
    echo "export KUBECONFIG=$KUBECONFIG_FILE"
  fi
  [[ $up == "${#COMPONENTS[@]}" ]] && return 0
  if [[ $up == 0 ]]; then
    echo "cluster is down"
    for c in "${COMPONENTS[@]}"; do
      for p in ${PORTS[$c]}; do
        for pid in $(listeners "$p"); do
          echo "warning: port $p ($c) is in use by pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-120)"
        done
      done
    done
    return 3
  fi
  echo "cluster is partly up (run: $0 down)"; return 1
}

cmd_logs() {
  local comp="" follow=0 a
  for a in "$@"; do
    case "$a" in
      -f|--follow) follow=1 ;;
      *) comp="$a" ;;
    esac
  done
  if [[ -n "$comp" ]]; then
    [[ -f "$LOGS/$comp.log" ]] || die "no log for '$comp' (components: ${COMPONENTS[*]})"
    if [[ $follow == 1 ]]; then exec tail -n 50 -F "$LOGS/$comp.log"; fi
    tail -n 100 "$LOGS/$comp.log"
  else
    if [[ $follow == 1 ]]; then exec tail -n 5 -F "$LOGS"/*.log; fi
    for a in "${COMPONENTS[@]}"; do
      [[ -f "$LOGS/$a.log" ]] || continue
      echo "==> $a ($LOGS/$a.log) <=="
      tail -n 15 "$LOGS/$a.log"
    done
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  logs) shift; cmd_logs "$@" ;;
  env) print_env 2>/dev/null ;;
  *) sed -n '2,22p' "$0" >&2; exit 2 ;;
esac
