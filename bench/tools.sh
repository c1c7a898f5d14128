#!/usr/bin/env bash
# Installs what `make bench` runs, only what is missing, so a second run costs nothing:
# - from Debian's packages: nginx-light, haproxy, wrk, h2load (nghttp2-client), valgrind,
#   gnuplot (the chart), python3 (the report). Installing them starts no service here;
#   the bench starts its own processes and stops them by pid.
# - oha, a fixed-rate load generator with coordinated-omission correction, is not packaged:
#   it is built once from crates.io into a cache under $HOME (keyed by its version), so a
#   fresh clone on a warm machine reuses it. A cold build takes about 6 minutes on 2 cores.
#
# Prints the path of the oha binary on stdout; everything else goes to stderr.
#
# With arguments, installs only the commands named (e.g. `tools.sh nginx haproxy` for
# `make hostile`), and builds no oha.
set -euo pipefail

oha_version=1.16.0
cache=${MICROGATE_BENCH_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/microgate/bench-tools}/oha-$oha_version

say() { echo "bench-tools: $*" >&2; }

# command → Debian package that provides it
declare -A packages=(
  [nginx]=nginx-light
  [haproxy]=haproxy
  [wrk]=wrk
  [h2load]=nghttp2-client
  [valgrind]=valgrind
  [callgrind_annotate]=valgrind
  [gnuplot]=gnuplot-nox
  [python3]=python3
  [curl]=curl
)
wanted=("$@")
[ "${#wanted[@]}" -gt 0 ] || wanted=("${!packages[@]}")
missing=()
for command in "${wanted[@]}"; do
  [ -n "${packages[$command]:-}" ] || { say "unknown tool $command"; exit 1; }
  # nginx and haproxy live in sbin, which a non-root PATH may lack.
  if ! command -v "$command" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$command" ]; then
    missing+=("${packages[$command]}")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  say "installing ${missing[*]}"
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

[ "$#" -eq 0 ] || exit 0

if [ ! -x "$cache/bin/oha" ]; then
  say "building oha $oha_version into $cache (once; about 6 minutes on 2 cores)"
  start=$(date +%s)
  rm -rf "$cache.partial"
  cargo install oha --locked --version "$oha_version" --root "$cache.partial" >&2
  rm -rf "$cache"
  mv "$cache.partial" "$cache"
  say "oha built in $(( $(date +%s) - start ))s"
fi
echo "$cache/bin/oha"
