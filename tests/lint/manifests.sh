#!/usr/bin/env bash
# Lints the install with checkov (pinned, from PyPI): manifests/ and the chart rendered in each
# mode of its values. Findings fail; the waived checks, each with its reason, are in
# checkov.yaml beside this script. Offline: checkov downloads nothing (skip-download).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"

checkov_version=3.3.30
checkov=$(bash tools/pip-tool.sh checkov "$checkov_version")
bash tests/cluster/build.sh
helm=target/cluster/bin/helm

# The chart in each mode: embedded or dedicated gateway, cluster-wide or one namespace, one
# replica without leader election, no metrics Service, pinned by digest.
# One folder for all: given two, checkov 3.3 silently skips checks of the second.
scanned=target/lint
rendered=$scanned/chart
rm -rf "$scanned"
mkdir -p "$rendered"
cp -r manifests "$scanned/manifests"
declare -A modes=(
  [embedded]=""
  [dedicated]="gateway.mode=dedicated"
  [namespaced]="watchNamespace=apps"
  [dedicated-namespaced]="gateway.mode=dedicated,watchNamespace=apps"
  [single]="leaderElection.enabled=false,metrics.service.enabled=false"
  [digest]="image.digest=sha256:$(printf '0%.0s' {1..64})"
)
for mode in "${!modes[@]}"; do
  set_values=()
  [ -z "${modes[$mode]}" ] || set_values=(--set "${modes[$mode]}")
  "$helm" template microgate helm/microgate --namespace microgate-system "${set_values[@]}" \
    > "$rendered/$mode.yaml"
done

echo "checkov $checkov_version: manifests/ and the chart in ${#modes[@]} modes ($scanned)" >&2
# checkov exits 1 on any failed check, and prints them.
"$checkov" --config-file "$here/checkov.yaml" --directory "$scanned"
