#!/usr/bin/env bash
# The CRDs of the policy report APIs streamgate writes, from the API projects' Go modules, in
# the cache outside the repository (nothing fetched is committed):
#
#   hack/policyreport-crds.sh            ensure them, print their directory
#   hack/policyreport-crds.sh --versions print the pinned module versions
#
#   wgpolicyk8s.io_policyreports.yaml, wgpolicyk8s.io_clusterpolicyreports.yaml
#       wgpolicyk8s.io/v1alpha2, as Kyverno ships them (config/crds/policyreport of
#       github.com/kyverno/kyverno, the version hack/kyverno.sh pins)
#   openreports.io_reports.yaml, openreports.io_clusterreports.yaml
#       openreports.io/v1alpha1 (config/crd of github.com/openreports/reports-api, the version
#       Kyverno's go.mod requires)
#
# `go mod download` fetches each module once into the Go module cache; the four files are copied
# to $STREAMGATE_CACHE/crds/policyreports-<versions>/. A warm run takes well under a second.
#
# Environment:
#   STREAMGATE_CACHE   cache root (default: $HOME/.cache/streamgate)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
KYVERNO_VERSION="$("$HERE/kyverno.sh" --version)"   # github.com/kyverno/kyverno
OPENREPORTS_VERSION="v0.2.1"                         # github.com/openreports/reports-api

CACHE="${STREAMGATE_CACHE:-$HOME/.cache/streamgate}"
OUT="$CACHE/crds/policyreports-$KYVERNO_VERSION-$OPENREPORTS_VERSION"
LOGS="$CACHE/logs"
SRC="$CACHE/src/policyreport-crds"

die() { echo "policyreport-crds: ERROR: $*" >&2; exit 1; }

case "${1:-}" in
  "") ;;
  --versions) echo "github.com/kyverno/kyverno $KYVERNO_VERSION"
              echo "github.com/openreports/reports-api $OPENREPORTS_VERSION"; exit 0 ;;
  -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
  *) echo "policyreport-crds: unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

FILES=(wgpolicyk8s.io_policyreports.yaml wgpolicyk8s.io_clusterpolicyreports.yaml
       openreports.io_reports.yaml openreports.io_clusterreports.yaml)
complete() { local f; for f in "${FILES[@]}"; do [[ -s "$OUT/$f" ]] || return 1; done; }
if complete; then echo "$OUT"; exit 0; fi

command -v go >/dev/null || die "go is not installed (needed to download the CRDs' modules)"
mkdir -p "$LOGS" "$SRC"
exec 9>"$CACHE/.policyreport-crds.lock"
flock 9
if complete; then echo "$OUT"; exit 0; fi

export GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=mod"
[[ -f "$SRC/go.mod" ]] || printf 'module streamgate.local/policyreport-crds\n\ngo 1.22\n' >"$SRC/go.mod"

# module_dir MODULE@VERSION: where the go command unpacked it.
module_dir() {
  (cd "$SRC" && go mod download -json "$1" 2>>"$LOGS/policyreport-crds.log") \
    | awk -F'"' '$2 == "Dir" {print $4}'
}

kdir="$(module_dir "github.com/kyverno/kyverno@$KYVERNO_VERSION")"
[[ -d "$kdir/config/crds/policyreport" ]] \
  || die "cannot download github.com/kyverno/kyverno@$KYVERNO_VERSION (see $LOGS/policyreport-crds.log)"
odir="$(module_dir "github.com/openreports/reports-api@$OPENREPORTS_VERSION")"
[[ -d "$odir/config/crd" ]] \
  || die "cannot download github.com/openreports/reports-api@$OPENREPORTS_VERSION (see $LOGS/policyreport-crds.log)"

mkdir -p "$CACHE/crds"
tmp="$(mktemp -d "$CACHE/crds/.policyreports.XXXXXX")"
cp "$kdir/config/crds/policyreport/wgpolicyk8s.io_policyreports.yaml" \
   "$kdir/config/crds/policyreport/wgpolicyk8s.io_clusterpolicyreports.yaml" \
   "$odir/config/crd/openreports.io_reports.yaml" \
   "$odir/config/crd/openreports.io_clusterreports.yaml" "$tmp/"
chmod 644 "$tmp"/*.yaml
rm -rf "$OUT"
mv "$tmp" "$OUT"
echo "$OUT"
