#!/usr/bin/env bash
# make conformance: the Gateway API conformance suite (GATEWAY-HTTP profile) against microgate.
#
# Outside the network namespace it builds everything the run needs (microgate, the fake kubelet,
# the control plane, the suite and its CRDs: the namespace has no network), then re-enters
# itself in a private network namespace (tests/cluster/netns.sh), where all of 10.200.0.0/16 is
# local. There, on a fresh control plane of its own (target/cluster-conformance) with the
# EndpointSlice controller, it installs the suite's CRDs and the GatewayClass `microgate`,
# starts the fake kubelet (echo-basic's emulation for the suite's Pods, Pod IPs in
# 10.200.0.0/16 except 10.200.255.0/24, Pod logs for `kubectl logs`) and `microgate run`, runs
# the suite, and stops everything it started.
#
# The Gateways' own addresses come from 10.200.255.0/24 (MICROGATE_GATEWAY_ADDRESSES), which no
# Pod gets: the suite dials status.addresses[0] on the listeners' ports (80, 443, 8080). The
# static-address test asks for 10.200.255.250 (in the range, above what the suite's Gateways
# take) and for 10.200.254.250 (outside it: not usable).
#
# Environment:
#   CONFORMANCE_RUN_TEST=<ShortName>  run one test (e.g. HTTPRouteSimpleSameNamespace); its report
#                                     goes to target/conformance/ instead of conformance/
#   CONFORMANCE_CHANNEL=standard      install the standard CRDs (default: experimental, which the retry tests need)
#   CONFORMANCE_DEBUG=1               the suite logs every request and response
#   CONFORMANCE_VERBOSE=1             print all of the suite's output (always in suite.log); by
#                                     default only its setup steps, errors and test verdicts
#   CONFORMANCE_ARGS="..."            more flags for the suite, e.g. -skip-tests=A,B or
#                                     -timeout-config-overrides=MaxTimeToConsistency:60 (seconds)
#   MICROGATE_BIN=path                the microgate binary (default: target/debug/microgate, built)
#   MICROGATE_RUN_ARGS="..."          more arguments for `microgate run`
#   CONFORMANCE_URL, CONFORMANCE_CONTACT, CONFORMANCE_ORGANIZATION   the report's implementation
#
# Exit status: non-zero when the suite fails a test or the core result is not a success.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
say() { echo "conformance: $*" >&2; }

if [ "${1:-}" != --inside ]; then
  for dir in /usr/local/go/bin "$HOME/go/bin" "$HOME/.cargo/bin"; do
    [ -d "$dir" ] && case ":$PATH:" in *":$dir:"*) ;; *) PATH="$dir:$PATH" ;; esac
  done
  export PATH
  cd "$repo"
  if [ -z "${MICROGATE_BIN:-}" ]; then
    cargo build --bin microgate
    export MICROGATE_BIN=$repo/target/debug/microgate
  fi
  cargo build -p microgate-test-support --bin fake-kubelet
  export FAKE_KUBELET_BIN=$repo/target/debug/fake-kubelet
  bash tests/cluster/build.sh >/dev/null
  CONFORMANCE_SUITE_DIR=$(bash "$here/build.sh")
  channel=${CONFORMANCE_CHANNEL:-experimental}
  module_dir=$(cd "$here" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api)
  CONFORMANCE_CRD_DIR=$module_dir/config/crd/$channel
  [ -d "$CONFORMANCE_CRD_DIR" ] || { say "no CRDs of channel '$channel' in $module_dir/config/crd"; exit 1; }
  CONFORMANCE_VERSION=$(git describe --tags --always --dirty 2>/dev/null || echo unknown)
  CONFORMANCE_CONTACT=${CONFORMANCE_CONTACT:-https://microgate.dev}
  export CONFORMANCE_SUITE_DIR CONFORMANCE_CRD_DIR CONFORMANCE_VERSION CONFORMANCE_CONTACT
  export MICROGATE_CLUSTER_DIR=$repo/target/cluster-conformance
  export MICROGATE_EXTRA_CONTROLLERS=endpointslice-controller
  exec bash "$repo/tests/cluster/netns.sh" bash "$here/run.sh" --inside
fi

# Inside the network namespace from here on.
out=$repo/target/conformance
mkdir -p "$out"
bin=$repo/target/cluster/bin
export KUBECONFIG=$MICROGATE_CLUSTER_DIR/kubeconfig
kubectl() { "$bin/kubectl" "$@"; }
export MICROGATE_GATEWAY_ADDRESSES=10.200.255.0/24 MICROGATE_GATEWAY_API=true

pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  bash "$repo/tests/cluster/cluster.sh" down
}
trap cleanup EXIT

# A fresh control plane: the suite's namespaces of an earlier run would still be terminating.
bash "$repo/tests/cluster/cluster.sh" down
bash "$repo/tests/cluster/cluster.sh" up

say "installing the Gateway API CRDs ($(basename "$CONFORMANCE_CRD_DIR") channel)"
crd_files=()
for file in "$CONFORMANCE_CRD_DIR"/*.yaml; do
  [ "$(basename "$file")" = kustomization.yaml ] || crd_files+=(-f "$file")
done
kubectl apply --server-side "${crd_files[@]}" >"$out/crds.log"
kubectl wait --for=condition=Established --timeout=60s crd --all >>"$out/crds.log"

kubectl apply --server-side -f - >/dev/null <<'YAML'
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: microgate
spec:
  controllerName: microgate.dev/gateway-controller
YAML

say "starting the fake kubelet (logs: $out/kubelet.log)"
NO_COLOR=1 "$FAKE_KUBELET_BIN" --serve-logs >"$out/kubelet.log" 2>&1 &
pids+=($!)
say "starting $MICROGATE_BIN run (logs: $out/microgate.log)"
# shellcheck disable=SC2086
NO_COLOR=1 "$MICROGATE_BIN" run --admin-addr 127.0.0.1:9090 ${MICROGATE_RUN_ARGS:-} >"$out/microgate.log" 2>&1 &
pids+=($!)

features=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$here/supported-features.txt" | grep -v '^$' | paste -sd, -)
if [ -n "${CONFORMANCE_RUN_TEST:-}" ]; then
  report=$out/report-$CONFORMANCE_RUN_TEST.yaml
  selection=(-run-test="$CONFORMANCE_RUN_TEST")
else
  mkdir -p "$repo/conformance"
  report=$repo/conformance/gateway-api-v1.6.3-${CONFORMANCE_CHANNEL:-experimental}-report.yaml
  selection=()
fi
debug=()
[ -n "${CONFORMANCE_DEBUG:-}" ] && debug=(-debug)
read -r -a extra <<<"${CONFORMANCE_ARGS:-}"

say "running the suite (output: $out/suite.log; report: $report)"
start=$(date +%s)
set +e
(cd "$out" && "$CONFORMANCE_SUITE_DIR/gwapi-conformance.test" \
  -test.run TestGatewayAPIConformance -test.v -test.timeout 60m \
  -gateway-class=microgate -conformance-profiles=GATEWAY-HTTP \
  -supported-features="$features" "${selection[@]}" "${debug[@]}" "${extra[@]}" \
  -cleanup-base-resources=false \
  -usable-address=10.200.255.250 -unusable-address=10.200.254.250 \
  -report-output="$report" \
  -organization="${CONFORMANCE_ORGANIZATION:-microgate}" -project=microgate \
  -url="${CONFORMANCE_URL:-https://microgate.dev}" -version="$CONFORMANCE_VERSION" \
  -contact="${CONFORMANCE_CONTACT:-microgate}") 2>&1 | tee "$out/suite.log" |
  if [ -n "${CONFORMANCE_VERBOSE:-}" ]; then cat; else
    # The suite polls every 100 ms and says so each time: keep the steps, errors and verdicts.
    grep --line-buffered -E -e '--- (PASS|FAIL)' -e 'suite.go:[0-9]+: .*Test Setup' \
      -e '(Error|Messages):' -e '^(FAIL|PASS|ok)' || true
  fi
status=${PIPESTATUS[0]}
set -e
say "the suite ran for $(( $(date +%s) - start )) s and exited with $status"

if [ -f "$report" ]; then
  # Each profile's core and extended results as the report states them (features left out).
  sed -n '/^profiles:/,$p' "$report" | grep -vE '^ +- [A-Za-z]' >&2 || true
  core=$(awk '/^- core:/{core=1} core && /result:/{print $2; exit}' "$report")
  if [ "$core" != success ]; then
    say "the core result is '${core:-missing}', not success"
    [ "$status" -ne 0 ] || status=1
  fi
else
  say "the suite wrote no report"
  [ "$status" -ne 0 ] || status=1
fi
exit "$status"
