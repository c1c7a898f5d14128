#!/usr/bin/env bash
# `make hostile`: the hostile-input corpus (tests/hostile/requests.corpus) through microgate,
# nginx and HAProxy, side by side, to one strict recording backend; writes the verdict table to
# target/hostile/report.md.
#
# The recording backend is served by the hostile-report tool itself on a Pod-like loopback
# address. microgate (`microgate gateway`) finds it as a Pod on the local control plane: the
# script creates the Pod and reports it Ready itself (no controller, no kubelet), as `make bench`
# does. nginx and HAProxy (Debian's packages, installed by bench/tools.sh) are configured as
# `make bench` runs them: pooled keep-alive upstream connections, defaults otherwise.
#
# Knobs (environment): HOSTILE_PORT, the first of the ports used (default 18480).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=$repo/target/hostile
run=$out/run
port=${HOSTILE_PORT:-18480}
backend_ip=127.0.0.9
microgate_port=$((port + 1)) nginx_port=$((port + 2)) haproxy_port=$((port + 3)) admin_port=$((port + 4))
# The path corpus: its two backends, and microgate's and nginx's listeners routing between them.
paths_admin_ip=127.0.0.10 paths_other_ip=127.0.0.11
microgate_paths_port=$((port + 5)) nginx_paths_port=$((port + 6))
namespace=microgate-hostile
kubeconfig=$repo/target/cluster/kubeconfig
kubectl=$repo/target/cluster/bin/kubectl

say() { echo "hostile: $*" >&2; }
die() { say "$*"; exit 1; }

declare -A pids=()
cluster_started=0
stop_process() {
  local pid=${pids[$1]:-}
  [ -n "$pid" ] || return 0
  unset "pids[$1]"
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local status=$? name
  for name in "${!pids[@]}"; do stop_process "$name"; done
  if [ "$cluster_started" = 1 ]; then bash "$repo/tests/cluster/cluster.sh" down || true; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
spawn() {
  local name=$1; shift
  "$@" >"$run/$name.log" 2>&1 </dev/null &
  pids[$name]=$!
}
render() { # template output KEY=VALUE...
  local template=$1 output=$2 pair script=()
  shift 2
  for pair in "$@"; do script+=(-e "s#@${pair%%=*}@#${pair#*=}#g"); done
  sed "${script[@]}" "$template" >"$output"
}
port_free() { ! (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

bash "$repo/bench/tools.sh" nginx haproxy
export PATH=$PATH:/usr/sbin

say "building microgate and the report tool"
(cd "$repo" && cargo build --quiet --bin microgate &&
  cargo build --quiet -p microgate-test-support --bin hostile-report --bin hostile-paths)

if bash "$repo/tests/cluster/cluster.sh" status >/dev/null 2>&1; then
  bash "$repo/tests/cluster/cluster.sh" up
else
  cluster_started=1
  bash "$repo/tests/cluster/cluster.sh" up
fi

rm -rf "$run"
mkdir -p "$run/tmp"
for ip in $backend_ip $paths_admin_ip $paths_other_ip; do
  port_free "$ip" "$port" || die "$ip:$port is in use (set HOSTILE_PORT to move the ports)"
done
for p in $microgate_port $nginx_port $haproxy_port $admin_port $microgate_paths_port $nginx_paths_port; do
  port_free 127.0.0.1 "$p" || die "127.0.0.1:$p is in use (set HOSTILE_PORT to move the ports)"
done

k() { "$kubectl" --kubeconfig "$kubeconfig" "$@"; }
k apply --server-side --force-conflicts -f "$repo/crds/microgate.dev.yaml" >/dev/null
k wait --for=condition=Established --timeout=60s crd/microservices.microgate.dev crd/gateways.microgate.dev >/dev/null
k create namespace "$namespace" --dry-run=client -o yaml | k apply -f - >/dev/null
render "$here/microgate.yaml" "$run/microgate.yaml" PORT="$port" LISTENER="$microgate_port" \
  PATHS_LISTENER="$microgate_paths_port"
k apply -n "$namespace" -f "$run/microgate.yaml" >/dev/null
k delete pods -n "$namespace" --all --grace-period=0 --force --wait=true >/dev/null 2>&1 || true
k apply -n "$namespace" -f - >/dev/null <<JSON
{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "recorder-1", "labels": {"microgate.dev/microservice": "recorder"}},
 "spec": {"containers": [{"name": "app", "image": "microgate.test/recorder:1",
   "ports": [{"name": "http", "containerPort": $port}]}]}}
JSON
k patch pod recorder-1 -n "$namespace" --subresource=status --type=merge -p \
  "{\"status\": {\"phase\": \"Running\", \"podIP\": \"$backend_ip\", \"podIPs\": [{\"ip\": \"$backend_ip\"}],
    \"conditions\": [{\"type\": \"Ready\", \"status\": \"True\"}, {\"type\": \"ContainersReady\", \"status\": \"True\"}]}}" >/dev/null

# The path corpus's Pods: their backends are served by hostile-paths itself.
for pair in admin:$paths_admin_ip other:$paths_other_ip; do
  name=${pair%%:*} ip=${pair#*:}
  k apply -n "$namespace" -f - >/dev/null <<JSON
{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "$name-1", "labels": {"microgate.dev/microservice": "$name"}},
 "spec": {"containers": [{"name": "app", "image": "microgate.test/echo:1",
   "ports": [{"name": "http", "containerPort": $port}]}]}}
JSON
  k patch pod "$name-1" -n "$namespace" --subresource=status --type=merge -p \
    "{\"status\": {\"phase\": \"Running\", \"podIP\": \"$ip\", \"podIPs\": [{\"ip\": \"$ip\"}],
      \"conditions\": [{\"type\": \"Ready\", \"status\": \"True\"}, {\"type\": \"ContainersReady\", \"status\": \"True\"}]}}" >/dev/null
done

render "$here/nginx.conf" "$run/nginx.conf" RUN="$run" PORT="$nginx_port" BACKEND="$backend_ip:$port" \
  PATHS_PORT="$nginx_paths_port" ADMIN="$paths_admin_ip:$port" OTHER="$paths_other_ip:$port"
render "$here/haproxy.cfg" "$run/haproxy.cfg" PORT="$haproxy_port" BACKEND="$backend_ip:$port"
spawn nginx nginx -p "$run" -e "$run/nginx.error.log" -c "$run/nginx.conf"
spawn haproxy haproxy -db -f "$run/haproxy.cfg"
spawn microgate env KUBECONFIG="$kubeconfig" RUST_LOG=warn "$repo/target/debug/microgate" gateway \
  --workers 1 --namespace "$namespace" --listen-address 127.0.0.1 --admin-addr "127.0.0.1:$admin_port"

say "running the corpus through microgate, nginx and HAProxy"
"$repo/target/debug/hostile-report" --backend "$backend_ip:$port" \
  --proxy "microgate=127.0.0.1:$microgate_port" --proxy "nginx=127.0.0.1:$nginx_port" \
  --proxy "haproxy=127.0.0.1:$haproxy_port" \
  --about "microgate $(cd "$repo" && git describe --always --dirty 2>/dev/null || echo unknown) (debug build), \`microgate gateway\`" \
  --about "nginx $(nginx -v 2>&1 | sed 's#.*nginx/##') (Debian), tests/hostile/nginx.conf" \
  --about "HAProxy $(haproxy -v | sed -n '1s/^HAProxy version \([^ ]*\).*/\1/p') (Debian), tests/hostile/haproxy.cfg" \
  --out "$out/report.md"

say "running the path corpus through microgate and nginx (an exact /admin route and a catch-all)"
"$repo/target/debug/hostile-paths" --admin "$paths_admin_ip:$port" --other "$paths_other_ip:$port" \
  --proxy "microgate=127.0.0.1:$microgate_paths_port" --proxy "nginx=127.0.0.1:$nginx_paths_port" \
  --out "$out/paths.md"
{ echo; cat "$out/paths.md"; } >>"$out/report.md"
