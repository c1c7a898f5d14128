#!/usr/bin/env bash
# Installs a cargo subcommand or tool from crates.io at a pinned version, once, into a cache
# under $HOME keyed by its name, version and the Rust version that builds it; prints the path of
# its binary on stdout (progress on stderr). A warm machine builds nothing.
#
# usage: cargo-tool.sh CRATE VERSION [BINARY]     (BINARY defaults to CRATE)
set -euo pipefail

crate=$1 version=$2 binary=${3:-$1}
command -v cargo >/dev/null || PATH=$HOME/.cargo/bin:$PATH
command -v cargo >/dev/null || { echo "cargo-tool.sh: no cargo on PATH (nor in ~/.cargo/bin)" >&2; exit 1; }

rust=$(rustc --version | cut -d' ' -f2)
cache=${MICROGATE_CARGO_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/microgate/cargo-tools}/$crate-$version-rust$rust

if [ ! -x "$cache/bin/$binary" ]; then
  echo "cargo-tool.sh: building $crate $version into $cache (once)" >&2
  start=$(date +%s)
  rm -rf "$cache.partial.$$"
  cargo install "$crate" --locked --version "=$version" --root "$cache.partial.$$" >&2
  rm -rf "$cache"
  # A rename is atomic: a concurrent run never sees half an install.
  mv "$cache.partial.$$" "$cache"
  echo "cargo-tool.sh: $crate built in $(( $(date +%s) - start ))s" >&2
fi
echo "$cache/bin/$binary"
