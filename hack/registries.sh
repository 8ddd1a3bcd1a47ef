#!/usr/bin/env bash
# Local registries for streamgate's integration tests and demo.
#
#   hack/registries.sh up       build/install what is missing, start everything, wait for /v2/
#   hack/registries.sh down     stop everything this script started (pid files), free the ports
#   hack/registries.sh status   what runs where
#   hack/registries.sh env      `export` lines for the addresses, credentials and log files
#
# What runs (all on 127.0.0.1, see docs/registries.md):
#   olareg          :25000  plain HTTP, in-memory, OCI 1.1 referrers API
#   olareg-paged    :25004  the same with 4 KiB referrers pages (Link: rel=next), our small main
#   distribution    :25001  Debian docker-registry 2.8, no auth, no referrers API (404)
#   basic           :25002  docker-registry 2.8, htpasswd basic auth (sg-user / sg-pass)
#   token registry  :25003  docker-registry 2.8, Docker token auth; tokens come from the ACR front
#   ACR front       :25443  HTTPS, tests/support/acr_front.py: /oauth2/exchange, /oauth2/token,
#                           proxies /v2/ to the token registry
#   olareg-acr      :25005  olareg, only reached through the next one
#   ACR front (referrers) :25445  HTTPS, the same front checking the bearer tokens itself, before
#                           olareg-acr: ACR auth together with the referrers API, as on ACR
#
# Cache and state live under ${STREAMGATE_CACHE:-$HOME/.cache/streamgate} (bin/, registries/),
# never inside the repository. Ports can be moved with STREAMGATE_*_PORT (see below).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TEMPLATES=$REPO_ROOT/hack/registry
CACHE=${STREAMGATE_CACHE:-$HOME/.cache/streamgate}
BIN=$CACHE/bin
STATE=${STREAMGATE_REGISTRY_STATE:-$CACHE/registries}
PKI=$STATE/pki

OLAREG_MODULE=github.com/olareg/olareg
OLAREG_VERSION=${STREAMGATE_OLAREG_VERSION:-v0.1.2}
DOCKER_REGISTRY=${STREAMGATE_DOCKER_REGISTRY_BIN:-/usr/bin/docker-registry}

HOST=127.0.0.1
OLAREG_PORT=${STREAMGATE_OLAREG_PORT:-25000}
DIST_PORT=${STREAMGATE_DISTRIBUTION_PORT:-25001}
BASIC_PORT=${STREAMGATE_BASIC_PORT:-25002}
TOKEN_PORT=${STREAMGATE_TOKEN_REGISTRY_PORT:-25003}
PAGED_PORT=${STREAMGATE_OLAREG_PAGED_PORT:-25004}
OLAREG_ACR_PORT=${STREAMGATE_OLAREG_ACR_PORT:-25005}
FRONT_REF_PORT=${STREAMGATE_ACR_REFERRERS_FRONT_PORT:-25445}
PAGED_LIMIT=${STREAMGATE_OLAREG_PAGED_LIMIT:-4096}
FRONT_PORT=${STREAMGATE_ACR_FRONT_PORT:-25443}

BASIC_USER=sg-user
BASIC_PASSWORD=sg-pass
# The token registry's own service name. The ACR front presents itself to clients as
# service "<front host:port>" (like ACR: service = login server) and signs access tokens
# with this name as audience.
TOKEN_SERVICE=${STREAMGATE_TOKEN_SERVICE:-streamgate-token-registry}
TOKEN_ISSUER=${STREAMGATE_TOKEN_ISSUER:-streamgate-acr-front}
# Opaque AAD token the 25443 front accepts (besides JWTs signed by pki/aad-signing.key).
AAD_TOKEN=${STREAMGATE_AAD_TOKEN:-sg-demo-aad-token}
START_FRONT=${STREAMGATE_START_ACR_FRONT:-1}

if [[ -n "${STREAMGATE_PYTHON:-}" ]]; then
  PYTHON=$STREAMGATE_PYTHON
elif [[ -x $REPO_ROOT/.venv/bin/python ]]; then
  PYTHON=$REPO_ROOT/.venv/bin/python
else
  PYTHON=python3
fi

INSTANCES=(olareg paged distribution basic token front olareg-acr front-referrers)

log() { printf 'registries: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

port_of() {
  case $1 in
    olareg) echo "$OLAREG_PORT" ;;
    paged) echo "$PAGED_PORT" ;;
    distribution) echo "$DIST_PORT" ;;
    basic) echo "$BASIC_PORT" ;;
    token) echo "$TOKEN_PORT" ;;
    front) echo "$FRONT_PORT" ;;
    olareg-acr) echo "$OLAREG_ACR_PORT" ;;
    front-referrers) echo "$FRONT_REF_PORT" ;;
  esac
}
pidfile_of() { echo "$STATE/$1.pid"; }
logfile_of() { echo "$STATE/$1.log"; }
# Strings that the command line of our process for this instance contains (all of them); used
# so that a stale pid file (pid reused) or another state dir's instance is never taken for ours.
markers_of() {
  case $1 in
    olareg) printf '%s\n' "$BIN/olareg " "--port $OLAREG_PORT " ;;
    paged) printf '%s\n' "$BIN/olareg-paged " "-port $PAGED_PORT " ;;
    front) printf '%s\n' "tests.support.acr_front " "--port $FRONT_PORT " "$PKI/front.crt " ;;
    olareg-acr) printf '%s\n' "$BIN/olareg " "--port $OLAREG_ACR_PORT " ;;
    front-referrers) printf '%s\n' "tests.support.acr_front " "--port $FRONT_REF_PORT " "$PKI/front.crt " ;;
    *) printf '%s\n' "$STATE/$1/config.yml" ;;
  esac
}

# is pid $2 our process for instance $1?
is_ours() {
  local name=$1 pid=$2 cmd m
  [[ -n $pid && -d /proc/$pid ]] || return 1
  cmd=" $(cmdline_of "$pid") "
  while IFS= read -r m; do
    [[ $cmd == *"$m"* ]] || return 1
  done < <(markers_of "$name")
  return 0
}

url_of() {
  if is_https "$1"; then echo "https://$HOST:$(port_of "$1")/v2/"; else echo "http://$HOST:$(port_of "$1")/v2/"; fi
}

is_https() { [[ $1 == front || $1 == front-referrers ]]; }

cmdline_of() { tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null || true; }

# pid of our process for instance $1, or nothing.
running_pid() {
  local name=$1 pf pid
  pf=$(pidfile_of "$name")
  [[ -f $pf ]] || return 0
  pid=$(cat "$pf" 2>/dev/null || true)
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  if is_ours "$name" "$pid"; then
    echo "$pid"
  fi
}

# pid listening on TCP port $1 on any address, or nothing (needs ss).
listener_pid() {
  command -v ss >/dev/null 2>&1 || return 0
  ss -ltnpH "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2 || true
}

port_busy() {
  if command -v ss >/dev/null 2>&1; then
    [[ -n $(ss -ltnH "sport = :$1" 2>/dev/null) ]]
  else
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
  fi
}

http_code() {
  local url=$1; shift
  curl -s -o /dev/null -m 2 -w '%{http_code}' "$@" "$url" 2>/dev/null || true
}

# ---------------------------------------------------------------- build / install

ensure_olareg() {
  local stamp=$BIN/olareg.version want
  # rebuild when the pinned version or our olareg-paged main changes
  want="$OLAREG_VERSION $(cksum < "$TEMPLATES/olareg-paged/main.go" | cut -d' ' -f1)"
  if [[ -x $BIN/olareg && -x $BIN/olareg-paged && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    return 0
  fi
  command -v go >/dev/null 2>&1 || die "go is needed to build olareg"
  log "building olareg $OLAREG_VERSION and olareg-paged into $BIN (first run only)"
  # `go install module@version` asks the module proxy for the version list (deprecation check),
  # which the proxy here refuses for olareg; building in a throwaway module that requires the
  # pinned version needs only that exact version.
  local work=$CACHE/build/olareg
  rm -rf "$work"
  mkdir -p "$work/olareg-paged" "$BIN"
  cat > "$work/go.mod" <<EOF
module streamgate.local/olareg-build

go 1.22

require $OLAREG_MODULE $OLAREG_VERSION
EOF
  cat > "$work/tools.go" <<EOF
//go:build tools

package tools

import _ "$OLAREG_MODULE/cmd/olareg"
EOF
  cp "$TEMPLATES/olareg-paged/main.go" "$work/olareg-paged/main.go"
  (cd "$work" && GOFLAGS=-mod=mod go mod tidy >/dev/null &&
    GOBIN=$BIN go install "$OLAREG_MODULE/cmd/olareg" ./olareg-paged) \
    || die "building olareg failed"
  echo "$want" > "$stamp"
}

ensure_docker_registry() {
  if [[ ! -x $DOCKER_REGISTRY ]]; then
    [[ $(id -u) == 0 ]] || die "$DOCKER_REGISTRY is missing; install Debian's docker-registry package (as root)"
    log "installing Debian's docker-registry package"
    # Keep the package's own service from starting (it would grab :5000).
    local made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
      chmod 755 /usr/sbin/policy-rc.d
      made_policy=1
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || rc=$?
    if [[ $rc == 0 ]]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-registry >/dev/null || rc=$?
    fi
    [[ $made_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
    [[ $rc == 0 ]] || die "apt-get install docker-registry failed"
    stop_package_service
  fi
  [[ -x $DOCKER_REGISTRY ]] || die "$DOCKER_REGISTRY still missing"
}

# The Debian package ships a service using /etc/docker/registry/config.yml on :5000. We never
# use it; make sure it is neither running nor enabled where an init system exists.
stop_package_service() {
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
  elif [[ -x /etc/init.d/docker-registry ]]; then
    /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
  fi
}

# ---------------------------------------------------------------- PKI

ensure_pki() {
  mkdir -p "$PKI"
  command -v openssl >/dev/null 2>&1 || die "openssl is needed"
  local tmp
  if [[ ! -s $PKI/ca.crt || ! -s $PKI/front.crt ]]; then
    log "generating a test CA and the ACR front's TLS certificate in $PKI"
    tmp=$(mktemp -d)
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
      -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -subj "/CN=streamgate test CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -addext "subjectKeyIdentifier=hash" >/dev/null 2>&1
    openssl req -new -newkey rsa:2048 -nodes -sha256 \
      -keyout "$PKI/front.key" -out "$tmp/front.csr" -subj "/CN=127.0.0.1" >/dev/null 2>&1
    cat > "$tmp/ext.cnf" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EOF
    openssl x509 -req -in "$tmp/front.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
      -CAcreateserial -days 3650 -sha256 -extfile "$tmp/ext.cnf" -out "$PKI/front.crt" >/dev/null 2>&1
    rm -rf "$tmp"
  fi
  # Access tokens for the token registry are signed with this key; its self-signed certificate
  # is the registry's rootcertbundle and travels in each token's x5c header.
  if [[ ! -s $PKI/token-signing.crt ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
      -keyout "$PKI/token-signing.key" -out "$PKI/token-signing.crt" -subj "/CN=$TOKEN_ISSUER" \
      -addext "keyUsage=critical,digitalSignature" >/dev/null 2>&1
  fi
  # The tests' stand-in for Azure AD: AAD tokens are JWTs signed by this key.
  if [[ ! -s $PKI/aad-signing.crt ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
      -keyout "$PKI/aad-signing.key" -out "$PKI/aad-signing.crt" -subj "/CN=streamgate test AAD" \
      -addext "keyUsage=critical,digitalSignature" >/dev/null 2>&1
  fi
  chmod 600 "$PKI"/*.key
}

# ---------------------------------------------------------------- configs

render() { # template name -> $STATE/name/config.yml, fresh data dir
  local name=$1 template=$2 dir=$STATE/$1
  rm -rf "$dir/data"
  mkdir -p "$dir/data"
  cp "$TEMPLATES/htpasswd" "$dir/htpasswd"
  sed -e "s#@INSTANCE@#streamgate-$name#g" \
      -e "s#@DATA@#$dir/data#g" \
      -e "s#@ADDR@#$HOST:$(port_of "$name")#g" \
      -e "s#@HTPASSWD@#$dir/htpasswd#g" \
      -e "s#@TOKEN_REALM@#https://$HOST:$FRONT_PORT/oauth2/token#g" \
      -e "s#@TOKEN_SERVICE@#$TOKEN_SERVICE#g" \
      -e "s#@TOKEN_ISSUER@#$TOKEN_ISSUER#g" \
      -e "s#@TOKEN_ROOTCERT@#$PKI/token-signing.crt#g" \
      "$TEMPLATES/$template" > "$dir/config.yml"
}

# ---------------------------------------------------------------- start / stop

spawn() { # name cmd... ; runs detached, output to the log file, pid to the pid file
  local name=$1; shift
  local lf pf
  lf=$(logfile_of "$name")
  pf=$(pidfile_of "$name")
  : > "$lf"
  if command -v setsid >/dev/null 2>&1; then
    setsid "$@" >>"$lf" 2>&1 </dev/null &
  else
    nohup "$@" >>"$lf" 2>&1 </dev/null &
  fi
  echo $! > "$pf"
}

spawn_front() { # name port upstream [extra args]
  local name=$1 port=$2 upstream=$3
  shift 3
  (cd "$REPO_ROOT" && PYTHONPATH=$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH} spawn "$name" "$PYTHON" -m tests.support.acr_front \
    --host "$HOST" --port "$port" \
    --upstream "$upstream" --upstream-service "$TOKEN_SERVICE" --issuer "$TOKEN_ISSUER" \
    --cert "$PKI/front.crt" --key "$PKI/front.key" \
    --signing-key "$PKI/token-signing.key" --signing-cert "$PKI/token-signing.crt" \
    --aad-cert "$PKI/aad-signing.crt" --aad-token "$AAD_TOKEN" "$@")
}

wait_ready() { # name
  local name=$1 url code pid i
  url=$(url_of "$name")
  for ((i = 0; i < 150; i++)); do
    if is_https "$name"; then
      code=$(http_code "$url" --cacert "$PKI/ca.crt")
    else
      code=$(http_code "$url")
    fi
    if [[ $code == 200 || $code == 401 ]]; then
      return 0
    fi
    pid=$(running_pid "$name")
    if [[ -z $pid ]]; then
      log "$name exited; last lines of $(logfile_of "$name"):"
      tail -n 20 "$(logfile_of "$name")" >&2 || true
      return 1
    fi
    sleep 0.2
  done
  log "$name did not answer GET $url within 30s; last lines of $(logfile_of "$name"):"
  tail -n 20 "$(logfile_of "$name")" >&2 || true
  stop_one "$name"
  return 1
}

start_one() {
  local name=$1 port pid owner
  port=$(port_of "$name")
  pid=$(running_pid "$name")
  if [[ -n $pid ]]; then
    wait_ready "$name" || return 1
    return 0
  fi
  rm -f "$(pidfile_of "$name")"
  if port_busy "$port"; then
    owner=$(listener_pid "$port")
    if is_ours "$name" "$owner"; then
      # ours, but the pid file was lost: adopt it
      echo "$owner" > "$(pidfile_of "$name")"
      wait_ready "$name" || return 1
      return 0
    fi
    die "port $HOST:$port for $name is taken by pid ${owner:-?} ($(cmdline_of "${owner:-0}")); set STREAMGATE_*_PORT"
  fi
  case $name in
    olareg)
      # In memory: every start is a fresh, empty registry. Trace level logs one line per
      # request (msg=ServeHTTP method=... url=... status=...), which the tests count.
      spawn olareg "$BIN/olareg" -v trace serve --addr "$HOST" --port "$OLAREG_PORT" \
        --store-type mem --api-push --api-delete --api-referrer
      ;;
    paged)
      spawn paged "$BIN/olareg-paged" -addr "$HOST" -port "$PAGED_PORT" -referrers-limit "$PAGED_LIMIT"
      ;;
    distribution)
      render distribution distribution-plain.yml
      spawn distribution "$DOCKER_REGISTRY" serve "$STATE/distribution/config.yml"
      ;;
    basic)
      render basic distribution-basic.yml
      spawn basic "$DOCKER_REGISTRY" serve "$STATE/basic/config.yml"
      ;;
    token)
      render token distribution-token.yml
      spawn token "$DOCKER_REGISTRY" serve "$STATE/token/config.yml"
      ;;
    front)
      spawn_front front "$FRONT_PORT" "$HOST:$TOKEN_PORT"
      ;;
    olareg-acr)
      spawn olareg-acr "$BIN/olareg" -v trace serve --addr "$HOST" --port "$OLAREG_ACR_PORT" \
        --store-type mem --api-push --api-delete --api-referrer
      ;;
    front-referrers)
      spawn_front front-referrers "$FRONT_REF_PORT" "$HOST:$OLAREG_ACR_PORT" --enforce-auth
      ;;
  esac
  wait_ready "$name"
}

stop_one() {
  local name=$1 port pid owner i
  port=$(port_of "$name")
  pid=$(running_pid "$name")
  if [[ -z $pid ]]; then
    owner=$(listener_pid "$port")
    if is_ours "$name" "$owner"; then
      pid=$owner
    fi
  fi
  if [[ -n $pid ]]; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      [[ -d /proc/$pid ]] || break
      sleep 0.1
    done
    if [[ -d /proc/$pid ]]; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$(pidfile_of "$name")"
  for ((i = 0; i < 50; i++)); do
    port_busy "$port" || return 0
    sleep 0.1
  done
  owner=$(listener_pid "$port")
  log "warning: port $port still taken by pid ${owner:-?} (not started by this script; left alone)"
}

cmd_up() {
  mkdir -p "$STATE" "$BIN"
  ensure_olareg
  ensure_docker_registry
  ensure_pki
  local name failed=0
  for name in "${INSTANCES[@]}"; do
    [[ $name == front* && $START_FRONT != 1 ]] && continue
    start_one "$name" || failed=1
  done
  [[ $failed == 0 ]] || die "some registries did not start (hack/registries.sh down cleans up)"
  log "up: olareg $HOST:$OLAREG_PORT, olareg-paged $HOST:$PAGED_PORT, distribution $HOST:$DIST_PORT, basic $HOST:$BASIC_PORT, token $HOST:$TOKEN_PORT, ACR front https://$HOST:$FRONT_PORT, olareg-acr $HOST:$OLAREG_ACR_PORT, ACR front with referrers https://$HOST:$FRONT_REF_PORT"
}

cmd_down() {
  local name
  for name in "${INSTANCES[@]}"; do
    stop_one "$name"
  done
}

cmd_status() {
  local name pid code rc=0
  for name in "${INSTANCES[@]}"; do
    pid=$(running_pid "$name")
    if [[ -n $pid ]]; then
      if is_https "$name"; then code=$(http_code "$(url_of "$name")" --cacert "$PKI/ca.crt"); else code=$(http_code "$(url_of "$name")"); fi
      printf '%-16s %-7s pid %-7s GET %s -> %s  log %s\n' "$name" running "$pid" "$(url_of "$name")" "$code" "$(logfile_of "$name")"
    else
      printf '%-16s %-7s %s\n' "$name" stopped "$(url_of "$name")"
      rc=3
    fi
  done
  return $rc
}

cmd_env() {
  cat <<EOF
export STREAMGATE_CACHE=$CACHE
export STREAMGATE_REGISTRY_STATE=$STATE
export STREAMGATE_OLAREG=$HOST:$OLAREG_PORT
export STREAMGATE_OLAREG_PAGED=$HOST:$PAGED_PORT
export STREAMGATE_DISTRIBUTION=$HOST:$DIST_PORT
export STREAMGATE_BASIC=$HOST:$BASIC_PORT
export STREAMGATE_BASIC_USER=$BASIC_USER
export STREAMGATE_BASIC_PASSWORD=$BASIC_PASSWORD
export STREAMGATE_TOKEN_REGISTRY=$HOST:$TOKEN_PORT
export STREAMGATE_TOKEN_SERVICE=$TOKEN_SERVICE
export STREAMGATE_TOKEN_ISSUER=$TOKEN_ISSUER
export STREAMGATE_ACR_FRONT=$HOST:$FRONT_PORT
export STREAMGATE_OLAREG_ACR=$HOST:$OLAREG_ACR_PORT
export STREAMGATE_ACR_REFERRERS_FRONT=$HOST:$FRONT_REF_PORT
export STREAMGATE_AAD_TOKEN=$AAD_TOKEN
export STREAMGATE_CA_CERT=$PKI/ca.crt
export STREAMGATE_PKI=$PKI
export STREAMGATE_OLAREG_LOG=$(logfile_of olareg)
export STREAMGATE_OLAREG_PAGED_LOG=$(logfile_of paged)
export STREAMGATE_DISTRIBUTION_LOG=$(logfile_of distribution)
export STREAMGATE_BASIC_LOG=$(logfile_of basic)
export STREAMGATE_TOKEN_REGISTRY_LOG=$(logfile_of token)
export STREAMGATE_ACR_FRONT_LOG=$(logfile_of front)
export STREAMGATE_OLAREG_ACR_LOG=$(logfile_of olareg-acr)
export STREAMGATE_ACR_REFERRERS_FRONT_LOG=$(logfile_of front-referrers)
EOF
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
