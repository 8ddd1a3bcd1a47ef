#!/usr/bin/env bash
# Headless Chromium for the HTML report's tests (tests/unit/cli/test_htmlreport_browser.py)
# and hack/demo.sh's screenshot: Debian's `chromium` package, installed when missing.
#
# Usage:
#   hack/chromium.sh path                      install if missing, print the binary's path
#   hack/chromium.sh screenshot FILE.html OUT.png [WIDTHxHEIGHT]
#   hack/chromium.sh dump-dom FILE.html        the DOM after scripts ran, on stdout
#
# Pages are opened with no network at all: chromium runs in a new network namespace
# (`unshare --net`, only a loopback that is down), so a page that needed the network would
# render without it.
set -euo pipefail

say() { echo "chromium.sh: $*" >&2; }
die() { echo "chromium.sh: ERROR: $*" >&2; exit 1; }

find_chromium() {
  local c
  for c in chromium chromium-browser; do
    if command -v "$c" >/dev/null 2>&1; then command -v "$c"; return 0; fi
  done
  return 1
}

ensure() {
  if ! find_chromium >/dev/null; then
    [[ $(id -u) == 0 ]] || die "chromium is missing; install Debian's chromium package (as root: apt-get install chromium)"
    say "installing Debian's chromium package (first run only)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || {
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    } || die "apt-get install chromium failed"
  fi
  find_chromium || die "chromium still missing after installing it"
}

# offline CMD...: run with no network (a fresh network namespace).
offline() {
  if [[ $(id -u) == 0 ]]; then
    unshare --net -- "$@"
  else
    unshare --map-root-user --net -- "$@"
  fi
}

run_headless() {
  local bin="$1"; shift
  local profile
  profile="$(mktemp -d)"
  # --no-sandbox: the sandbox needs privileges a container or a root shell lacks; the page
  # is our own output and there is no network. The profile is thrown away.
  offline "$bin" --headless --no-sandbox --disable-gpu --no-first-run --no-default-browser-check \
    --disable-extensions --disable-background-networking --disable-dev-shm-usage \
    --hide-scrollbars --user-data-dir="$profile" "$@" 2> >(grep -v -e '^\[' -e '^$' -e 'unexpected operator' -e 'bytes written to file' >&2 || true)
  local rc=$?
  rm -rf "$profile"
  return $rc
}

cmd="${1:-}"
case "$cmd" in
  path) ensure ;;
  screenshot)
    [[ $# -ge 3 ]] || die "usage: hack/chromium.sh screenshot FILE.html OUT.png [WIDTHxHEIGHT]"
    bin="$(ensure)"
    size="${4:-1280x1600}"
    out="$(readlink -f "$3")"
    run_headless "$bin" --window-size="${size/x/,}" --screenshot="$out" "file://$(readlink -f "$2")" >/dev/null
    [[ -s "$out" ]] || die "no screenshot written to $out"
    ;;
  dump-dom)
    [[ $# -ge 2 ]] || die "usage: hack/chromium.sh dump-dom FILE.html"
    bin="$(ensure)"
    run_headless "$bin" --dump-dom "file://$(readlink -f "$2")"
    ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
