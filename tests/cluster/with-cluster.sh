#!/usr/bin/env bash
# Runs a command with the local control plane up. A cluster that was already running is reused
# and left running; one this script started is stopped afterwards, whatever the command did.
#
# usage: with-cluster.sh COMMAND [ARGS...]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if bash "$here/cluster.sh" status >/dev/null 2>&1; then
  bash "$here/cluster.sh" up
else
  trap 'bash "$here/cluster.sh" down' EXIT
  bash "$here/cluster.sh" up
fi
"$@"
