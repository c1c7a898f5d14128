#!/usr/bin/env bash
# Installs a Python tool from PyPI at a pinned version, once, into its own virtual environment in
# a cache under $HOME keyed by its name, version and the Python version; prints the path of its
# command on stdout (progress on stderr). A warm machine installs nothing.
#
# usage: pip-tool.sh PACKAGE VERSION [COMMAND]     (COMMAND defaults to PACKAGE)
set -euo pipefail

package=$1 version=$2 command=${3:-$1}
command -v python3 >/dev/null || bash "$(dirname "${BASH_SOURCE[0]}")/apt.sh" python3:python3
python=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
python3 -c 'import venv, ensurepip' 2>/dev/null || bash "$(dirname "${BASH_SOURCE[0]}")/apt.sh" "no-such-command:python$python-venv"
cache=${MICROGATE_PIP_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/microgate/pip-tools}/$package-$version-py$python

# A virtual environment's scripts name its folder, so it is built in place; the marker says it
# is whole.
if [ ! -f "$cache/.installed" ]; then
  echo "pip-tool.sh: installing $package $version into $cache (once)" >&2
  start=$(date +%s)
  rm -rf "$cache"
  python3 -m venv "$cache" >&2
  "$cache/bin/pip" install --quiet --disable-pip-version-check "$package==$version" >&2
  touch "$cache/.installed"
  echo "pip-tool.sh: $package installed in $(( $(date +%s) - start ))s" >&2
fi
echo "$cache/bin/$command"
