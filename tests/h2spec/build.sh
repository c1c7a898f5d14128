#!/usr/bin/env bash
# Builds h2spec, the HTTP/2 conformance suite, from the Go module pinned in this folder, and
# prints the path of the binary.
#
# The build is keyed on everything that decides its output (go.mod, go.sum, the Go version, the
# flags below). A finished build lives in a cache folder under $HOME named by that key, so a warm
# machine builds nothing and this prints the path at once.
#
# usage: build.sh        (prints /path/to/h2spec on stdout; progress goes to stderr)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly
command -v go >/dev/null || PATH=/usr/local/go/bin:$PATH
command -v go >/dev/null || { echo "h2spec/build.sh: no go command on PATH (nor in /usr/local/go/bin)" >&2; exit 1; }

# The pinned version, as go.mod requires it (e.g. v2.2.1+incompatible).
version=$(sed -n 's#^[[:space:]]*github.com/summerwind/h2spec \(v[^ ]*\).*#\1#p' "$here/go.mod" | head -n 1)
[ -n "$version" ] || { echo "h2spec/build.sh: $here/go.mod does not require github.com/summerwind/h2spec" >&2; exit 1; }
plain=${version#v}
plain=${plain%+incompatible}
ldflags="-s -w -X main.VERSION=$plain -X main.COMMIT=$version"

key=$( { go version; echo "$ldflags"; cat "$here/go.mod" "$here/go.sum"; } | sha256sum | cut -c1-16)
cache=${MICROGATE_H2SPEC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/microgate/h2spec}/$key

if [ ! -x "$cache/h2spec" ]; then
  echo "building h2spec $version into $cache" >&2
  mkdir -p "$cache"
  (cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$cache/h2spec.tmp.$$" github.com/summerwind/h2spec/cmd/h2spec)
  # A rename is atomic: a concurrent build (two test binaries at once) never sees half a file.
  mv "$cache/h2spec.tmp.$$" "$cache/h2spec"
fi
echo "$cache/h2spec"
