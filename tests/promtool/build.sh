#!/usr/bin/env bash
# Builds promtool from the Prometheus module pinned in this folder's go.mod and prints its path.
#
# The build is keyed on everything that decides its output (go.mod, go.sum, the Go version, the
# flags below). A finished build lives in a cache folder under $HOME named by that key, so a warm
# machine builds nothing and this prints the path at once. Run it before entering the private
# network namespace: the namespace cannot reach the Go module proxy.
#
# usage: build.sh        (prints the binary's path on stdout; progress goes to stderr)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly
command -v go >/dev/null || PATH=/usr/local/go/bin:$PATH
command -v go >/dev/null || { echo "promtool/build.sh: no go command on PATH (nor in /usr/local/go/bin)" >&2; exit 1; }

version=$(sed -n 's#^[[:space:]]*github.com/prometheus/prometheus \(v[0-9.]*\).*#\1#p' "$here/go.mod" | head -n 1)
[ -n "$version" ] || { echo "promtool/build.sh: $here/go.mod does not require github.com/prometheus/prometheus" >&2; exit 1; }
ldflags="-s -w"

key=$( { go version; echo "$ldflags"; cat "$here/go.mod" "$here/go.sum"; } | sha256sum | cut -c1-16)
cache=${MICROGATE_PROMTOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/microgate/promtool}/$key

if [ ! -x "$cache/promtool" ]; then
  echo "building promtool (prometheus $version) into $cache" >&2
  mkdir -p "$cache"
  start=$(date +%s)
  (cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$cache/promtool.tmp.$$" github.com/prometheus/prometheus/cmd/promtool)
  # A rename is atomic: a concurrent build never sees half a file.
  mv "$cache/promtool.tmp.$$" "$cache/promtool"
  echo "$version" > "$cache/version"
  echo "built in $(( $(date +%s) - start ))s" >&2
fi
echo "$cache/promtool"
