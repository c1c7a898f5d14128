#!/usr/bin/env bash
# The local control plane: etcd, kube-apiserver and kube-controller-manager on loopback.
#
#   cluster.sh up       start it (build first if needed), or reuse a healthy one
#   cluster.sh down     stop it; no process is left behind
#   cluster.sh status   print each component and whether it is healthy (exit 1 if not all are)
#
# Everything lives in $MICROGATE_CLUSTER_DIR (default <repo>/target/cluster): kubeconfig, certs/,
# logs/ (audit.log: the requests of the impersonator certificate, see make_certs), etcd data, pid
# files and state.env (ports). There is no kubelet and no scheduler: the test
# harness binds Pods to a fake Node and sets their status itself.
#
# MICROGATE_ADVERTISE_ADDRESS (default 127.0.0.1) is the address the API server advertises; inside
# a private network namespace it is 10.200.0.1 (see netns.sh).
# MICROGATE_EXTRA_CONTROLLERS (e.g. endpointslice-controller) adds controllers of the controller
# manager; the Gateway API conformance run needs EndpointSlices, which only the private network
# namespace's addresses can carry (the API server refuses loopback ones).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${MICROGATE_CLUSTER_DIR:-$repo/target/cluster}
bin=$repo/target/cluster/bin
advertise=${MICROGATE_ADVERTISE_ADDRESS:-127.0.0.1}
components=(etcd kube-apiserver kube-controller-manager)
impersonator=microgate-impersonator
controllers=deployment-controller,replicaset-controller,garbage-collector-controller,namespace-controller
controllers+=${MICROGATE_EXTRA_CONTROLLERS:+,$MICROGATE_EXTRA_CONTROLLERS}

say() { echo "cluster: $*" >&2; }

pid_of() { cat "$dir/$1.pid" 2>/dev/null || true; }
# A pid is ours while it runs (not a zombie nobody reaped) with this cluster's folder in its
# command line: after a reboot or a crash the number may belong to anything.
running() {
  local pid=$1
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  [ "$(sed 's/^.*) \(.\).*/\1/' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir/"
}
alive() { running "$(pid_of "$1")"; }

# Fails naming the process, the reason and the end of its log, so a broken start never hangs.
fail_start() {
  local name=$1 why=$2
  say "$name failed to start: $why"
  if [ -f "$dir/logs/$name.log" ]; then
    say "last lines of $dir/logs/$name.log:"
    tail -n 25 "$dir/logs/$name.log" | sed 's/^/    /' >&2
  fi
  stop_all
  exit 1
}

# Ports come from below the kernel's ephemeral range (32768 and up on Linux), where an outgoing
# connection's local port could otherwise take one between the check and the bind; and each is
# different from those already handed out in this run (PICKED_PORTS). Sets the variable named $1.
PICKED_PORTS=" "
free_port() {
  local port
  for _ in $(seq 1 50); do
    port=$(( 20000 + RANDOM % 12000 ))
    case "$PICKED_PORTS" in *" $port "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      PICKED_PORTS+="$port "
      printf -v "$1" '%s' "$port"
      return 0
    fi
  done
  say "no free loopback port found"; return 1
}

# Polls a health URL until it answers ok, the process dies, or the deadline passes.
wait_healthy() {
  local name=$1 url=$2 seconds=$3; shift 3
  local deadline=$(( $(date +%s) + seconds ))
  while true; do
    if curl -fsS --max-time 2 "$@" "$url" >/dev/null 2>&1; then return 0; fi
    alive "$name" || fail_start "$name" "the process exited (see its log)"
    [ "$(date +%s)" -lt "$deadline" ] || fail_start "$name" "no healthy answer from $url within ${seconds}s"
    sleep 0.2
  done
}

start() {
  local name=$1; shift
  # setsid: the components outlive the shell that started them (tests, make) and ignore its
  # terminal's signals; `down` stops them by pid.
  setsid "$bin/$name" "$@" >"$dir/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$dir/$name.pid"
}

stop_all() {
  local name pid
  for name in kube-controller-manager kube-apiserver etcd; do
    pid=$(pid_of "$name")
    if running "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for name in kube-controller-manager kube-apiserver etcd; do
    pid=$(pid_of "$name")
    rm -f "$dir/$name.pid"
    running "$pid" || continue
    for _ in $(seq 1 50); do running "$pid" || break; sleep 0.1; done
    running "$pid" && kill -KILL "$pid" 2>/dev/null || true
  done
  # Strays from an earlier run whose pid files were lost still name this folder on their
  # command line: a half-started etcd must not hold the data directory.
  pkill -KILL -f -- "--data-dir=$dir/etcd-data" 2>/dev/null || true
  pkill -KILL -f -- "--cert-dir=$dir/certs" 2>/dev/null || true
  pkill -KILL -f -- "--kubeconfig=$dir/certs/admin.kubeconfig" 2>/dev/null || true
  rm -rf "$dir/etcd-data" "$dir/state.env" "$dir/kubeconfig"
}

healthy() {
  [ -f "$dir/state.env" ] || return 1
  # shellcheck source=/dev/null
  . "$dir/state.env"
  # A cluster started by an older version of this script, without the audit log, is replaced.
  [ -n "${AUDIT_LOG:-}" ] && [ -f "$dir/certs/impersonator.crt" ] || return 1
  local name
  for name in "${components[@]}"; do alive "$name" || return 1; done
  curl -fsS --max-time 2 --cacert "$dir/certs/ca.crt" --cert "$dir/certs/admin.crt" \
    --key "$dir/certs/admin.key" "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1
}

make_certs() {
  local c=$dir/certs
  rm -rf "$c"; mkdir -p "$c"
  (
    cd "$c"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj /CN=microgate-test-ca
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver
    printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' \
      "$advertise" > server.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 3650 -extfile server.ext
    # O=system:masters: the admin is bound to cluster-admin by the API server's bootstrap policy.
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=microgate-admin"
    printf 'extendedKeyUsage=clientAuth\n' > client.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 3650 -extfile client.ext
    # A second admin whose requests, and only those, go to the audit log: tests use it to
    # impersonate a service account and read back exactly which API calls it made.
    openssl req -newkey rsa:2048 -nodes -keyout impersonator.key -out impersonator.csr -subj "/O=system:masters/CN=$impersonator"
    openssl x509 -req -in impersonator.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out impersonator.crt -days 3650 -extfile client.ext
    openssl genrsa -out sa.key 2048
    openssl rsa -in sa.key -pubout -out sa.pub
  ) >"$dir/logs/certs.log" 2>&1 || fail_start certs "openssl failed"
}

write_kubeconfig() {
  local out=$1 api_port=$2 b64
  b64() { base64 -w0 < "$1"; }
  cat > "$out.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: microgate-local
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $(b64 "$dir/certs/ca.crt")
users:
- name: microgate-admin
  user:
    client-certificate-data: $(b64 "$dir/certs/admin.crt")
    client-key-data: $(b64 "$dir/certs/admin.key")
contexts:
- name: microgate-local
  context: {cluster: microgate-local, user: microgate-admin}
current-context: microgate-local
EOF
  mv "$out.tmp" "$out"
}

up() {
  mkdir -p "$dir/logs"
  if healthy; then
    say "reusing the running control plane (API server on 127.0.0.1:$API_PORT)"
    return 0
  fi
  # Whatever is left of an earlier cluster (stale pid files, a half-started etcd) goes first.
  stop_all
  "$here/build.sh" "$bin"
  for tool in openssl curl setsid base64; do
    command -v "$tool" >/dev/null || { say "'$tool' is missing (install it: apt-get install openssl curl util-linux coreutils)"; exit 1; }
  done

  local begin etcd_port etcd_peer_port api_port kcm_port
  begin=$(date +%s%3N)
  free_port etcd_port && free_port etcd_peer_port && free_port api_port && free_port kcm_port || exit 1
  make_certs

  start etcd --name=microgate-local --data-dir="$dir/etcd-data" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster="microgate-local=http://127.0.0.1:$etcd_peer_port" \
    --unsafe-no-fsync --log-level=warn --quota-backend-bytes=4294967296
  wait_healthy etcd "http://127.0.0.1:$etcd_port/health" 30

  local c=$dir/certs
  # Metadata-level audit of the impersonating admin's requests only (tests/install reads it to
  # prove the RBAC rules are exactly what microgate uses); nothing else is logged.
  cat > "$dir/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: ["$impersonator"]
- level: None
EOF
  local audit_log=$dir/logs/audit.log
  rm -f "$audit_log"
  # --endpoint-reconciler-type=none: a loopback advertise address is not a valid endpoint, and the
  # default reconciler would keep trying to write one. ServiceAccount admission is off so Pods need
  # no token and no service-account controller. OwnerReferencesPermissionEnforcement is on, as on
  # OpenShift: an owner reference that blocks its owner's deletion needs the right to update the
  # owner's finalizers, which the least-privilege test then proves the install grants. The fake
  # Node's Hostname resolves nowhere, so `pods/log` goes to the kubelet at its InternalIP.
  start kube-apiserver --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=127.0.0.1 --secure-port="$api_port" --advertise-address="$advertise" \
    --endpoint-reconciler-type=none --cert-dir="$c" \
    --tls-cert-file="$c/apiserver.crt" --tls-private-key-file="$c/apiserver.key" --client-ca-file="$c/ca.crt" \
    --service-account-issuer="https://127.0.0.1:$api_port/" --service-account-key-file="$c/sa.pub" \
    --service-account-signing-key-file="$c/sa.key" --service-cluster-ip-range=10.0.0.0/24 \
    --authorization-mode=RBAC --disable-admission-plugins=ServiceAccount \
    --enable-admission-plugins=OwnerReferencesPermissionEnforcement --allow-privileged=true \
    --max-requests-inflight=1000 --max-mutating-requests-inflight=500 --v=1 \
    --kubelet-preferred-address-types=InternalIP \
    --audit-policy-file="$dir/audit-policy.yaml" --audit-log-path="$audit_log" --audit-log-format=json
  wait_healthy kube-apiserver "https://127.0.0.1:$api_port/readyz" 90 \
    --cacert "$c/ca.crt" --cert "$c/admin.crt" --key "$c/admin.key"

  write_kubeconfig "$c/admin.kubeconfig" "$api_port"

  # CRDs go in before the controller manager: its garbage collector rescans API types only every
  # 30 s, so owner references to our kinds would otherwise be collected late.
  if compgen -G "$repo/crds/*.yaml" >/dev/null; then
    "$bin/kubectl" --kubeconfig "$c/admin.kubeconfig" apply -f "$repo/crds/" >"$dir/logs/crds.log" 2>&1 ||
      fail_start crds "kubectl apply -f crds/ failed: $(tail -n 3 "$dir/logs/crds.log")"
  fi

  start kube-controller-manager --kubeconfig="$c/admin.kubeconfig" \
    --authentication-kubeconfig="$c/admin.kubeconfig" --authorization-kubeconfig="$c/admin.kubeconfig" \
    --controllers="$controllers" --use-service-account-credentials=false --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port="$kcm_port" --cert-dir="$c/kcm" --authentication-skip-lookup \
    --concurrent-deployment-syncs=10 --concurrent-replicaset-syncs=10 \
    --kube-api-qps=200 --kube-api-burst=400 --v=1
  wait_healthy kube-controller-manager "https://127.0.0.1:$kcm_port/healthz" 60 --insecure

  printf 'API_PORT=%s\nETCD_PORT=%s\nKCM_PORT=%s\nADVERTISE=%s\nAUDIT_LOG=%s\n' "$api_port" "$etcd_port" "$kcm_port" \
    "$advertise" "$audit_log" > "$dir/state.env"
  # The kubeconfig appears last: its presence tells tests and tools the cluster is ready.
  cp "$c/admin.kubeconfig" "$dir/kubeconfig"
  say "control plane ready in $(( $(date +%s%3N) - begin )) ms: API server https://127.0.0.1:$api_port"
  say "kubeconfig: $dir/kubeconfig"
}

status() {
  local name ok=0
  for name in "${components[@]}"; do
    if alive "$name"; then echo "$name: running (pid $(pid_of "$name"))"; else echo "$name: not running"; ok=1; fi
  done
  if healthy; then echo "api server: ready at https://127.0.0.1:$API_PORT"; echo "kubeconfig: $dir/kubeconfig"
  else echo "api server: not ready"; ok=1; fi
  return $ok
}

case "${1:-}" in
  up) up ;;
  down) stop_all; say "stopped" ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
