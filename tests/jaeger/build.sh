#!/usr/bin/env bash
# Builds Jaeger (all-in-one: OTLP in, query API out, in-memory storage) from the Go module pinned
# in this folder's go.mod, and prints the path of the binary. The tracing tests and the bench's
# tracing scenario export spans to it.
#
# The build is keyed on everything that decides its output (go.mod, go.sum, the Go version, the
# flags below). A finished build lives in a cache folder under $HOME named by that key, so a warm
# machine builds nothing and this prints the path at once. Run it before entering the private
# network namespace: the namespace cannot reach the Go module proxy.
#
# usage: build.sh        (prints /path/to/jaeger on stdout; progress goes to stderr)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly
command -v go >/dev/null || PATH=/usr/local/go/bin:$PATH
command -v go >/dev/null || { echo "jaeger/build.sh: no go command on PATH (nor in /usr/local/go/bin)" >&2; exit 1; }

version=$(sed -n 's#^[[:space:]]*github.com/jaegertracing/jaeger \(v[0-9.]*\).*#\1#p' "$here/go.mod" | head -n 1)
[ -n "$version" ] || { echo "jaeger/build.sh: $here/go.mod does not require github.com/jaegertracing/jaeger" >&2; exit 1; }
ldflags="-s -w"

key=$( { go version; echo "$ldflags"; cat "$here/go.mod" "$here/go.sum"; } | sha256sum | cut -c1-16)
cache=${MICROGATE_JAEGER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/microgate/jaeger}/$key

if [ ! -x "$cache/jaeger" ]; then
  echo "building jaeger $version into $cache" >&2
  mkdir -p "$cache"
  start=$(date +%s)
  (cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$cache/jaeger.tmp.$$" github.com/jaegertracing/jaeger/cmd/jaeger)
  # A rename is atomic: a concurrent build (two test binaries at once) never sees half a file.
  mv "$cache/jaeger.tmp.$$" "$cache/jaeger"
  echo "$version" > "$cache/version"
  echo "built in $(( $(date +%s) - start ))s" >&2
fi
echo "$cache/jaeger"
