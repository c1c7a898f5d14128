#!/usr/bin/env bash
# Installs cargo-fuzz (what `make fuzz` runs) from crates.io into a cache under $HOME, keyed by
# its version, once: a fresh clone on a warm machine reuses it. Prints the directory to put on
# PATH; everything else goes to stderr. The nightly toolchain it needs is installed beside stable.
set -euo pipefail
version=0.13.2
cache=${MICROGATE_FUZZ_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/microgate/fuzz-tools}/cargo-fuzz-$version
if [ ! -x "$cache/bin/cargo-fuzz" ]; then
  echo "fuzz-tools: building cargo-fuzz $version into $cache (once)" >&2
  rm -rf "$cache.partial"
  cargo install cargo-fuzz --locked --version "$version" --root "$cache.partial" >&2
  rm -rf "$cache"
  mv "$cache.partial" "$cache"
fi
echo "$cache/bin"
