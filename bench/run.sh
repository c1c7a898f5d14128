#!/usr/bin/env bash
# `make bench`: microgate against nginx and HAProxy, side by side, on loopback.
#
# Three identical backends (one nginx worker each) listen on three 127.0.0.x addresses on one
# port, plus a fourth that answers 503 to 20 % of requests. In front of them, configured
# equivalently (round robin, pooled keep-alive upstream connections, no access log, the same
# number of workers): nginx, HAProxy and `microgate gateway`, which finds the backends as Pods
# on the local control plane (the bench creates the Pods and reports them Ready itself; no
# controller, no kubelet). Load generators: wrk (throughput), oha (fixed rate, latency with
# coordinated-omission correction), h2load (h2c, and h2 over TLS), and callgrind for instructions
# per request. The TLS scenarios put the three proxies behind the same two certificates, made for
# the run (ECDSA P-256 and RSA 2048; microgate reads them from Secrets): new connections per
# second, each a full TLS 1.3 handshake and one request (bench/tls-client: wrk and h2load resume
# sessions, so they cannot measure this), keep-alive requests over TLS (wrk), h2 over TLS
# (h2load), and the memory each idle TLS connection costs (10 000 held open by bench/tls-client).
# The scale scenario holds 100 000 idle keep-alive connections (plain, then TLS) against each
# proxy, spread over 64 loopback source addresses, and 10 000 idle h2c ones: memory per
# connection, and throughput and p99 of a steady load (wrk) beside them against the same load
# without them.
# The policy scenario measures what an AccessPolicy costs: a microgate route with a JWT provider
# (ES256, its key set from a Secret) and a local rate limit that is never reached, against the same
# route without them, every request carrying the same valid token (signed for the run with
# `openssl`, valid for a day); nginx and HAProxy, whose free builds have no JWT check, serve the same
# requests without one.
# The tracing scenario measures what tracing costs: two more microgate gateways, the same in all
# but tracing (W3C headers to the backends, spans exported over OTLP/HTTP), sampling 1 % and 100 %
# of requests, against the one without tracing; their collector is a sink that accepts every
# export (bench/peers/otlp-sink.conf).
#
# Raw results: target/bench/raw/*.jsonl; the report: target/bench/results.{json,md}, the chart
# bench/chart.png and the gateway section of BENCHMARKS.md (bench/report.py writes them).
#
# Knobs (environment):
#   BENCH_ROUNDS       rounds per measurement, order reversed every other round (default 5)
#   BENCH_SECONDS      seconds per round (default 5)
#   BENCH_WORKERS      worker counts to run (default "1 2")
#   BENCH_RATE         fixed rate of the latency runs, req/s (default 5000)
#   BENCH_CONNECTIONS  client connections (default 64)
#   BENCH_CALLGRIND_N  requests per callgrind interval (default 20000; 0 skips callgrind)
#   BENCH_PORT         first of the loopback ports used (default 18080: below the range the
#                      local control plane picks its ports from, and the ephemeral range)
#   BENCH_TLS_IDLE     idle TLS connections held open for the memory measurement (default 10000)
#   BENCH_SCALE_IDLE   idle connections of the scale scenario, plain and TLS (default 100000; fewer
#                      if the open-files hard limit cannot hold them, which the report says)
#   BENCH_SCALE_H2     idle h2c connections of the scale scenario (default 10000)
#   BENCH_SCALE_ROUNDS rounds of the scale scenario's steady load, without and then beside the
#                      idle connections (default 3 each; the medians are compared)
#   BENCH_SCENARIOS    which measurements to run (default all): any of throughput, latency, h2c,
#                      retries, callgrind, tls (all of tls-new, tls-keepalive, tls-h2, tls-idle),
#                      scale (all of scale-plain, scale-tls, scale-h2), policy, tracing
#   BENCH_MICROGATE    a microgate binary to measure instead of this checkout's release build (e.g.
#                      an earlier commit's, for a before/after comparison)
#   BENCH_PERF=1       also record where microgate's CPU goes during the new-TLS-connection rounds
#                      (perf record, cpu-clock samples; target/bench/perf/*.txt)
#   BENCH_QUICK=1      a quick smoke run: 2 rounds of 2 s, 1 worker, 2000 callgrind requests,
#                      2000 idle TLS connections, 4000 (and 2000 h2c) in the scale scenario
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
out=$repo/target/bench
run=$out/run
raw=$out/raw

if [ "${BENCH_QUICK:-0}" = 1 ]; then
  : "${BENCH_ROUNDS:=2}" "${BENCH_SECONDS:=2}" "${BENCH_WORKERS:=1}" "${BENCH_CALLGRIND_N:=2000}" "${BENCH_TLS_IDLE:=2000}"
  : "${BENCH_SCALE_IDLE:=4000}" "${BENCH_SCALE_H2:=2000}"
fi
rounds=${BENCH_ROUNDS:-5}
seconds=${BENCH_SECONDS:-5}
workers_list=${BENCH_WORKERS:-1 2}
rate=${BENCH_RATE:-5000}
connections=${BENCH_CONNECTIONS:-64}
callgrind_n=${BENCH_CALLGRIND_N:-20000}
port=${BENCH_PORT:-18080}
tls_idle_connections=${BENCH_TLS_IDLE:-10000}
scale_idle_wanted=${BENCH_SCALE_IDLE:-100000}
scale_h2_wanted=${BENCH_SCALE_H2:-10000}
scale_rounds=${BENCH_SCALE_ROUNDS:-3}
# Loopback source addresses the scale scenario's connections come from (127.1.0.1 and up).
scale_sources=64
scenarios=${BENCH_SCENARIOS:-throughput latency h2c retries callgrind tls scale policy tracing}
# Whether a measurement is selected: by its own name, or by its group's (tls-new by tls).
scenario_on() {
  local s
  for s in $scenarios; do
    [ "$s" = "$1" ] || [ "$s" = "${1%%-*}" ] && return 0
  done
  return 1
}
# The extra scenarios (h2c, retries) run fewer rounds: they are reported as medians, not ratios.
extra_rounds=$(( rounds < 3 ? rounds : 3 ))

# Pod-like addresses of the backends: the gateway gets exactly these from the Pods' status.
b1=127.0.0.2 b2=127.0.0.3 b3=127.0.0.4 bf=127.0.0.5
# Proxy ports: HTTP/1.1, h2c, and the listener in front of the failing set (with retries).
nginx_h1=$((port + 1)) nginx_h2=$((port + 3)) nginx_retry=$((port + 101))
haproxy_h1=$((port + 2)) haproxy_h2=$((port + 4)) haproxy_retry=$((port + 102))
# microgate serves HTTP/1.1 and h2c on one listener.
mg_h1=$((port + 5)) mg_retry=$((port + 105)) mg_admin=$((port + 6))
# The policy scenario: microgate's listener whose route has the AccessPolicy, HAProxy's frontend
# with its JWT check.
mg_policy=$((port + 7)) haproxy_policy=$((port + 8))
# The tracing scenario: the traced gateways' admin ports and listen addresses (their listeners take
# the same ports as microgate's), and the OTLP sink.
mg_trace1_admin=$((port + 9)) mg_trace100_admin=$((port + 10)) otlp_sink=$((port + 14))
mg_trace1_address=127.0.0.8 mg_trace100_address=127.0.0.9
# A second, identical nginx: the A/A row (the noise floor).
nginx_b_h1=$((port + 11)) nginx_b_h2=$((port + 13)) nginx_b_retry=$((port + 111))
# HTTPS listeners, one per certificate.
nginx_tls_ecdsa=$((port + 21)) nginx_tls_rsa=$((port + 22))
haproxy_tls_ecdsa=$((port + 23)) haproxy_tls_rsa=$((port + 24))
mg_tls_ecdsa=$((port + 25)) mg_tls_rsa=$((port + 26))
nginx_b_tls_ecdsa=$((port + 31)) nginx_b_tls_rsa=$((port + 32))

namespace="microgate-bench"
kubeconfig=$repo/target/cluster/kubeconfig
kubectl=$repo/target/cluster/bin/kubectl
microgate=${BENCH_MICROGATE:-$repo/target/release/microgate}
tls_client=$repo/target/release/tls-client

started=$(date +%s)
say() { echo "bench [$(( $(date +%s) - started ))s]: $*" >&2; }
die() { say "$*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Processes: every one the bench starts is recorded here and stopped by pid on exit.
declare -A pids=()
cluster_started=0

stop_process() {
  local name=$1 pid=${pids[$1]:-}
  [ -n "$pid" ] || return 0
  unset "pids[$name]"
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
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
  "$@" >"$run/logs/$name.log" 2>&1 </dev/null &
  pids[$name]=$!
}

# The proxy's processes: the one the bench started and its children (nginx's workers).
process_tree() {
  local pid=${pids[$1]}
  echo "$pid"
  pgrep -P "$pid" || true
}

clock_ticks=$(getconf CLK_TCK)
# CPU seconds used so far by the given processes, "user system".
cpu_times() {
  local pid
  for pid in "$@"; do
    # Fields after "pid (comm) ": utime and stime are the 12th and 13th.
    sed 's/^.*) //' "/proc/$pid/stat"
  done | awk -v hz="$clock_ticks" '{u += $12; s += $13} END {printf "%.3f %.3f", u / hz, s / hz}'
}
# CPU seconds (user + system) used so far by the given processes.
cpu_seconds() { cpu_times "$@" | awk '{printf "%.3f", $1 + $2}'; }

# CPU seconds the whole machine has spent busy so far (every process, user, system, interrupts).
machine_busy_seconds() {
  awk -v hz="$clock_ticks" '/^cpu / {printf "%.3f", ($2 + $3 + $4 + $7 + $8) / hz}' /proc/stat
}

# TCP segments sent so far by the whole machine (loopback included).
tcp_out_segments() { awk '/^Tcp:/ && $2 ~ /^[0-9]/ {print $12}' /proc/net/snmp; }
# TCP connections accepted so far by the whole machine (PassiveOpens): while upstream connections
# stay pooled, the ones a proxy's clients opened.
tcp_passive_opens() { awk '/^Tcp:/ && $2 ~ /^[0-9]/ {print $7}' /proc/net/snmp; }

# "VmRSS VmHWM" in KiB, summed over the given processes.
memory_kib() {
  local pid
  for pid in "$@"; do cat "/proc/$pid/status"; done |
    awk '/^VmRSS:/ {rss += $2} /^VmHWM:/ {hwm += $2} END {printf "%d %d", rss, hwm}'
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
cpu_pressure() { sed -n 's/^some avg10=\([0-9.]*\).*/\1/p' /proc/pressure/cpu 2>/dev/null || echo null; }

wait_http() {
  local url=$1 seconds=$2 name=${3:-}
  local deadline=$(( $(date +%s) + seconds ))
  until curl -fsSk --max-time 2 -o /dev/null "$url" 2>/dev/null; do
    if [ -n "$name" ] && ! kill -0 "${pids[$name]}" 2>/dev/null; then
      tail -n 20 "$run/logs/$name.log" >&2 || true
      die "$name exited before $url answered"
    fi
    [ "$(date +%s)" -lt "$deadline" ] || die "no answer from $url within ${seconds}s"
    sleep 0.2
  done
}

# Until URL answers the expected status (the policy listeners: 401 without the token, 200 with).
wait_http_status() { # expected-status url seconds [curl args...]
  local want=$1 target_url=$2 deadline=$(( $(date +%s) + $3 )) got
  shift 3
  until got=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$target_url" 2>/dev/null) && [ "$got" = "$want" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || die "$target_url answered ${got:-nothing}, not $want"
    sleep 0.2
  done
}

port_free() { ! (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
# Preparation: tools, build, control plane, configuration.

oha=$(bash "$here/tools.sh")
export PATH=$PATH:/usr/sbin

say "building microgate and the TLS client (release)"
(cd "$repo" && { [ -n "${BENCH_MICROGATE:-}" ] || cargo build --release --bin microgate --quiet; } &&
  cargo build --release -p microgate-bench-tls --quiet)
# How long microgate keeps an idle keep-alive connection: as long as the peers (300 s), where the
# binary has the setting (an earlier one measured with BENCH_MICROGATE may not).
microgate_idle_flags=()
if "$microgate" gateway --help 2>/dev/null | grep -q -- --client-header-timeout; then
  microgate_idle_flags=(--client-header-timeout 300s)
fi

# The idle-connection measurements hold many sockets in the client and in each proxy, which all
# inherit this limit: raised as far as the machine lets (root may raise the hard limit, unless the
# process lacks CAP_SYS_RESOURCE, as in some containers).
open_files_wanted=$(( 2 * tls_idle_connections + 4096 ))
scale_on() { scenario_on scale-plain || scenario_on scale-tls || scenario_on scale-h2; }
scale_on && open_files_wanted=$(( scale_idle_wanted + 8192 > open_files_wanted ? scale_idle_wanted + 8192 : open_files_wanted ))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$open_files_wanted" ]; then
  if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$open_files_wanted" ]; then
    ulimit -Hn "$open_files_wanted" 2>/dev/null || true
  fi
  ulimit -n "$open_files_wanted" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
open_files=$(ulimit -n)
if [ "$open_files" != unlimited ] && [ "$open_files" -lt $(( tls_idle_connections + 1024 )) ]; then
  tls_idle_connections=$(( open_files - 1024 ))
  say "warning: open files are limited to $open_files: holding $tls_idle_connections idle TLS connections"
fi
# Each proxy holds the scale scenario's connections in one process (and the client in another):
# what the limit leaves, after room for the listeners and the upstream side.
scale_idle=$scale_idle_wanted scale_h2=$scale_h2_wanted
if [ "$open_files" != unlimited ] && [ "$open_files" -lt $(( scale_idle + 1024 )) ]; then
  scale_idle=$(( open_files - 1024 ))
  say "warning: open files are limited to $open_files (hard limit $(ulimit -Hn)): the scale scenario holds $scale_idle idle connections, not $scale_idle_wanted"
fi
[ "$scale_h2" -le "$scale_idle" ] || scale_h2=$scale_idle
# The most connections each proxy is configured to hold: room for every idle measurement.
max_idle=$(( tls_idle_connections > scale_idle ? tls_idle_connections : scale_idle ))

if bash "$repo/tests/cluster/cluster.sh" status >/dev/null 2>&1; then
  bash "$repo/tests/cluster/cluster.sh" up
else
  cluster_started=1
  bash "$repo/tests/cluster/cluster.sh" up
fi

rm -rf "$run" "$raw"
mkdir -p "$run/logs" "$run/tmp" "$run/tls" "$raw"

# The run's certificates, one per key type, for all three proxies (HAProxy wants certificate and
# key in one file). The clients do not verify them.
make_certificate() { # name openssl-newkey-args...
  local name=$1
  shift
  openssl req -x509 -nodes -days 7 "$@" -keyout "$run/tls/$name.key" -out "$run/tls/$name.crt" \
    -subj /CN=bench.microgate.test -addext "subjectAltName=DNS:bench.microgate.test,IP:127.0.0.1" 2>/dev/null
  cat "$run/tls/$name.crt" "$run/tls/$name.key" >"$run/tls/$name.pem"
}
make_certificate ecdsa -newkey ec -pkeyopt ec_paramgen_curve:P-256
make_certificate rsa -newkey rsa:2048

# The policy scenario's identity provider: an ES256 key made for the run, its public half as a JWKS
# (for the Secret microgate reads it from), as PEM (for HAProxy's jwt_verify) and one token signed with it, valid for a day so that
# it outlives the run. openssl signs; python3 puts the pieces in JWS form (base64url, and the
# signature as r || s instead of DER).
jwt_issuer=https://idp.bench.microgate.test
make_jwt() {
  local dir=$run/jwt
  mkdir -p "$dir"
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/key.pem" 2>/dev/null
  openssl ec -in "$dir/key.pem" -pubout -outform DER -out "$dir/public.der" 2>/dev/null
  openssl ec -in "$dir/key.pem" -pubout -out "$dir/public.pem" 2>/dev/null
  python3 - "$dir" "$jwt_issuer" <<'EOF_PY'
import base64, json, subprocess, sys, time
folder, issuer = sys.argv[1:]
b64 = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()
# A P-256 SubjectPublicKeyInfo ends with the uncompressed point: 0x04 || x || y.
point = open(f"{folder}/public.der", "rb").read()[-65:]
assert point[0] == 4, "not an uncompressed P-256 point"
jwks = {"keys": [{"kty": "EC", "crv": "P-256", "kid": "bench-1", "alg": "ES256", "use": "sig",
                  "x": b64(point[1:33]), "y": b64(point[33:])}]}
now = int(time.time())
header = b64(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "bench-1"}).encode())
payload = b64(json.dumps({"iss": issuer, "sub": "bench-user", "aud": "bench", "iat": now,
                          "exp": now + 86400}).encode())
signing_input = f"{header}.{payload}".encode()
der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", f"{folder}/key.pem"], input=signing_input,
                     capture_output=True, check=True).stdout
# ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }; at most 72 bytes, so short-form lengths.
assert der[0] == 0x30 and der[1] < 0x80, "unexpected signature encoding"
i, parts = 2, []
for _ in range(2):
    assert der[i] == 2, "unexpected signature encoding"
    n = der[i + 1]
    parts.append(der[i + 2:i + 2 + n].lstrip(b"\0").rjust(32, b"\0"))
    i += 2 + n
open(f"{folder}/jwks.json", "w").write(json.dumps(jwks))
open(f"{folder}/token", "w").write(f"{header}.{payload}.{b64(parts[0] + parts[1])}")
EOF_PY
}
make_jwt
jwt_token=$(cat "$run/jwt/token")
auth="Authorization: Bearer $jwt_token"

for address in $b1 $b2 $b3 $bf; do
  port_free "$address" "$port" || die "$address:$port is in use (set BENCH_PORT to move the bench's ports)"
done
for p in $nginx_h1 $nginx_h2 $nginx_retry $haproxy_h1 $haproxy_h2 $haproxy_retry $mg_h1 $mg_retry $mg_admin $mg_policy $haproxy_policy \
  $nginx_b_h1 $nginx_b_h2 $nginx_b_retry $nginx_tls_ecdsa $nginx_tls_rsa $haproxy_tls_ecdsa $haproxy_tls_rsa \
  $mg_tls_ecdsa $mg_tls_rsa $nginx_b_tls_ecdsa $nginx_b_tls_rsa $mg_trace1_admin $mg_trace100_admin $otlp_sink; do
  port_free 127.0.0.1 "$p" || die "127.0.0.1:$p is in use (set BENCH_PORT to move the bench's ports)"
done

# render TEMPLATE OUTPUT KEY=VALUE...: replaces each @KEY@.
render() {
  local template=$1 output=$2 pair script=()
  shift 2
  for pair in "$@"; do script+=(-e "s#@${pair%%=*}@#${pair#*=}#g"); done
  sed "${script[@]}" "$template" >"$output"
}

# Machine, versions and settings, for the report.
machine_info() {
  local lock=$repo/Cargo.lock
  crate_version() { awk -v n="name = \"$1\"" '$0 == n {getline; gsub(/"/, "", $3); print $3; exit}' "$lock"; }
  python3 - >"$raw/machine.json" <<'EOF' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(nproc)" \
    "$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)" "$(uname -r)" \
    "$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)" \
    "$(sed -n "s/^PRETTY_NAME=//p" /etc/os-release | tr -d '"')" \
    "$(cd "$repo" && git describe --always --dirty 2>/dev/null || echo unknown)" \
    "$(nginx -v 2>&1 | sed 's#.*nginx/##')" \
    "$(haproxy -v | sed -n '1s/^HAProxy version \([^ ]*\).*/\1/p')" \
    "$(wrk -v 2>&1 | sed -n '1s/^wrk \([^ ]*\).*/\1/p')" \
    "$("$oha" --version | awk '{print $2}')" \
    "$(h2load --version | awk '{print $NF}')" \
    "$(valgrind --version | sed 's/valgrind-//')" \
    "$(rustc --version | awk '{print $2}')" \
    "$(crate_version tokio)" "$(crate_version hyper)" "$(crate_version hyper-util)" \
    "$(crate_version rustls)" "$(openssl version | awk '{print $2}')" \
    "$rounds" "$seconds" "$workers_list" "$rate" "$connections" "$callgrind_n" "$extra_rounds" "$(loadavg)" \
    "$tls_idle_connections" "$scenarios" "$scale_idle" "$scale_idle_wanted" "$scale_h2" "$open_files" "$(ulimit -Hn)" "$scale_rounds"
import json, sys
a = sys.argv[1:]
keys = ["microgate", "nginx", "haproxy", "wrk", "oha", "h2load", "valgrind", "rustc", "tokio", "hyper", "hyper-util",
        "rustls", "openssl"]
print(json.dumps({
    "date": a[0], "nproc": int(a[1]), "cpu": a[2], "kernel": a[3], "memory": a[4], "os": a[5],
    "versions": dict(zip(keys, a[6:19])),
    "settings": {"rounds": int(a[19]), "seconds": int(a[20]), "workers": a[21], "rate": int(a[22]),
                 "connections": int(a[23]), "callgrind_requests": int(a[24]), "extra_rounds": int(a[25]),
                 "tls_idle_connections": int(a[27]), "scenarios": a[28].split(),
                 "scale_idle": int(a[29]), "scale_idle_wanted": int(a[30]), "scale_h2": int(a[31]),
                 "open_files": a[32], "open_files_hard": a[33], "scale_rounds": int(a[34])},
    "loadavg_before": a[26],
}, indent=1))
EOF
}
machine_info

# Busy share of all CPUs over one second, in percent: the bench warns when the machine is not
# quiet, since every figure below is then noisier.
busy_percent() {
  local a b
  a=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN {split(a, x, " "); split(b, y, " "); printf "%.0f", 100 * (y[1] - x[1]) / (y[2] - x[2])}'
}

# --- microgate's resources on the local control plane
k() { "$kubectl" --kubeconfig "$kubeconfig" "$@"; }
k apply --server-side --force-conflicts -f "$repo/crds/microgate.dev.yaml" >/dev/null
k wait --for=condition=Established --timeout=60s crd/microservices.microgate.dev crd/gateways.microgate.dev \
  crd/accesspolicies.microgate.dev >/dev/null
k create namespace "$namespace" --dry-run=client -o yaml | k apply -f - >/dev/null
for name in ecdsa rsa; do
  k create secret tls "bench-$name" -n "$namespace" --cert="$run/tls/$name.crt" --key="$run/tls/$name.key" \
    --dry-run=client -o yaml | k apply -f - >/dev/null
done
k create secret generic bench-jwks -n "$namespace" --from-file=jwks.json="$run/jwt/jwks.json" \
  --dry-run=client -o yaml | k apply -f - >/dev/null
render "$here/microgate.yaml" "$run/microgate.yaml" PORT="$port" PORT_H1="$mg_h1" PORT_RETRY="$mg_retry" \
  PORT_TLS_ECDSA="$mg_tls_ecdsa" PORT_TLS_RSA="$mg_tls_rsa" MAX_CONNECTIONS="$(( max_idle + 2000 ))" \
  PORT_POLICY="$mg_policy" ISSUER="$jwt_issuer"
k apply -n "$namespace" -f "$run/microgate.yaml" >/dev/null
# Pods as a kubelet would report them: Running, Ready, with the backend's address as pod IP.
k delete pods -n "$namespace" --all --grace-period=0 --force --wait=true >/dev/null 2>&1 || true
pod() { # name microservice ip
  k apply -n "$namespace" -f - >/dev/null <<EOF
{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "$1", "labels": {"microgate.dev/microservice": "$2"}},
 "spec": {"containers": [{"name": "app", "image": "bench.invalid/echo:1",
   "ports": [{"name": "http", "containerPort": $port}]}]}}
EOF
  k patch pod "$1" -n "$namespace" --subresource=status --type=merge -p \
    "{\"status\": {\"phase\": \"Running\", \"podIP\": \"$3\", \"podIPs\": [{\"ip\": \"$3\"}],
      \"conditions\": [{\"type\": \"Ready\", \"status\": \"True\"}, {\"type\": \"ContainersReady\", \"status\": \"True\"}]}}" >/dev/null
}
pod echo-1 echo $b1
pod echo-2 echo $b2
pod echo-3 echo $b3
pod failing-1 failing $b1
pod failing-2 failing $b2
pod failing-3 failing $bf

# --- backends
start_backend() { # name address failing?
  render "$here/peers/backend.conf" "$run/$1.conf" NAME="$1" ADDR="$2" PORT="$port" RUN="$run"
  [ "$3" = yes ] || sed -i '/# failing-only/d' "$run/$1.conf"
  spawn "$1" nginx -p "$run" -e "$run/$1.error.log" -c "$run/$1.conf"
}
start_backend backend-1 $b1 no
start_backend backend-2 $b2 no
start_backend backend-3 $b3 no
start_backend backend-failing $bf yes
for address in $b1 $b2 $b3 $bf; do wait_http "http://$address:$port/" 10; done

# Total requests a backend has answered so far (its stub_status counts this request too).
backend_requests() { curl -fsS "http://$1:$port/__bench/status" | awk 'NR == 3 {print $3}'; }

# --- proxies
start_nginx() { # name workers h1 h2 retry tls-ecdsa tls-rsa [valgrind...]
  local name=$1 workers=$2 h1=$3 h2=$4 retry=$5 tls_ecdsa=$6 tls_rsa=$7
  shift 7
  render "$here/peers/nginx.conf" "$run/$name.conf" NAME="$name" RUN="$run" WORKERS="$workers" \
    B1="$b1:$port" B2="$b2:$port" B3="$b3:$port" BF="$bf:$port" PORT_H1="$h1" PORT_H2="$h2" PORT_RETRY="$retry" \
    PORT_TLS_ECDSA="$tls_ecdsa" PORT_TLS_RSA="$tls_rsa" TLS="$run/tls" WORKER_CONNECTIONS="$(( max_idle + 4096 ))"
  if [ "$#" -gt 0 ]; then
    # Under valgrind: one process, no master, so every request runs in the measured process.
    spawn "$name" "$@" nginx -p "$run" -e "$run/$name.error.log" -c "$run/$name.conf" -g 'master_process off;'
  else
    spawn "$name" nginx -p "$run" -e "$run/$name.error.log" -c "$run/$name.conf"
  fi
}
start_haproxy() { # workers [valgrind...]
  local workers=$1
  shift
  render "$here/peers/haproxy.cfg" "$run/haproxy.cfg" WORKERS="$workers" \
    B1="$b1:$port" B2="$b2:$port" B3="$b3:$port" BF="$bf:$port" \
    PORT_H1="$haproxy_h1" PORT_H2="$haproxy_h2" PORT_RETRY="$haproxy_retry" \
    PORT_TLS_ECDSA="$haproxy_tls_ecdsa" PORT_TLS_RSA="$haproxy_tls_rsa" TLS="$run/tls" \
    MAXCONN="$(( max_idle + 2000 ))" PORT_POLICY="$haproxy_policy" JWT_KEY="$run/jwt/public.pem" ISSUER="$jwt_issuer"
  spawn haproxy "$@" haproxy -db -f "$run/haproxy.cfg"
}
start_microgate() { # workers [valgrind...]
  local workers=$1
  shift
  # --workers sets the threads that serve traffic (the equal of nginx's workers); the Kubernetes
  # watches run on one more runtime thread of their own (the equal of nginx's master process).
  spawn microgate env TOKIO_WORKER_THREADS=1 KUBECONFIG="$kubeconfig" RUST_LOG=warn \
    "$@" "$microgate" gateway --workers "$workers" --namespace "$namespace" --listen-address 127.0.0.1 \
    --admin-addr "127.0.0.1:$mg_admin" "${microgate_idle_flags[@]}"
}

# A microgate gateway like start_microgate's, tracing a share of its requests to the OTLP sink.
start_microgate_traced() { # name listen-address admin-port sampling-ratio
  spawn "$1" env TOKIO_WORKER_THREADS=1 KUBECONFIG="$kubeconfig" RUST_LOG=warn \
    "$microgate" gateway --workers 1 --namespace "$namespace" --listen-address "$2" \
    --admin-addr "127.0.0.1:$3" "${microgate_idle_flags[@]}" \
    --tracing-otlp-endpoint "http://127.0.0.1:$otlp_sink" --tracing-sampling-ratio "$4"
}

# Requests through each proxy land on each backend in turn: checked and recorded.
spread() { # name url
  local _
  for _ in $(seq 1 30); do curl -fsS -D - -o /dev/null "$2" | tr -d '\r' | sed -n 's/^x-backend: //ip'; done |
    sort | uniq -c | awk -v n="$1" 'BEGIN {printf "{\"target\": \"%s\", \"backends\": {", n} {printf "%s\"%s\": %d", (NR > 1 ? ", " : ""), $2, $1} END {print "}}"}'
}

declare -A url=()
url[direct]=http://$b1:$port/
url[nginx]=http://127.0.0.1:$nginx_h1/
url[nginx-b]=http://127.0.0.1:$nginx_b_h1/
url[haproxy]=http://127.0.0.1:$haproxy_h1/
url[microgate]=http://127.0.0.1:$mg_h1/
url[microgate-policy]=http://127.0.0.1:$mg_policy/
url[haproxy-policy]=http://127.0.0.1:$haproxy_policy/
url[microgate-trace1]=http://$mg_trace1_address:$mg_h1/
url[microgate-trace100]=http://$mg_trace100_address:$mg_h1/
declare -A h2url=(
  [nginx]=http://127.0.0.1:$nginx_h2/
  [haproxy]=http://127.0.0.1:$haproxy_h2/
  [microgate]=http://127.0.0.1:$mg_h1/
)
declare -A retryurl=(
  [direct]=http://$bf:$port/
  [nginx]=http://127.0.0.1:$nginx_retry/
  [haproxy]=http://127.0.0.1:$haproxy_retry/
  [microgate]=http://127.0.0.1:$mg_retry/
)
# HTTPS listeners, by target and certificate.
declare -A tlsport=(
  [nginx-ecdsa]=$nginx_tls_ecdsa [nginx-rsa]=$nginx_tls_rsa
  [haproxy-ecdsa]=$haproxy_tls_ecdsa [haproxy-rsa]=$haproxy_tls_rsa
  [microgate-ecdsa]=$mg_tls_ecdsa [microgate-rsa]=$mg_tls_rsa
)
# Plain HTTP/1.1 and h2c (prior knowledge) ports, by target: microgate serves both on one.
declare -A h1port=([nginx]=$nginx_h1 [haproxy]=$haproxy_h1 [microgate]=$mg_h1)
declare -A h2port=([nginx]=$nginx_h2 [haproxy]=$haproxy_h2 [microgate]=$mg_h1)
# The process whose CPU and memory count for a target ("direct": the backend itself).
declare -A owner=([direct]=backend-1 [nginx]=nginx [nginx-b]=nginx-b [haproxy]=haproxy [microgate]=microgate
  [microgate-policy]=microgate [haproxy-policy]=haproxy [microgate-trace1]=microgate-trace1
  [microgate-trace100]=microgate-trace100)
# Extra wrk arguments for every throughput round (the policy scenario's Authorization header).
wrk_flags=()

# Targets in round r's order: as given on even rounds, reversed on odd ones (ABBA).
in_order() { # round targets...
  local r=$1
  shift
  if (( r % 2 == 0 )); then printf '%s\n' "$@"; else printf '%s\n' "$@" | tac; fi
}

# A microgate counter from its /metrics, summed over its labels.
metric() {
  curl -fsS "http://127.0.0.1:$mg_admin/metrics" | awk -v m="$1" '$1 ~ "^" m "({|$)" {s += $2} END {printf "%d", s}'
}

# ---------------------------------------------------------------------------------------------
# Measurements. Each writes one JSON line per target and round into $raw.

throughput_round() { # file workers round target [url]
  local file=$1 workers=$2 round=$3 target=$4 target_url=${5:-${url[$4]}} procs cpu0 cpu1 busy0 busy1 segs0 segs1 log mem
  mapfile -t procs < <(process_tree "${owner[$target]}")
  log=$run/logs/wrk-$target.txt
  cpu0=$(cpu_times "${procs[@]}") busy0=$(machine_busy_seconds) segs0=$(tcp_out_segments)
  wrk -t2 -c"$connections" -d"${seconds}s" --latency ${wrk_flags[@]+"${wrk_flags[@]}"} "$target_url" >"$log" 2>&1
  cpu1=$(cpu_times "${procs[@]}") busy1=$(machine_busy_seconds) segs1=$(tcp_out_segments)
  mem=$(memory_kib "${procs[@]}")
  awk -v target="$target" -v workers="$workers" -v round="$round" -v cpu0="$cpu0" -v cpu1="$cpu1" \
    -v busy="$(awk -v a="$busy0" -v b="$busy1" 'BEGIN {printf "%.3f", b - a}')" -v segments="$(( segs1 - segs0 ))" \
    -v mem="$mem" -v load="$(loadavg)" -v psi="$(cpu_pressure)" '
    /requests in/ {requests = $1}
    /^Requests\/sec:/ {rps = $2}
    /Non-2xx or 3xx responses:/ {bad = $NF}
    /Socket errors:/ {gsub(/,/, ""); errors = $4 + $6 + $8 + $10}
    $1 == "99%" {p99 = $2}
    END {
      split(mem, m, " "); split(cpu0, c0, " "); split(cpu1, c1, " ")
      printf "{\"target\": \"%s\", \"workers\": %d, \"round\": %d, \"rps\": %s, \"requests\": %d, \"non_2xx\": %d, \"socket_errors\": %d, \"cpu_seconds\": %.3f, \"user_seconds\": %.3f, \"system_seconds\": %.3f, \"machine_busy_seconds\": %.3f, \"tcp_segments\": %d, \"rss_kib\": %d, \"hwm_kib\": %d, \"p99\": \"%s\", \"loadavg\": \"%s\", \"cpu_pressure\": %s}\n",
        target, workers, round, rps + 0, requests, bad, errors, (c1[1] + c1[2]) - (c0[1] + c0[2]), c1[1] - c0[1], c1[2] - c0[2], busy, segments, m[1], m[2], p99, load, psi
    }' "$log" >>"$file"
}

latency_round() { # file round target
  local file=$1 round=$2 target=$3 procs cpu0 cpu1 json=$run/logs/oha-$3.json
  mapfile -t procs < <(process_tree "${owner[$target]}")
  cpu0=$(cpu_seconds "${procs[@]}")
  "$oha" --no-tui -z "${seconds}s" -c "$connections" -q "$rate" --latency-correction \
    --output-format json "${url[$target]}" >"$json" 2>"$run/logs/oha-$target.err"
  cpu1=$(cpu_seconds "${procs[@]}")
  python3 - "$json" "$target" "$round" "$cpu0" "$cpu1" "$(loadavg)" "$(cpu_pressure)" >>"$file" <<'EOF'
import json, sys
path, target, rnd, cpu0, cpu1, load, psi = sys.argv[1:]
d = json.load(open(path))
pct = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
print(json.dumps({
    "target": target, "round": int(rnd),
    "p50": pct["p50"], "p99": pct["p99"], "p99.9": pct["p99.9"],
    "rps": d["summary"]["requestsPerSec"], "success_rate": d["summary"]["successRate"],
    "non_200": sum(v for k, v in codes.items() if k != "200"),
    # Requests still in flight when the run's time is up are not failures.
    "errors": sum(v for k, v in d.get("errorDistribution", {}).items() if k != "aborted due to deadline"),
    "cpu_seconds": float(cpu1) - float(cpu0), "loadavg": load,
    "cpu_pressure": None if psi == "null" else float(psi),
}))
EOF
}

h2_round() { # file round target [url]
  local file=$1 round=$2 target=$3 target_url=${4:-${h2url[$3]}} procs cpu0 cpu1 mem log=$run/logs/h2load-$3.txt
  mapfile -t procs < <(process_tree "${owner[$target]}")
  cpu0=$(cpu_seconds "${procs[@]}")
  h2load -t2 -c"$connections" -m10 -D "$seconds" --warm-up-time=1 "$target_url" >"$log" 2>&1
  cpu1=$(cpu_seconds "${procs[@]}")
  mem=$(memory_kib "${procs[@]}")
  awk -v target="$target" -v round="$round" -v cpu0="$cpu0" -v cpu1="$cpu1" -v mem="$mem" -v load="$(loadavg)" '
    /^finished in/ {rps = $4}
    /^requests:/ {gsub(/,/, ""); total = $2; ok = $8; failed = $10; errored = $12}
    /^status codes:/ {gsub(/,/, ""); s2 = $3}
    /^Application protocol:/ {protocol = $3}
    END {
      split(mem, m, " ")
      printf "{\"target\": \"%s\", \"round\": %d, \"rps\": %s, \"requests\": %d, \"succeeded\": %d, \"status_2xx\": %d, \"failed\": %d, \"errored\": %d, \"cpu_seconds\": %.3f, \"rss_kib\": %d, \"hwm_kib\": %d, \"protocol\": \"%s\", \"loadavg\": \"%s\"}\n",
        target, round, rps + 0, total, ok, s2, failed, errored, cpu1 - cpu0, m[1], m[2], protocol, load
    }' "$log" >>"$file"
}

retry_round() { # file round target
  local file=$1 round=$2 target=$3 log=$run/logs/wrk-retry-$3.txt before=() after=() a
  local retries0=0 retries1=0 exhausted0=0 exhausted1=0 ejections0=0 ejections1=0
  for a in $b1 $b2 $bf; do before+=("$(backend_requests "$a")"); done
  if [ "$target" = microgate ]; then
    retries0=$(metric microgate_gateway_retries_total)
    exhausted0=$(metric microgate_gateway_retry_budget_exhausted_total)
    ejections0=$(metric microgate_gateway_ejections_total)
  fi
  wrk -t2 -c"$connections" -d"${seconds}s" "${retryurl[$target]}" >"$log" 2>&1
  for a in $b1 $b2 $bf; do after+=("$(backend_requests "$a")"); done
  if [ "$target" = microgate ]; then
    retries1=$(metric microgate_gateway_retries_total)
    exhausted1=$(metric microgate_gateway_retry_budget_exhausted_total)
    ejections1=$(metric microgate_gateway_ejections_total)
  fi
  # Each stub_status read counts itself: one per backend is not traffic.
  awk -v target="$target" -v round="$round" -v load="$(loadavg)" \
    -v up="$(( after[0] - before[0] - 1 )) $(( after[1] - before[1] - 1 )) $(( after[2] - before[2] - 1 ))" \
    -v retries="$(( retries1 - retries0 ))" -v exhausted="$(( exhausted1 - exhausted0 ))" -v ejections="$(( ejections1 - ejections0 ))" '
    /requests in/ {requests = $1}
    /^Requests\/sec:/ {rps = $2}
    /Non-2xx or 3xx responses:/ {bad = $NF}
    /Socket errors:/ {gsub(/,/, ""); errors = $4 + $6 + $8 + $10}
    END {
      split(up, u, " ")
      printf "{\"target\": \"%s\", \"round\": %d, \"rps\": %s, \"requests\": %d, \"non_2xx\": %d, \"socket_errors\": %d, \"upstream\": [%d, %d, %d], \"gateway_retries\": %d, \"budget_exhausted\": %d, \"ejections\": %d, \"loadavg\": \"%s\"}\n",
        target, round, rps + 0, requests, bad, errors, u[1], u[2], u[3], retries, exhausted, ejections, load
    }' "$log" >>"$file"
}

# New TLS connections: bench/tls-client for the round's seconds, each connection a full handshake
# and one request. The machine's accepted connections over the round are recorded next to the
# client's count: equal when every request came on a connection of its own.
tls_connect_round() { # file round target certificate
  local file=$1 round=$2 target=$3 certificate=$4 procs cpu0 cpu1 busy0 busy1 opens0 opens1 mem
  local json=$run/logs/tls-connect-$3-$4.json perf_pid
  mapfile -t procs < <(process_tree "${owner[$target]}")
  if [ "${BENCH_PERF:-0}" = 1 ] && [ "$target" = microgate ]; then
    mkdir -p "$out/perf"
    perf record -q -e cpu-clock -F 999 -p "${pids[microgate]}" -o "$out/perf/microgate-$certificate-$round.data" \
      -- sleep "$seconds" >/dev/null 2>>"$run/logs/perf.log" &
    perf_pid=$!
  fi
  cpu0=$(cpu_times "${procs[@]}") busy0=$(machine_busy_seconds) opens0=$(tcp_passive_opens)
  "$tls_client" connect --address "127.0.0.1:${tlsport[$target-$certificate]}" --connections "$connections" \
    --seconds "$seconds" >"$json" 2>"$run/logs/tls-connect-$target.err"
  cpu1=$(cpu_times "${procs[@]}") busy1=$(machine_busy_seconds) opens1=$(tcp_passive_opens)
  mem=$(memory_kib "${procs[@]}")
  if [ "${BENCH_PERF:-0}" = 1 ] && [ "$target" = microgate ]; then
    wait "$perf_pid" || true
    perf report -q -i "$out/perf/microgate-$certificate-$round.data" --no-children --sort dso,symbol --stdio \
      2>/dev/null | head -n 60 >"$out/perf/microgate-$certificate-$round.txt" || true
  fi
  python3 - "$json" "$target" "$round" "$certificate" "$cpu0" "$cpu1" "$busy0" "$busy1" "$(( opens1 - opens0 ))" \
    "$mem" "$(loadavg)" "$(cpu_pressure)" >>"$file" <<'EOF_PY'
import json, sys
path, target, rnd, certificate, cpu0, cpu1, busy0, busy1, opens, mem, load, psi = sys.argv[1:]
d = json.load(open(path))
c0, c1, m = [float(x) for x in cpu0.split()], [float(x) for x in cpu1.split()], [int(x) for x in mem.split()]
d.update({
    "target": target, "round": int(rnd), "certificate": certificate,
    "user_seconds": c1[0] - c0[0], "system_seconds": c1[1] - c0[1], "cpu_seconds": sum(c1) - sum(c0),
    "machine_busy_seconds": float(busy1) - float(busy0), "accepted_connections": int(opens),
    "rss_kib": m[0], "hwm_kib": m[1], "loadavg": load, "cpu_pressure": None if psi == "null" else float(psi),
})
print(json.dumps(d))
EOF_PY
}

# Memory per idle TLS connection: the proxy's RSS before and after bench/tls-client has opened
# N connections on the ECDSA listener, made one request on each and left them idle. The client
# then says how many the proxy still held when its memory was read.
tls_idle_round() { # file target
  local file=$1 target=$2 procs before after fifo=$run/tls-hold-$2.in json=$run/logs/tls-hold-$2.jsonl pid deadline
  mapfile -t procs < <(process_tree "${owner[$target]}")
  before=$(memory_kib "${procs[@]}")
  rm -f "$fifo" "$json"
  mkfifo "$fifo"
  "$tls_client" hold --address "127.0.0.1:${tlsport[$target-ecdsa]}" --connections "$tls_idle_connections" \
    <"$fifo" >"$json" 2>"$run/logs/tls-hold-$target.err" &
  pid=$!
  pids[tls-hold]=$pid
  exec 7>"$fifo"
  deadline=$(( $(date +%s) + 600 ))
  until [ -s "$json" ]; do
    kill -0 "$pid" 2>/dev/null || { exec 7>&-; die "tls-client hold against $target exited: $(cat "$run/logs/tls-hold-$target.err")"; }
    [ "$(date +%s)" -lt "$deadline" ] || { exec 7>&-; die "tls-client hold against $target: no connections after 600 s"; }
    sleep 0.05
  done
  after=$(memory_kib "${procs[@]}")
  echo measured >&7
  exec 7>&-
  for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  stop_process tls-hold
  python3 - "$json" "$target" "$before" "$after" "$tls_idle_connections" "$(loadavg)" >>"$file" <<'EOF_PY'
import json, sys
path, target, before, after, wanted, load = sys.argv[1:]
lines = [json.loads(l) for l in open(path) if l.strip()]
opened, check = lines[0], (lines[1] if len(lines) > 1 else {})
b, a = [int(x) for x in before.split()], [int(x) for x in after.split()]
held = check.get("still_open")
print(json.dumps({
    "target": target, "wanted": int(wanted), "opened": opened["open"], "open_seconds": opened["seconds"],
    "failed": opened["failed"], "first_failure": opened["first_failure"], "still_open": held,
    "rss_before_kib": b[0], "rss_after_kib": a[0], "hwm_after_kib": a[1],
    "bytes_per_connection": (a[0] - b[0]) * 1024 / held if held else None, "loadavg": load,
}))
EOF_PY
}

# The scale scenario for one proxy and one kind of connection (plain, tls, h2): a steady load
# (wrk, as the throughput rows; $scale_rounds rounds) without idle connections; then N idle
# keep-alive connections opened by bench/tls-client hold from $scale_sources source addresses,
# one request each, the proxy's RSS before and after; the same rounds again beside them; and how
# many the proxy still held at the end.
scale_round() { # target kind connections
  local target=$1 kind=$2 n=$3 procs before after pid deadline load_url address round flags=()
  local fifo=$run/scale-hold.in json=$run/logs/scale-hold-$1-$2.jsonl loads=$run/logs/scale-load-$1-$2.jsonl
  mapfile -t procs < <(process_tree "${owner[$target]}")
  case $kind in
    plain) load_url=${url[$target]} address=127.0.0.1:${h1port[$target]} flags=(--plain) ;;
    tls) load_url=https://127.0.0.1:${tlsport[$target-ecdsa]}/ address=127.0.0.1:${tlsport[$target-ecdsa]} ;;
    h2) load_url=${url[$target]} address=127.0.0.1:${h2port[$target]} flags=(--plain --http2) ;;
  esac
  rm -f "$loads"
  for round in $(seq 0 $(( scale_rounds - 1 ))); do throughput_round "$loads" 1 "$round" "$target" "$load_url"; done
  before=$(memory_kib "${procs[@]}")
  rm -f "$fifo" "$json"
  mkfifo "$fifo"
  "$tls_client" hold --address "$address" --connections "$n" --sources "$scale_sources" "${flags[@]}" \
    <"$fifo" >"$json" 2>"$run/logs/scale-hold-$target-$kind.err" &
  pid=$!
  pids[scale-hold]=$pid
  exec 7>"$fifo"
  deadline=$(( $(date +%s) + 900 ))
  until [ -s "$json" ]; do
    kill -0 "$pid" 2>/dev/null || { exec 7>&-; die "tls-client hold ($kind) against $target exited: $(cat "$run/logs/scale-hold-$target-$kind.err")"; }
    [ "$(date +%s)" -lt "$deadline" ] || { exec 7>&-; die "tls-client hold ($kind) against $target: not open after 900 s"; }
    sleep 0.1
  done
  # Idle connections are measured idle: microgate parks an HTTP/1.1 connection (plain or TLS)
  # outside its task once it has waited 100 ms for its next request; every proxy gets the same
  # few seconds.
  sleep 3
  after=$(memory_kib "${procs[@]}")
  for round in $(seq "$scale_rounds" $(( 2 * scale_rounds - 1 ))); do
    throughput_round "$loads" 1 "$round" "$target" "$load_url"
  done
  echo measured >&7
  exec 7>&-
  for _ in $(seq 1 400); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  stop_process scale-hold
  python3 - "$json" "$loads" "$target" "$kind" "$before" "$after" "$n" "$scale_sources" "$(loadavg)" "$scale_rounds" >>"$raw/scale.jsonl" <<'EOF_PY'
import json, statistics, sys
path, loads, target, kind, before, after, wanted, sources, load, per_side = sys.argv[1:]
lines = [json.loads(l) for l in open(path) if l.strip()]
opened, check = lines[0], (lines[1] if len(lines) > 1 else {})
rounds = [json.loads(l) for l in open(loads) if l.strip()]

def side(chosen):
    # The round of median req/s stands for the side (its p99 and CPU too); every round's req/s
    # is kept for the spread.
    if not chosen:
        return None
    middle = sorted(chosen, key=lambda r: r["rps"])[(len(chosen) - 1) // 2]
    return dict(middle, rps=statistics.median(r["rps"] for r in chosen), rps_rounds=[r["rps"] for r in chosen])

without = side([r for r in rounds if r["round"] < int(per_side)])
beside = side([r for r in rounds if r["round"] >= int(per_side)])
b, a = [int(x) for x in before.split()], [int(x) for x in after.split()]
held = check.get("still_open")
print(json.dumps({
    "target": target, "kind": kind, "wanted": int(wanted), "sources": int(sources),
    "opened": opened["open"], "open_seconds": opened["seconds"], "failed": opened["failed"],
    "first_failure": opened["first_failure"], "still_open": held,
    "rss_before_kib": b[0], "rss_after_kib": a[0], "hwm_after_kib": a[1],
    "bytes_per_connection": (a[0] - b[0]) * 1024 / held if held else None,
    "load_without": without, "load_beside": beside, "loadavg": load,
}))
EOF_PY
}

warm_up() { wrk -t2 -c"$connections" -d1s "${@:2}" "$1" >/dev/null 2>&1; }

for workers in $workers_list; do
  # Only the throughput scenario runs at more than one worker.
  if [ "$workers" != 1 ] && ! scenario_on throughput; then continue; fi
  say "== $workers worker(s): starting nginx, haproxy, microgate"
  start_nginx nginx "$workers" $nginx_h1 $nginx_h2 $nginx_retry $nginx_tls_ecdsa $nginx_tls_rsa
  targets=(direct nginx haproxy microgate)
  if [ "$workers" = 1 ]; then
    start_nginx nginx-b "$workers" $nginx_b_h1 $nginx_b_h2 $nginx_b_retry $nginx_b_tls_ecdsa $nginx_b_tls_rsa
    targets=(direct nginx nginx-b haproxy microgate)
  fi
  start_haproxy "$workers"
  start_microgate "$workers"
  for target in "${targets[@]}"; do wait_http "${url[$target]}" 60 "${owner[$target]}"; done
  wait_http "${retryurl[microgate]}" 30 microgate
  # The HTTPS listeners: microgate's wait for the Secrets to reach it.
  for key in "${!tlsport[@]}"; do wait_http "https://127.0.0.1:${tlsport[$key]}/" 60 "${owner[${key%-*}]}"; done
  idle=$(memory_kib "${pids[microgate]}")
  # The traffic-serving threads, by name: proof that --workers took effect.
  runtime_workers=$(cat /proc/"${pids[microgate]}"/task/*/comm | grep -c '^microgate-worke' || true)
  echo "{\"workers\": $workers, \"microgate_idle_kib\": [${idle// /, }], \"runtime_workers\": $runtime_workers}" >>"$raw/idle.jsonl"
  for target in nginx haproxy microgate; do
    spread "$target" "${url[$target]}" | sed "s/^{/{\"workers\": $workers, /" >>"$raw/spread.jsonl"
  done
  # Sampled once everything the bench started is up and idle (the control plane's own start-up
  # and the build are over), so that only other work counts.
  if [ ! -f "$raw/preflight.json" ]; then
    busy=$(busy_percent)
    echo "{\"busy_percent_before\": $busy}" >"$raw/preflight.json"
    if [ "$busy" -gt 10 ]; then
      say "warning: the machine is ${busy}% busy with other work; the figures will be noisy"
    fi
  fi
  for target in "${targets[@]}"; do warm_up "${url[$target]}"; done

  if scenario_on throughput; then
    say "throughput: ${#targets[@]} targets × $rounds rounds × ${seconds}s (wrk -c$connections)"
    for round in $(seq 1 "$rounds"); do
      mapfile -t order < <(in_order "$round" "${targets[@]}")
      for target in "${order[@]}"; do throughput_round "$raw/throughput.jsonl" "$workers" "$round" "$target"; done
      say "  round $round/$rounds done (load $(loadavg))"
    done
  fi

  if [ "$workers" = 1 ] && scenario_on latency; then
    # nginx B again: the A/A pair shows how far p99 moves between two identical proxies.
    lat_targets=(direct nginx nginx-b haproxy microgate)
    say "latency: ${#lat_targets[@]} targets × $rounds rounds × ${seconds}s at $rate req/s (oha)"
    for round in $(seq 1 "$rounds"); do
      mapfile -t order < <(in_order "$round" "${lat_targets[@]}")
      for target in "${order[@]}"; do latency_round "$raw/latency.jsonl" "$round" "$target"; done
    done
  fi

  if [ "$workers" = 1 ] && scenario_on h2c; then
    say "h2c: 3 targets × $extra_rounds rounds × ${seconds}s (h2load -m10)"
    for round in $(seq 1 "$extra_rounds"); do
      mapfile -t order < <(in_order "$round" nginx haproxy microgate)
      for target in "${order[@]}"; do h2_round "$raw/h2.jsonl" "$round" "$target"; done
    done
  fi

  if [ "$workers" = 1 ] && scenario_on retries; then
    say "retries: 1 of 3 backends answers 503 to 20 % of requests; $extra_rounds rounds × ${seconds}s"
    for round in $(seq 1 "$extra_rounds"); do
      mapfile -t order < <(in_order "$round" direct nginx haproxy microgate)
      for target in "${order[@]}"; do retry_round "$raw/retry.jsonl" "$round" "$target"; done
    done
  fi

  if [ "$workers" = 1 ] && scenario_on policy; then
    # The policy listeners must answer 401 without the token and 200 with it, or the rounds would
    # measure refusals.
    for target in microgate-policy haproxy-policy; do
      wait_http_status 200 "${url[$target]}" 60 -H "$auth"
      wait_http_status 401 "${url[$target]}" 10
    done
    policy_targets=(nginx haproxy haproxy-policy microgate microgate-policy)
    wrk_flags=(-H "$auth")
    for target in "${policy_targets[@]}"; do warm_up "${url[$target]}" -H "$auth"; done
    say "policy: ${#policy_targets[@]} targets × $rounds rounds × ${seconds}s (wrk -c$connections, one ES256 token)"
    for round in $(seq 1 "$rounds"); do
      mapfile -t order < <(in_order "$round" "${policy_targets[@]}")
      for target in "${order[@]}"; do throughput_round "$raw/policy.jsonl" "$workers" "$round" "$target"; done
      say "  round $round/$rounds done (load $(loadavg))"
    done
    wrk_flags=()
  fi

  if [ "$workers" = 1 ] && scenario_on tracing; then
    render "$here/peers/otlp-sink.conf" "$run/otlp-sink.conf" NAME=otlp-sink ADDR="127.0.0.1:$otlp_sink" RUN="$run"
    spawn otlp-sink nginx -p "$run" -e "$run/otlp-sink.error.log" -c "$run/otlp-sink.conf"
    start_microgate_traced microgate-trace1 "$mg_trace1_address" "$mg_trace1_admin" 0.01
    start_microgate_traced microgate-trace100 "$mg_trace100_address" "$mg_trace100_admin" 1.0
    tracing_targets=(microgate microgate-trace1 microgate-trace100)
    for target in "${tracing_targets[@]}"; do wait_http "${url[$target]}" 60 "${owner[$target]}"; done
    for target in "${tracing_targets[@]}"; do warm_up "${url[$target]}"; done
    say "tracing: ${#tracing_targets[@]} targets × $rounds rounds × ${seconds}s (wrk -c$connections; sampling none, 1 %, 100 %)"
    for round in $(seq 1 "$rounds"); do
      mapfile -t order < <(in_order "$round" "${tracing_targets[@]}")
      for target in "${order[@]}"; do throughput_round "$raw/tracing.jsonl" "$workers" "$round" "$target"; done
      say "  round $round/$rounds done (load $(loadavg))"
    done
    # What the traced gateways exported and dropped over the whole scenario (warm-up included).
    sleep 2
    for pair in "microgate-trace1 $mg_trace1_admin 0.01" "microgate-trace100 $mg_trace100_admin 1.0"; do
      read -r target admin ratio <<<"$pair"
      curl -fsS "http://127.0.0.1:$admin/metrics" | awk -v t="$target" -v r="$ratio" '
        $1 == "microgate_gateway_spans_exported_total" {exported = $2}
        $1 ~ /^microgate_gateway_spans_dropped_total/ {dropped += $2}
        $1 ~ /^microgate_gateway_requests_total/ {requests += $2}
        END {printf "{\"target\": \"%s\", \"ratio\": %s, \"requests\": %d, \"spans_exported\": %d, \"spans_dropped\": %d}\n", t, r, requests, exported, dropped}' \
        >>"$raw/tracing_spans.jsonl"
    done
    stop_process microgate-trace1
    stop_process microgate-trace100
    stop_process otlp-sink
  fi

  if [ "$workers" = 1 ]; then
    tls_targets=(nginx haproxy microgate)
    if scenario_on tls-new; then
      for certificate in ecdsa rsa; do
        say "new TLS connections ($certificate): 3 targets × $rounds rounds × ${seconds}s (tls-client, $connections at a time)"
        for round in $(seq 1 "$rounds"); do
          mapfile -t order < <(in_order "$round" "${tls_targets[@]}")
          for target in "${order[@]}"; do tls_connect_round "$raw/tls_new.jsonl" "$round" "$target" "$certificate"; done
        done
      done
    fi
    if scenario_on tls-keepalive; then
      say "keep-alive over TLS: 3 targets × $rounds rounds × ${seconds}s (wrk -c$connections, https)"
      for target in "${tls_targets[@]}"; do warm_up "https://127.0.0.1:${tlsport[$target-ecdsa]}/"; done
      for round in $(seq 1 "$rounds"); do
        mapfile -t order < <(in_order "$round" "${tls_targets[@]}")
        for target in "${order[@]}"; do
          throughput_round "$raw/tls_keepalive.jsonl" "$workers" "$round" "$target" "https://127.0.0.1:${tlsport[$target-ecdsa]}/"
        done
      done
    fi
    if scenario_on tls-h2; then
      say "h2 over TLS: 3 targets × $extra_rounds rounds × ${seconds}s (h2load -m10, https, ALPN h2)"
      for round in $(seq 1 "$extra_rounds"); do
        mapfile -t order < <(in_order "$round" "${tls_targets[@]}")
        for target in "${order[@]}"; do
          h2_round "$raw/tls_h2.jsonl" "$round" "$target" "https://127.0.0.1:${tlsport[$target-ecdsa]}/"
        done
      done
    fi
    if scenario_on tls-idle; then
      say "idle TLS connections: $tls_idle_connections held open against each of 3 targets"
      for target in "${tls_targets[@]}"; do tls_idle_round "$raw/tls_idle.jsonl" "$target"; done
    fi
  fi

  if [ "$workers" = 1 ] && scale_on; then
    for kind in plain tls h2; do
      scenario_on "scale-$kind" || continue
      # Fresh proxies for each kind: memory freed by the previous kind's connections would
      # otherwise be reused by this one's and hide what they cost.
      for name in microgate haproxy nginx-b nginx; do stop_process "$name"; done
      start_nginx nginx 1 $nginx_h1 $nginx_h2 $nginx_retry $nginx_tls_ecdsa $nginx_tls_rsa
      start_haproxy 1
      start_microgate 1
      for target in nginx haproxy microgate; do wait_http "${url[$target]}" 60 "${owner[$target]}"; done
      for target in nginx haproxy microgate; do wait_http "https://127.0.0.1:${tlsport[$target-ecdsa]}/" 60 "${owner[$target]}"; done
      n=$scale_idle
      [ "$kind" != h2 ] || n=$scale_h2
      say "scale ($kind): $n idle connections from $scale_sources source addresses against each of 3 targets, wrk ${seconds}s without and beside them"
      for target in nginx haproxy microgate; do scale_round "$target" "$kind" "$n"; done
    done
  fi

  for name in microgate haproxy nginx-b nginx; do stop_process "$name"; done
done

# ---------------------------------------------------------------------------------------------
# Instructions per proxied request: each proxy alone under callgrind, 1 worker. After startup and
# a warm-up, two intervals of N keep-alive requests each are dumped separately; an interval's
# instruction count divided by N is the marginal cost of a request (startup cancels out). With the
# policy scenario, microgate once more on the AccessPolicy's listener, every request with the token.
if [ "$callgrind_n" -gt 0 ] && scenario_on callgrind; then
  mkdir -p "$out/callgrind"
  rm -f "$out/callgrind/"*
  callgrind_proxies=(nginx haproxy microgate)
  if scenario_on policy; then callgrind_proxies+=(microgate-policy); fi
  for proxy in "${callgrind_proxies[@]}"; do
    say "callgrind: $proxy, 2 × $callgrind_n requests"
    # The process under valgrind: microgate-policy is microgate, measured on another listener.
    process=${proxy%-policy}
    oha_flags=()
    [ "$proxy" = "$process" ] || oha_flags=(-H "$auth")
    valgrind=(valgrind --tool=callgrind --dump-instr=no "--callgrind-out-file=$out/callgrind/$proxy.out")
    case $process in
      nginx) start_nginx nginx 1 $nginx_h1 $nginx_h2 $nginx_retry $nginx_tls_ecdsa $nginx_tls_rsa "${valgrind[@]}" ;;
      haproxy) start_haproxy 1 "${valgrind[@]}" ;;
      microgate) start_microgate 1 "${valgrind[@]}" ;;
    esac
    wait_http "${url[$process]}" 180 "$process"
    [ "$proxy" = "$process" ] || wait_http_status 200 "${url[$proxy]}" 60 "${oha_flags[@]}"
    "$oha" --no-tui -n 2000 -c 16 ${oha_flags[@]+"${oha_flags[@]}"} "${url[$proxy]}" >/dev/null
    # The pid the bench started is valgrind's (env and valgrind exec, keeping it).
    vg=${pids[$process]}
    callgrind_control --dump=warmup "$vg" >>"$run/logs/callgrind_control.log" 2>&1
    for interval in 1 2; do
      "$oha" --no-tui -n "$callgrind_n" -c 16 ${oha_flags[@]+"${oha_flags[@]}"} --output-format json "${url[$proxy]}" \
        >"$run/logs/callgrind-$proxy-$interval.json"
      callgrind_control --dump="interval$interval" "$vg" >>"$run/logs/callgrind_control.log" 2>&1
    done
    stop_process "$process"
    python3 - "$out/callgrind" "$proxy" "$callgrind_n" "$run/logs" >>"$raw/callgrind.jsonl" <<'EOF'
import glob, json, subprocess, sys
folder, proxy, n, logs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
intervals = []
for k in (1, 2):
    for path in sorted(glob.glob(f"{folder}/{proxy}.out*")):
        lines = open(path).read().splitlines()
        # callgrind_control --dump=NAME: "desc: Trigger: dump NAME" (wording varies by version).
        if any(l.startswith("desc: Trigger:") and l.endswith(f"interval{k}") for l in lines):
            total = next(int(l.split()[1]) for l in lines if l.startswith(("summary:", "totals:")))
            intervals.append({"file": path, "instructions": total})
ok = [json.load(open(f"{logs}/callgrind-{proxy}-{i}.json"))["summary"]["successRate"] for i in (1, 2)]
# Where the instructions go, per function, for the second interval: inclusive and exclusive.
if intervals:
    for mode in ("inclusive", "exclusive"):
        with open(f"{folder}/{proxy}-{mode}.txt", "w") as f:
            subprocess.run(["callgrind_annotate", f"--inclusive={'yes' if mode == 'inclusive' else 'no'}",
                            "--auto=no", "--threshold=100", intervals[-1]["file"]], stdout=f, check=False)
print(json.dumps({"proxy": proxy, "requests": n, "intervals": intervals,
                  "per_request": [i["instructions"] / n for i in intervals], "success_rate": ok}))
EOF
  done
fi

say "writing the report"
python3 "$here/report.py" "$out" "$repo"
