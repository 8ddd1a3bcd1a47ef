#!/usr/bin/env bash
# Build the container image from the repository's Dockerfile (`make image`).
#
#   hack/image.sh build          build (or reuse) the image; print its ID, size and SBOM path
#   hack/image.sh engine         print the engine used: docker or podman
#   hack/image.sh run ARGS...    `<engine> run` with the flags this machine needs (see below)
#   hack/image.sh cli ARGS...    `<engine> ARGS` (podman: with --runtime runc), e.g. `cli rm -f X`
#   hack/image.sh cold-start     start the image as the chart runs it, time process start ->
#                                /readyz ok (a self-signed certificate and the demo policy)
#
# The engine: Docker when an engine answers `docker info`; otherwise Debian's podman, installed
# with apt-get when missing (podman, runc, mmdebstrap, uidmap), run as root or rootless.
# Where no registry serves the Dockerfile's base image (python:3.11-slim-bookworm), a base with
# the same Debian release's Python 3.11 is built with mmdebstrap from the Debian mirror this
# machine's apt is configured with, cached under $CACHE/image/, imported and passed as the
# Dockerfile's PYTHON_IMAGE. STREAMGATE_PYTHON_IMAGE=<ref> forces a base; =debian forces the
# Debian-built one.
#
# podman on this kind of machine (measured, docs/install.md): crun refuses hybrid cgroups, so
# `--runtime runc`; root without CAP_SYS_RESOURCE cannot raise podman's default rlimits, so
# explicit `--ulimit nofile=1024:1024 --ulimit nproc=1024:1024`; `--network host` (no CNI
# bridge). pip in the build gets the machine's CA bundle as a build secret (never a layer).
#
# The image is reused when its `streamgate.build-key` label (a hash of the Dockerfile,
# .dockerignore, pyproject.toml, constraints.txt, README.md and app/) matches the sources;
# STREAMGATE_IMAGE_REBUILD=1 builds anyway.
#
# Environment: IMAGE (default streamgate:dev), STREAMGATE_CACHE, STREAMGATE_IMAGE_ENGINE
# (docker|podman), STREAMGATE_IMAGE_SOURCE (the org.opencontainers.image.source label; default
# the git remote's URL), STREAMGATE_IMAGE_CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt).
set -euo pipefail
shopt -s inherit_errexit

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${STREAMGATE_CACHE:-$HOME/.cache/streamgate}"
DIR="$CACHE/image"
IMAGE="${IMAGE:-streamgate:dev}"
SUITE=bookworm                      # the Debian release of the Dockerfile's default base
BASE_TAG="localhost/streamgate-base:python3.11-$SUITE"
CA_BUNDLE="${STREAMGATE_IMAGE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
# One SBOM per image name, e.g. streamgate-dev.sbom.cdx.json for streamgate:dev.
SBOM="$DIR/$(echo "${IMAGE##*/}" | tr ':@' '--').sbom.cdx.json"
VENV="$ROOT/.venv/bin"

CLEANUP=()
cleanup() { local d; for d in "${CLEANUP[@]}"; do rm -rf "$d"; done; }
trap cleanup EXIT
scratch() { SCRATCH=$(mktemp -d); CLEANUP+=("$SCRATCH"); }

say() { echo "image: $*" >&2; }
die() { echo "image: ERROR: $*" >&2; exit 1; }

# ---- the engine ----------------------------------------------------------------------------

apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  [[ $(id -u) == 0 ]] || die "missing Debian packages: ${missing[*]} (as root: apt-get install ${missing[*]})"
  say "installing Debian packages: ${missing[*]} (first run only)"
  {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
      { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
  } || die "apt-get install ${missing[*]} failed"
}

engine() {
  if [[ -n "${STREAMGATE_IMAGE_ENGINE:-}" ]]; then echo "$STREAMGATE_IMAGE_ENGINE"; return; fi
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then echo docker; return; fi
  echo podman
}

ENGINE=""
ensure_engine() {
  ENGINE=$(engine)
  if [[ $ENGINE == podman ]]; then
    local pkgs=(podman runc)
    [[ $(id -u) == 0 ]] || pkgs+=(uidmap)
    command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 || apt_install "${pkgs[@]}"
  fi
  command -v "$ENGINE" >/dev/null 2>&1 || die "$ENGINE is not installed"
}

# The engine command with this machine's flags; `run_flags` for `run`, `build_flags` for build.
eng() {
  if [[ $ENGINE == podman ]]; then podman --runtime runc "$@"; else docker "$@"; fi
}
run_flags() {
  if [[ $ENGINE == podman ]]; then
    echo --network host --ulimit nofile=1024:1024 --ulimit nproc=1024:1024
  else
    echo --network host
  fi
}

# ---- the base ------------------------------------------------------------------------------

# The Debian sources this machine's apt uses (deb822 or one-line), for mmdebstrap: read at run
# time, never written into the repository.
apt_sources() {
  local f
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [[ -s $f ]] && grep -qE '^[[:space:]]*(URIs:|deb )' "$f"; then echo "$f"; return; fi
  done
  die "no Debian apt sources found (/etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list)"
}

debian_base() {
  apt_install mmdebstrap
  mkdir -p "$DIR"
  local tar="$DIR/base-python3.11-$SUITE.tar"
  if [[ ! -s $tar ]]; then
    local sources; sources=$(apt_sources)
    say "building a Python 3.11 base from Debian $SUITE packages (mmdebstrap, apt sources $sources; ~1 min, cached in $tar)"
    # minbase + python3 (3.11 in bookworm), its venv module and CA certificates; no docs,
    # man pages or locales; no apt sources or lists left inside.
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --customize-hook='rm -f "$1"/etc/apt/sources.list "$1"/etc/apt/sources.list.d/*; rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
      "$SUITE" "$DIR/base.partial.tar" "$sources" || { rm -f "$DIR/base.partial.tar"; die "mmdebstrap failed"; }
    mv "$DIR/base.partial.tar" "$tar"
  fi
  # Imported again when the tarball changed (its mtime is kept in base.imported).
  if ! eng image inspect "$BASE_TAG" >/dev/null 2>&1 || [[ $(cat "$DIR/base.imported" 2>/dev/null) != "$(stat -c %Y "$tar")" ]]; then
    eng import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tar" "$BASE_TAG" >"$DIR/import.log" 2>&1 ||
      { cat "$DIR/import.log" >&2; die "$ENGINE import of $tar failed"; }
    stat -c %Y "$tar" > "$DIR/base.imported"
  fi
  echo "$BASE_TAG"
}

# The base to build on: the Dockerfile's default when the engine has it or can pull it,
# else the Debian-built one.
python_image() {
  local want="${STREAMGATE_PYTHON_IMAGE:-}"
  if [[ $want == debian ]]; then debian_base; return; fi
  if [[ -n $want ]]; then echo "$want"; return; fi
  local default
  default=$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$ROOT/Dockerfile")
  if eng image inspect "$default" >/dev/null 2>&1; then echo "$default"; return; fi
  # One try per base reference: a failed pull is remembered (remove $DIR/pull-failed to retry).
  if ! grep -qxF "$default" "$DIR/pull-failed" 2>/dev/null; then
    say "pulling $default"
    if timeout 120 "$ENGINE" pull -q "$default" >"$DIR/pull.log" 2>&1; then echo "$default"; return; fi
    say "pull failed: $(tail -1 "$DIR/pull.log")"
    echo "$default" >> "$DIR/pull-failed"
  fi
  say "no registry serves $default here: building on a Debian $SUITE base instead"
  debian_base
}

# ---- build ---------------------------------------------------------------------------------

build_key() {
  (cd "$ROOT" && { cat Dockerfile .dockerignore pyproject.toml README.md constraints.txt
    find app -type f -not -path '*/__pycache__/*' -not -name '*.pyc' -print0 | LC_ALL=C sort -z |
      xargs -0 sha256sum; } | sha256sum | cut -c1-16)
}

sbom() {
  # The SBOM of the image's Python environment: its virtualenv's site-packages copied out of
  # the image and read by cyclonedx-py (cyclonedx-bom, a dev tool pinned in constraints.txt)
  # through a throwaway virtualenv layout around this machine's Python 3.11.
  [[ -x $VENV/cyclonedx-py ]] || die "cyclonedx-py missing: run 'make install'"
  local work cid lib host_python
  scratch; work=$SCRATCH
  cid=$(eng create "$IMAGE")
  eng cp "$cid:/opt/streamgate/lib" "$work/lib" >/dev/null || { eng rm "$cid" >/dev/null; die "copying the virtualenv out of $IMAGE failed"; }
  eng rm "$cid" >/dev/null
  lib=$(cd "$work/lib" && ls -d python3.*)
  host_python=$("$VENV/python" -c 'import sys; print(sys._base_executable)')
  mkdir -p "$work/venv/bin" "$work/venv/lib"
  # Under the host Python's own version directory, so its site module finds the packages
  # (only their metadata is read).
  mv "$work/lib/$lib" "$work/venv/lib/$("$VENV/python" -c 'import sys; print("python%d.%d" % sys.version_info[:2])')"
  ln -s "$host_python" "$work/venv/bin/python"
  printf 'home = %s\ninclude-system-site-packages = false\n' "$(dirname "$host_python")" > "$work/venv/pyvenv.cfg"
  "$VENV/cyclonedx-py" environment --pyproject "$ROOT/pyproject.toml" --of JSON \
    -o "$SBOM.tmp" "$work/venv/bin/python" || die "cyclonedx-py failed"
  mv "$SBOM.tmp" "$SBOM"
}

cmd_build() {
  ensure_engine
  mkdir -p "$DIR"
  # One build at a time on this machine (the base tarball and the tags are shared).
  exec 9>"$DIR/build.lock"
  flock 9
  local key; key=$(build_key)
  local have=""
  have=$(eng image inspect --format '{{index .Config.Labels "streamgate.build-key"}}' "$IMAGE" 2>/dev/null || true)
  if [[ $have == "$key" && -z ${STREAMGATE_IMAGE_REBUILD:-} ]]; then
    say "$IMAGE is up to date with the sources (build key $key)"
  else
    local base version revision created source
    base=$(python_image)
    version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -1)
    revision=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ -n $(git -C "$ROOT" status --porcelain -- Dockerfile pyproject.toml constraints.txt app 2>/dev/null) ]]; then
      revision="$revision-dirty"
    fi
    created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    # The remote's URL without any user:password@ part.
    source=${STREAMGATE_IMAGE_SOURCE:-$(git -C "$ROOT" remote get-url origin 2>/dev/null | sed -E 's#//[^/@]*@#//#' || true)}
    [[ -n $source ]] || say "no git remote: the org.opencontainers.image.source label is empty (set STREAMGATE_IMAGE_SOURCE)"
    local args=(build --network host --build-arg "PYTHON_IMAGE=$base"
      --build-arg "VERSION=$version" --build-arg "REVISION=$revision"
      --build-arg "CREATED=$created" --build-arg "SOURCE=$source"
      --label "streamgate.build-key=$key" -t "$IMAGE" -f "$ROOT/Dockerfile")
    [[ -s $CA_BUNDLE ]] && args+=(--secret "id=ca_bundle,src=$CA_BUNDLE")
    [[ $ENGINE == podman ]] && args+=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
    [[ $ENGINE == docker ]] && export DOCKER_BUILDKIT=1
    say "building $IMAGE with $ENGINE on $base (log $DIR/build.log)"
    local t0=$SECONDS
    eng "${args[@]}" "$ROOT" > "$DIR/build.log" 2>&1 || { tail -30 "$DIR/build.log" >&2; die "$ENGINE build failed"; }
    say "built in $((SECONDS - t0)) s"
  fi
  # The SBOM describes this build (its key is kept beside it).
  if [[ ! -s $SBOM || $(cat "$SBOM.key" 2>/dev/null) != "$key" ]]; then
    sbom
    echo "$key" > "$SBOM.key"
  fi
  local id size
  id=$(eng image inspect --format '{{.Id}}' "$IMAGE")
  size=$(eng image inspect --format '{{.Size}}' "$IMAGE")
  echo "image: $IMAGE"
  echo "id:    ${id#sha256:}"
  echo "size:  $((size / 1000000)) MB ($size bytes, uncompressed)"
  echo "sbom:  $SBOM (CycloneDX JSON, $("$VENV/python" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["components"]))' "$SBOM") components)"
}

cmd_run() {
  ensure_engine
  # shellcheck disable=SC2046
  eng run $(run_flags) "$@"
}

# Cold start: a container as the chart runs it (read-only root, user 65532, no capabilities,
# no new privileges, tmpfs /tmp, mounted certificate and policy) from `run` to /readyz ok,
# timed on this side. The chart's --kubeconfig=in-cluster is replaced by none (no cluster
# watches), so this is the process and server start alone.
cmd_cold_start() {
  ensure_engine
  local runs=${1:-5} work port name i t0 t1 times=()
  scratch; work=$SCRATCH
  "$VENV/streamgate" certs "$work/certs" --host 127.0.0.1 >/dev/null
  chmod 0644 "$work/certs/"*
  cp "$ROOT/examples/policy.yaml" "$work/policy.yaml"; chmod 0644 "$work/policy.yaml"
  port=$("$VENV/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  for ((i = 1; i <= runs; i++)); do
    name="streamgate-coldstart-$$-$i"
    t0=$(date +%s%N)
    # shellcheck disable=SC2046
    eng run -d --rm --name "$name" $(run_flags) --read-only --user 65532:65532 --cap-drop ALL \
      --security-opt no-new-privileges --tmpfs /tmp:rw,size=16m \
      -v "$work/certs:/etc/streamgate/tls:ro" -v "$work/policy.yaml:/etc/streamgate/policy/policy.yaml:ro" \
      "$IMAGE" --host=127.0.0.1 --port="$port" --policy=/etc/streamgate/policy/policy.yaml \
      --cert=/etc/streamgate/tls/tls.crt --key=/etc/streamgate/tls/tls.key --log-format=json >/dev/null
    until curl -sf --cacert "$work/certs/ca.crt" "https://127.0.0.1:$port/readyz" >/dev/null; do
      (( ($(date +%s%N) - t0) < 60000000000 )) || { eng logs "$name" >&2 || true; eng rm -f "$name" >/dev/null; die "not ready after 60 s"; }
      sleep 0.02
    done
    t1=$(date +%s%N)
    times+=($(( (t1 - t0) / 1000000 )))
    eng rm -f "$name" >/dev/null
  done
  printf 'cold start (container run -> /readyz ok), %d runs, ms: %s\n' "$runs" "${times[*]}"
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print "median ms: " a[int((NR+1)/2)]}'
}

case "${1:-}" in
  build) cmd_build ;;
  engine) engine ;;
  run) shift; cmd_run "$@" ;;
  cli) shift; ensure_engine; eng "$@" ;;
  cold-start) shift; cmd_cold_start "$@" ;;
  *) echo "usage: $0 build | engine | run ARGS... | cli ARGS... | cold-start [RUNS]" >&2; exit 2 ;;
esac
