#!/usr/bin/env bash
# Installs the Debian packages that provide the commands named, only those missing, so a second
# run costs nothing.
#
# usage: apt.sh COMMAND:PACKAGE...      e.g. apt.sh umoci:umoci musl-gcc:musl-tools
#        (a COMMAND that is an absolute path names a file the package installs)
set -euo pipefail

missing=()
for pair in "$@"; do
  command=${pair%%:*} package=${pair#*:}
  case $command in
    /*) [ -e "$command" ] || missing+=("$package") ;;
    # Some commands live in sbin, which a non-root PATH may lack.
    *) command -v "$command" >/dev/null 2>&1 || [ -x "/usr/sbin/$command" ] || missing+=("$package") ;;
  esac
done
[ "${#missing[@]}" -gt 0 ] || exit 0

mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "apt.sh: installing ${missing[*]}" >&2
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
"${sudo[@]}" apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
