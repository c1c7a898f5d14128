#!/usr/bin/env bash
# Runs a command inside a private network namespace where all of 10.200.0.0/16 is local:
# pod IPs become 10.200.x.y (which the API server accepts in EndpointSlices, unlike 127.0.0.0/8)
# and the API server advertises 10.200.0.1. Nothing in the namespace can reach the network, and
# its addresses never exist outside it.
#
# The control plane of this mode keeps its state in target/cluster-netns; a cluster started here
# must also be stopped here (with-cluster.sh does that), since its ports live in the namespace.
# Build first (cargo test --no-run): the namespace has no route to the package registries.
#
# usage: netns.sh COMMAND [ARGS...]     (needs root, for unshare)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

if [ "$(id -u)" != 0 ]; then
  echo "netns.sh: creating a network namespace needs root (unshare --net)" >&2
  exit 1
fi
command -v ip >/dev/null || { echo "netns.sh: 'ip' is missing (apt-get install iproute2)" >&2; exit 1; }

export MICROGATE_NETNS=1 MICROGATE_POD_CIDR=10.200.0.0/16 MICROGATE_ADVERTISE_ADDRESS=10.200.0.1
export MICROGATE_CLUSTER_DIR=${MICROGATE_CLUSTER_DIR:-$repo/target/cluster-netns}
exec unshare --net -- bash -c '
  set -euo pipefail
  ip link set lo up
  ip addr add 10.200.0.1/16 dev lo
  exec "$@"' netns "$@"
