#!/usr/bin/env bash
# Builds the Gateway API conformance suite (as a test binary) and its echo-basic backend from the
# Go module pinned in this folder, and prints the folder that holds both (gwapi-conformance.test
# and echo-basic).
#
# The build is keyed on everything that decides its output (go.mod, go.sum, conformance_test.go,
# the Go version, the flags below). A finished build lives in a cache folder under $HOME named by
# that key, so a warm machine builds nothing and this prints the folder at once. Run it before
# entering the private network namespace: the namespace cannot reach the Go module proxy.
#
# usage: build.sh        (prints the folder on stdout; progress goes to stderr)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly
command -v go >/dev/null || PATH=/usr/local/go/bin:$PATH
command -v go >/dev/null || { echo "gwapi-conformance/build.sh: no go command on PATH (nor in /usr/local/go/bin)" >&2; exit 1; }

# The pinned version, as go.mod requires it (both modules are pinned to the same one).
version=$(sed -n 's#^\(require\)\{0,1\}[[:space:]]*sigs.k8s.io/gateway-api/conformance \(v[0-9.]*\).*#\2#p' "$here/go.mod" | head -n 1)
[ -n "$version" ] || { echo "gwapi-conformance/build.sh: $here/go.mod does not require sigs.k8s.io/gateway-api/conformance" >&2; exit 1; }
ldflags="-s -w"

key=$( { go version; echo "$ldflags"; cat "$here/go.mod" "$here/go.sum" "$here/conformance_test.go"; } | sha256sum | cut -c1-16)
cache=${MICROGATE_GWAPI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/microgate/gwapi-conformance}/$key

if [ ! -x "$cache/gwapi-conformance.test" ] || [ ! -x "$cache/echo-basic" ]; then
  echo "building the Gateway API conformance suite $version into $cache" >&2
  mkdir -p "$cache"
  start=$(date +%s)
  (cd "$here" && go test -c -trimpath -ldflags "$ldflags" -o "$cache/gwapi-conformance.test.tmp.$$" .)
  (cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$cache/echo-basic.tmp.$$" sigs.k8s.io/gateway-api/conformance/echo-basic)
  # A rename is atomic: a concurrent build never sees half a file.
  mv "$cache/gwapi-conformance.test.tmp.$$" "$cache/gwapi-conformance.test"
  mv "$cache/echo-basic.tmp.$$" "$cache/echo-basic"
  echo "$version" > "$cache/version"
  echo "built in $(( $(date +%s) - start ))s" >&2
fi
echo "$cache"
