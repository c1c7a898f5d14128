#!/usr/bin/env bash
# Builds the pinned control-plane binaries (k8s-testbin: etcd, kube-apiserver,
# kube-controller-manager, kubectl) and helm from the Go modules in this folder.
#
# The build is keyed on everything that decides its output (go.mod, go.sum, main.go, the Go
# version, the flags below). A finished build lives in a cache folder under $HOME named by that
# key, so a fresh clone on a warm machine links nothing; target/cluster/bin only points at it.
# Go's own caches stay in their defaults under $HOME for the same reason.
#
# usage: build.sh [BIN_DIR]       (default: <repo>/target/cluster/bin)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin_dir=${1:-$repo/target/cluster/bin}

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly

# The pinned versions, as go.mod requires them (a line 'k8s.io/kubernetes v1.36.3', in or out of a block).
pinned() { sed -n "s#^\(require\)\{0,1\}[[:space:]]*$1 \(v[0-9.]*\).*#\2#p" "$2" | head -n 1; }
k8s_version=$(pinned k8s.io/kubernetes "$here/go.mod")
helm_version=$(pinned helm.sh/helm/v4 "$here/helm/go.mod")
[ -n "$k8s_version" ] || { echo "build.sh: $here/go.mod does not require k8s.io/kubernetes" >&2; exit 1; }
[ -n "$helm_version" ] || { echo "build.sh: $here/helm/go.mod does not require helm.sh/helm/v4" >&2; exit 1; }
minor=$(echo "$k8s_version" | cut -d. -f2)

k8s_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version \
-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
-X k8s.io/component-base/version.gitTreeState=clean \
-X k8s.io/client-go/pkg/version.gitVersion=$k8s_version \
-X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
helm_ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version"

key=$( { go version; echo "$k8s_ldflags $helm_ldflags";
         cat "$here/go.mod" "$here/go.sum" "$here/main.go" "$here/helm/go.mod" "$here/helm/go.sum"; } |
       sha256sum | cut -c1-16)
cache=${MICROGATE_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/microgate/cluster-bin}/$key

link_into_bin_dir() {
  mkdir -p "$bin_dir"
  for name in k8s-testbin helm; do ln -sfn "$cache/$name" "$bin_dir/$name"; done
  # Multi-call: each component is the same binary under its own name.
  for name in etcd kube-apiserver kube-controller-manager kubectl; do ln -sfn k8s-testbin "$bin_dir/$name"; done
  echo "$key" > "$bin_dir/.build-key"
}

if [ -x "$cache/k8s-testbin" ] && [ -x "$cache/helm" ]; then
  link_into_bin_dir
  exit 0
fi

echo "building the control plane (kubernetes $k8s_version, helm $helm_version) into $cache" >&2
echo "a cold build downloads ~0.8 GB of modules and compiles for 10-20 minutes on 2 cores" >&2
mkdir -p "$cache"
start=$(date +%s)
(cd "$here" && go build -trimpath -ldflags "$k8s_ldflags" -o "$cache/k8s-testbin.tmp" .)
(cd "$here/helm" && go build -trimpath -ldflags "$helm_ldflags" -o "$cache/helm.tmp" helm.sh/helm/v4/cmd/helm)
mv "$cache/k8s-testbin.tmp" "$cache/k8s-testbin"
mv "$cache/helm.tmp" "$cache/helm"
echo "built in $(( $(date +%s) - start ))s" >&2
link_into_bin_dir
