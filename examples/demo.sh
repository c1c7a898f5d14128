#!/usr/bin/env bash
# `make demo`: microgate end to end on the local control plane.
#
# Builds microgate, starts the control plane, installs the CRDs, examples/shop.yaml, (with a
# self-signed certificate) examples/shop-https.yaml and examples/access-policy.yaml, runs
# `microgate run` (controller + gateway) and a fake kubelet whose Pods are real HTTP servers on
# 127.0.100.x, sends live traffic through the gateway (then again with one Pod failing, which
# retries hide) and at the partners' Gateway (a 401, a 403 and a 429), prints what happened, and keeps running until Ctrl-C or `make demo-down`.
#
# usage: demo.sh [up|down]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
demo=target/demo
kubeconfig=target/cluster/kubeconfig
kubectl() { target/cluster/bin/kubectl --kubeconfig "$kubeconfig" "$@"; }
namespace=shop
host=shop.example.com
gateway=127.0.0.1:8080
admin=127.0.0.1:9090

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

stop_processes() {
  local name pid
  for name in microgate fake-kubelet; do
    pid=$(cat "$demo/$name.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null || true; fi
    rm -f "$demo/$name.pid"
  done
}

# Deletes the demo's namespace. Its Pods are bound to the fake node, so nobody but us would
# ever confirm their deletion: delete them with grace period 0.
remove_namespace() {
  [ -f "$kubeconfig" ] || return 0
  kubectl delete namespace "$namespace" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  kubectl delete pods --all -n "$namespace" --grace-period=0 --force >/dev/null 2>&1 || true
  kubectl wait --for=delete "namespace/$namespace" --timeout=90s >/dev/null 2>&1 || true
}

if [ "${1:-up}" = down ]; then
  stop_processes
  remove_namespace
  echo "demo stopped (the control plane keeps running: make cluster-down stops it)"
  exit 0
fi

say "building microgate and the fake kubelet"
cargo build -q --workspace --bins --examples

say "starting the local control plane"
bash tests/cluster/cluster.sh up

stop_processes
mkdir -p "$demo"
# A fresh start: what an earlier demo left is removed first.
remove_namespace

say "installing the CRDs and the shop example (namespace $namespace)"
kubectl apply -f crds/ >/dev/null
kubectl wait --for condition=established --timeout=60s crd/microservices.microgate.dev crd/gateways.microgate.dev crd/accesspolicies.microgate.dev >/dev/null
kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -n "$namespace" -f examples/shop.yaml
# HTTPS: a self-signed certificate for the shop's host in a kubernetes.io/tls Secret, and the
# Gateway that serves it (examples/shop-https.yaml).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj "/CN=$host" -addext "subjectAltName=DNS:$host" \
  -keyout "$demo/shop.key" -out "$demo/shop.crt" 2>/dev/null
kubectl create secret tls shop-tls -n "$namespace" --cert="$demo/shop.crt" --key="$demo/shop.key" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -n "$namespace" -f examples/shop-https.yaml
# Partners on :8082: API keys, a rule, a rate limit (examples/access-policy.yaml).
kubectl apply -n "$namespace" -f examples/access-policy.yaml

say "running microgate (controller + gateway) and a fake kubelet"
KUBECONFIG="$repo/$kubeconfig" setsid target/debug/microgate run --namespace "$namespace" \
  --admin-addr "$admin" --listen-address 127.0.0.1 --access-log \
  >"$demo/microgate.log" 2>&1 < /dev/null &
echo $! > "$demo/microgate.pid"
MICROGATE_POD_CIDR=127.0.100.0/24 setsid target/debug/fake-kubelet --namespace "$namespace" \
  >"$demo/fake-kubelet.log" 2>&1 < /dev/null &
echo $! > "$demo/fake-kubelet.pid"
trap stop_processes EXIT
trap 'echo; echo "demo stopped"; exit 0' INT TERM

for _ in $(seq 1 300); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $host" "http://$gateway/api/orders" || true)
  [ "$code" = 200 ] && break
  if ! kill -0 "$(cat "$demo/microgate.pid")" 2>/dev/null; then
    echo "microgate exited; its log:"; tail -n 20 "$demo/microgate.log"; exit 1
  fi
  sleep 0.2
done
[ "$code" = 200 ] || { echo "the gateway did not serve /api/orders within 60 s (last answer: $code); see $demo/microgate.log"; exit 1; }

kubectl wait --for=condition=Ready msvc --all -n "$namespace" --timeout=60s >/dev/null

say "kubectl get microgate -n $namespace"
kubectl get msvc -n "$namespace" -o wide
echo
kubectl get mgw -n "$namespace"

# Sends N requests to a path and prints how many each pod answered, by status.
traffic() {
  local count=$1 path=$2
  for _ in $(seq 1 "$count"); do
    curl -s -o /dev/null -w '%{http_code} %header{x-pod-name}\n' -H "Host: $host" "http://$gateway$path"
  done | sort | uniq -c | sort -k3 | awk '{printf "  %5d × %s %s\n", $1, $2, ($3 == "" ? "(the gateway itself)" : $3)}'
}

say "live traffic: 300 × GET /api/orders (route orders: 90 % orders, 10 % orders-canary), 100 × GET / (storefront)"
traffic 300 /api/orders
traffic 100 /

say "HTTPS on :8443 (certificate from the Secret shop-tls; HTTP/2 by ALPN), and :8081 redirecting to it"
https_url="https://$host:8443/api/orders"
curl -s --cacert "$demo/shop.crt" --resolve "$host:8443:127.0.0.1" -o /dev/null \
  -w "  GET $https_url: %{http_code} over HTTP/%{http_version}, from %header{x-pod-name}\n" "$https_url"
curl -s -o /dev/null -w "  GET http://$host:8081/api/orders: %{http_code} → %header{location}\n" \
  -H "Host: $host:8081" "http://127.0.0.1:8081/api/orders"

failing=$(kubectl get pods -n "$namespace" -l microgate.dev/microservice=orders -o jsonpath='{.items[0].metadata.name}')
say "one orders Pod starts failing: kubectl annotate pod $failing fake.microgate.dev/status=503"
kubectl annotate pod -n "$namespace" "$failing" fake.microgate.dev/status=503 --overwrite >/dev/null
sleep 1
retries_before=$(curl -s "http://$admin/metrics" | awk '/^microgate_gateway_retries_total/ {s += $2} END {print s + 0}')
echo "500 × GET /api/orders (503s are retried on another endpoint; after 5 in a row the Pod is ejected):"
traffic 500 /api/orders
retries_after=$(curl -s "http://$admin/metrics" | awk '/^microgate_gateway_retries_total/ {s += $2} END {print s + 0}')
echo "  retries sent by the gateway: $(( retries_after - retries_before ))"
kubectl annotate pod -n "$namespace" "$failing" fake.microgate.dev/status- >/dev/null

say "the registry API: what the gateway balances over (http://$admin/registry, trimmed)"
curl -s "http://$admin/registry" | grep -E '"(name|pod|ready|inRotation|ejected|ejectedUntil)"' | sed 's/^/  /'
say "a client that balances by itself from the registry, straight to the Pods (examples/registry-client)"
target/debug/examples/registry-client --admin "$admin" --service "$namespace/orders" --requests 12 --path /api/orders

partners=127.0.0.1:8082
say "who may call: the partners Gateway on :8082 (AccessPolicy partners: API keys, no deletes, 5 a minute per key)"
kubectl get apol -n "$namespace"
answer() { curl -s -o /dev/null -w "%{http_code} %header{x-microgate-reason}%header{x-seen-x-microgate-client}" "$@"; }
echo "  GET without a key:              $(answer "http://$partners/api/orders")"
echo "  GET with a wrong key:           $(answer -H 'x-api-key: guess' "http://$partners/api/orders")"
echo "  DELETE with acme's key:         $(answer -X DELETE -H 'x-api-key: demo-key-acme' "http://$partners/api/orders/7")"
for i in 1 2 3 4 5 6; do
  echo "  GET #$i with acme's key:         $(curl -s -o /dev/null -w '%{http_code}  RateLimit: %header{ratelimit}  Retry-After: %header{retry-after}' \
    -H 'x-api-key: demo-key-acme' "http://$partners/api/orders")"
done
echo "  GET with globex's key:          $(answer -H 'x-api-key: demo-key-globex' "http://$partners/api/orders")"

say "the gateway's metrics (http://$admin/metrics)"
curl -s "http://$admin/metrics" | grep -E '^microgate_gateway_(requests|retries|retry_budget|ejections|access_decisions)' | grep -v ' 0$' | sed 's/^/  /'

say "try it yourself"
cat <<EOF
  curl -H 'Host: $host' http://$gateway/api/orders -i
  curl -H 'Host: $host' http://$gateway/
  curl --cacert $demo/shop.crt --resolve $host:8443:127.0.0.1 https://$host:8443/api/orders -i
  curl -H 'x-api-key: demo-key-globex' http://$partners/api/orders -i
  kubectl --kubeconfig $kubeconfig get msvc,mgw -n $namespace
  kubectl --kubeconfig $kubeconfig scale msvc orders -n $namespace --replicas=5
  kubectl --kubeconfig $kubeconfig annotate pod -n $namespace <pod> fake.microgate.dev/status=503
  curl http://$admin/metrics
  curl http://$admin/registry; curl -N http://$admin/registry/events
Logs: $demo/microgate.log, $demo/fake-kubelet.log. Ctrl-C (or make demo-down) stops the demo.
EOF
while kill -0 "$(cat "$demo/microgate.pid" 2>/dev/null || echo 0)" 2>/dev/null; do sleep 1; done
