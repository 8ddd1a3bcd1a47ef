#!/usr/bin/env bash
# Provides the binaries the local control plane (hack/cluster.sh) and the e2e
# tests need, in a cache directory outside the repository:
#
#   kube-apiserver, kube-controller-manager, kube-scheduler  (k8s.io/kubernetes)
#   etcd                                                      (go.etcd.io/etcd/server/v3)
#   kwok                                                      (sigs.k8s.io/kwok/cmd/kwok)
#   helm                                                      (helm.sh/helm/v3/cmd/helm)
#   helm4                                                     (helm.sh/helm/v4/cmd/helm, renamed)
#
# Everything is built from Go modules with the local Go toolchain (no Docker,
# no release downloads). A binary of the pinned version already in the cache is
# kept, so a warm run takes about a second. kube-apiserver/etcd from
# $KUBEBUILDER_ASSETS, or any binary on PATH, are used (symlinked into the
# cache) when their version is acceptable (same minor as the pin).
#
# Usage:
#   hack/k8s-binaries.sh              ensure all binaries, print nothing but progress
#   hack/k8s-binaries.sh --print-dir  ensure all binaries, then print the bin dir
#   hack/k8s-binaries.sh --versions   ensure all binaries, then print their versions
#
# Environment:
#   STREAMGATE_CACHE   cache root (default: $HOME/.cache/streamgate); binaries in $STREAMGATE_CACHE/bin
#   KUBEBUILDER_ASSETS optional directory with kube-apiserver / etcd to reuse
#   STREAMGATE_NO_PATH_BINARIES=1  ignore binaries on PATH / KUBEBUILDER_ASSETS (always use/build the pins)
set -euo pipefail

# ---- pinned versions --------------------------------------------------------
K8S_VERSION="v1.34.4"   # k8s.io/kubernetes; staging modules are k8s.io/*@v0.34.4
ETCD_VERSION="v3.6.16"  # go.etcd.io/etcd/server/v3
KWOK_VERSION="v0.7.0"   # sigs.k8s.io/kwok (client libraries 0.33, within skew of 1.34)
HELM_VERSION="v3.19.5"  # helm.sh/helm/v3 (client libraries 0.34, same minor as the cluster)
HELM4_VERSION="v4.3.2"  # helm.sh/helm/v4: the chart is tested with both majors

K8S_MINOR="$(echo "${K8S_VERSION#v}" | cut -d. -f2)"      # 34
STAGING_VERSION="v0.${K8S_VERSION#v1.}"                    # v0.34.4
ETCD_MINOR="$(echo "${ETCD_VERSION#v}" | cut -d. -f1-2)"   # 3.6
KWOK_MINOR="$(echo "${KWOK_VERSION#v}" | cut -d. -f1-2)"   # 0.7

CACHE="${STREAMGATE_CACHE:-$HOME/.cache/streamgate}"
BIN="$CACHE/bin"
SRC="$CACHE/src"     # generated wrapper modules
LOGS="$CACHE/logs"   # build logs

PRINT_DIR=0
PRINT_VERSIONS=0
for arg in "$@"; do
  case "$arg" in
    --print-dir) PRINT_DIR=1 ;;
    --versions) PRINT_VERSIONS=1 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "k8s-binaries: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

say() { echo "k8s-binaries: $*" >&2; }
die() { echo "k8s-binaries: ERROR: $*" >&2; exit 1; }

# ---- version probes ---------------------------------------------------------
# Each prints the bare version (e.g. v1.34.4, 3.6.16, v0.7.0, v3.19.5) of the
# binary at $1, or nothing if it does not run.
k8s_version_of()  { "$1" --version 2>/dev/null | awk '/^Kubernetes /{print $2; exit}'; }
etcd_version_of() { "$1" --version 2>/dev/null | awk -F': ' '/^etcd Version/{print $2; exit}'; }
kwok_version_of() { "$1" --version 2>/dev/null | grep -oE 'v?[0-9]+\.[0-9]+\.[0-9]+' | head -1 | sed 's/^v*/v/'; }
helm_version_of() { "$1" version --template '{{.Version}}' 2>/dev/null | head -1; }

# version_of NAME PATH
version_of() {
  case "$1" in
    kube-apiserver|kube-controller-manager|kube-scheduler) k8s_version_of "$2" ;;
    etcd) etcd_version_of "$2" ;;
    kwok) kwok_version_of "$2" ;;
    helm|helm4) helm_version_of "$2" ;;
  esac
}

# exact_ok NAME VERSION: the pinned version (for binaries we built ourselves).
exact_ok() {
  case "$1" in
    kube-apiserver|kube-controller-manager|kube-scheduler) [[ "$2" == "$K8S_VERSION" ]] ;;
    etcd) [[ "$2" == "${ETCD_VERSION#v}" ]] ;;
    kwok) [[ "$2" == "$KWOK_VERSION" ]] ;;
    helm) [[ "$2" == "$HELM_VERSION" ]] ;;
    helm4) [[ "$2" == "$HELM4_VERSION" ]] ;;
  esac
}

# acceptable NAME VERSION: good enough when found outside the cache.
acceptable() {
  case "$1" in
    kube-apiserver|kube-controller-manager|kube-scheduler) [[ "$2" == v1."$K8S_MINOR".* ]] ;;
    etcd) [[ "$2" == "$ETCD_MINOR".* ]] ;;
    kwok) [[ "$2" == v"$KWOK_MINOR".* ]] ;;
    helm) [[ "$2" =~ ^v3\.(1[4-9]|[2-9][0-9])\. ]] ;;
    helm4) [[ "$2" =~ ^v4\. ]] ;;
  esac
}

# have NAME: true if $BIN/NAME is usable. Our own builds must match the pin
# exactly; symlinks to outside binaries only need an acceptable version.
have() {
  local name="$1" f="$BIN/$1" v
  [[ -x "$f" ]] || return 1
  v="$(version_of "$name" "$f")"
  [[ -n "$v" ]] || return 1
  if [[ -L "$f" ]]; then acceptable "$name" "$v"; else exact_ok "$name" "$v"; fi
}

# adopt NAME: symlink an acceptable binary from KUBEBUILDER_ASSETS or PATH.
adopt() {
  local name="$1" cand v
  [[ "${STREAMGATE_NO_PATH_BINARIES:-0}" == 1 ]] && return 1
  for cand in ${KUBEBUILDER_ASSETS:+"$KUBEBUILDER_ASSETS/$name"} "$(command -v "$name" 2>/dev/null || true)"; do
    [[ -n "$cand" && -x "$cand" ]] || continue
    cand="$(readlink -f "$cand")"
    [[ "$cand" == "$(readlink -f "$BIN")/$name" ]] && continue   # that's our own cache
    v="$(version_of "$name" "$cand")"
    if [[ -n "$v" ]] && acceptable "$name" "$v"; then
      ln -sfn "$cand" "$BIN/$name"
      say "using $name $v from $cand"
      return 0
    fi
  done
  return 1
}

# ---- build helpers ----------------------------------------------------------
export CGO_ENABLED=0
export GOWORK=off
export GOFLAGS="${GOFLAGS:-} -mod=mod"

# run_logged LOGNAME CMD...: run a build with all output in $LOGS/LOGNAME.log;
# on failure show the end of the log and stop.
run_logged() {
  local log="$LOGS/$1.log"; shift
  local start=$SECONDS
  if ! "$@" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "build failed after $((SECONDS - start))s; full log: $log"
  fi
  say "  done in $((SECONDS - start))s"
}

# install_from TMPDIR NAME...: move freshly built binaries into $BIN atomically.
install_from() {
  local tmp="$1" n; shift
  for n in "$@"; do
    [[ -x "$tmp/$n" ]] || die "build did not produce $n"
    rm -f "$BIN/$n"
    mv -f "$tmp/$n" "$BIN/$n"
  done
}

# Kubernetes' ldflags (as hack/lib/version.sh writes them), for both
# k8s.io/component-base/version and k8s.io/client-go/pkg/version.
k8s_ldflags() {
  local date key val out="-s -w"
  date="$(date -u +'%Y-%m-%dT%H:%M:%SZ')"
  for key in gitVersion:"$K8S_VERSION" gitMajor:1 gitMinor:"$K8S_MINOR" \
             gitCommit:"module-$K8S_VERSION" gitTreeState:archive buildDate:"$date"; do
    val="${key#*:}"; key="${key%%:*}"
    out+=" -X k8s.io/component-base/version.$key=$val -X k8s.io/client-go/pkg/version.$key=$val"
  done
  echo "$out"
}

build_k8s() {
  local dir="$SRC/k8s-wrapper" tmp kmod
  mkdir -p "$dir"
  say "building kube-apiserver, kube-controller-manager, kube-scheduler $K8S_VERSION (first build takes ~5-10 minutes on 2 cores)..."
  # Fetch kubernetes' go.mod to learn its staging modules (the "=> ./staging/..." replaces).
  kmod="$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" 2>>"$LOGS/k8s.log" | awk -F'"' '/"GoMod":/{print $4}')" \
    || die "cannot download k8s.io/kubernetes@$K8S_VERSION (see $LOGS/k8s.log)"
  [[ -f "$kmod" ]] || die "cannot find go.mod of k8s.io/kubernetes@$K8S_VERSION (see $LOGS/k8s.log)"
  {
    echo "// Generated by hack/k8s-binaries.sh: builds Kubernetes commands from the module."
    echo "module streamgate.local/k8s-wrapper"
    echo
    grep -E '^go [0-9]' "$kmod"
    grep -E '^godebug ' "$kmod" || true
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    grep -E '^[[:space:]]*k8s\.io/[A-Za-z0-9._-]+ => \./staging/' "$kmod" \
      | awk -v v="$STAGING_VERSION" '{printf "\t%s => %s %s\n", $1, $1, v}'
    echo ")"
  } >"$dir/go.mod"
  tmp="$(mktemp -d "$BIN/.build.XXXXXX")"
  run_logged k8s bash -c "cd '$dir' && go build -trimpath -ldflags '$(k8s_ldflags)' -o '$tmp/' \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler"
  install_from "$tmp" kube-apiserver kube-controller-manager kube-scheduler
  rmdir "$tmp"
}

build_etcd() {
  local dir="$SRC/etcd-wrapper" tmp
  mkdir -p "$dir"
  say "building etcd ${ETCD_VERSION} (first build takes ~1 minute)..."
  # The main package of the etcd server is the root of go.etcd.io/etcd/server/v3.
  cat >"$dir/go.mod" <<EOF
// Generated by hack/k8s-binaries.sh: builds the etcd server from its module.
module streamgate.local/etcd-wrapper

go 1.26.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
  tmp="$(mktemp -d "$BIN/.build.XXXXXX")"
  run_logged etcd bash -c "cd '$dir' && go build -trimpath -ldflags '-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module-$ETCD_VERSION' \
      -o '$tmp/etcd' go.etcd.io/etcd/server/v3"
  install_from "$tmp" etcd
  rmdir "$tmp"
}

build_kwok() {
  local tmp
  say "building kwok $KWOK_VERSION (first build takes ~1-2 minutes)..."
  tmp="$(mktemp -d "$BIN/.build.XXXXXX")"
  run_logged kwok env GOBIN="$tmp" go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${K8S_VERSION#v}" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  install_from "$tmp" kwok
  rmdir "$tmp"
}

build_helm() {
  local tmp lf
  say "building helm $HELM_VERSION (first build takes ~1-2 minutes)..."
  tmp="$(mktemp -d "$BIN/.build.XXXXXX")"
  # Same variables as helm's Makefile: version, and the Kubernetes version used
  # for capabilities (helm template) and deprecation lint, here the cluster's.
  lf="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  lf+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$K8S_MINOR"
  lf+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$K8S_MINOR"
  run_logged helm env GOBIN="$tmp" go install -trimpath -ldflags "$lf" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  install_from "$tmp" helm
  rmdir "$tmp"
}

build_helm4() {
  local tmp lf
  say "building helm $HELM4_VERSION as helm4 (first build takes ~2-3 minutes)..."
  tmp="$(mktemp -d "$BIN/.build.XXXXXX")"
  # Helm 4's Makefile sets only version variables (it reads the Kubernetes version from its
  # client libraries).
  lf="-s -w -X helm.sh/helm/v4/internal/version.version=$HELM4_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
  run_logged helm4 env GOBIN="$tmp" go install -trimpath -ldflags "$lf" "helm.sh/helm/v4/cmd/helm@$HELM4_VERSION"
  mv -f "$tmp/helm" "$tmp/helm4"
  install_from "$tmp" helm4
  rmdir "$tmp"
}

# ---- main -------------------------------------------------------------------
command -v go >/dev/null || die "go is not installed (need Go >= 1.26 to build the binaries)"
mkdir -p "$BIN" "$SRC" "$LOGS"

# One builder at a time (parallel make targets, several shells).
exec 9>"$CACHE/.k8s-binaries.lock"
flock 9

ensure() {  # ensure BUILDER NAME...
  local builder="$1" n missing=0; shift
  for n in "$@"; do
    have "$n" || adopt "$n" || missing=1
  done
  if [[ $missing == 1 ]]; then
    # One builder makes all NAMEs (the three Kubernetes commands share one build);
    # its results replace whatever was in the cache, adopted symlinks included.
    "$builder"
    for n in "$@"; do have "$n" || die "$n in $BIN does not report the expected version after the build"; done
  fi
}

ensure build_k8s kube-apiserver kube-controller-manager kube-scheduler
ensure build_etcd etcd
ensure build_kwok kwok
ensure build_helm helm
ensure build_helm4 helm4

rm -rf "$BIN"/.build.* 2>/dev/null || true

if [[ $PRINT_VERSIONS == 1 ]]; then
  for n in kube-apiserver kube-controller-manager kube-scheduler etcd kwok helm helm4; do
    printf '%-24s %s\n' "$n" "$(version_of "$n" "$BIN/$n")"
  done
fi
if [[ $PRINT_DIR == 1 ]]; then
  echo "$BIN"
fi
