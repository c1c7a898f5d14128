#!/usr/bin/env bash
# Checks the chart's Prometheus rules with promtool (built by build.sh from the pinned module):
#   1. every metric the rules, their tests and the dashboard name is one microgate registers
#      (a metric renamed in the code and not here fails this, not a user's alerting);
#   2. `promtool check rules`: the file parses and each expression is valid PromQL;
#   3. `promtool test rules`: replayed series fire each alert when they should, and not otherwise.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"

rules=helm/microgate/files/alerts.yaml
dashboard=helm/microgate/files/dashboard.json
tests=tests/promtool/alerts_test.yaml
promtool=$(bash tests/promtool/build.sh)

# The names microgate registers (prometheus-client adds `_total` to counters and `_bucket`, `_sum`,
# `_count` to histograms), read from the registrations in src/ so a rename there changes this list.
registered=$(grep -rhzoP 'register\(\s*"microgate_[a-z0-9_]+"' src | tr '\0' '\n' | grep -oP 'microgate_[a-z0-9_]+' | sort -u)
[ -n "$registered" ] || { echo "promtool/check.sh: found no metric registrations in src/" >&2; exit 1; }

# Metric names the shipped files use; recorded series (`microgate:...`) are the rules' own.
used=$(grep -ohP '(?<![:a-z0-9_])microgate_[a-z0-9_]+' "$rules" "$tests" "$dashboard" | sort -u)
[ -n "$used" ] || { echo "promtool/check.sh: $rules names no microgate metric" >&2; exit 1; }
unknown=()
for name in $used; do
  base=$name
  grep -qxF "$name" <<<"$registered" || base=$(sed -E 's/_(total|bucket|sum|count)$//' <<<"$name")
  grep -qxF "$base" <<<"$registered" || unknown+=("$name")
done
if [ ${#unknown[@]} -gt 0 ]; then
  echo "promtool/check.sh: metrics used by $rules, $tests or $dashboard that microgate does not register: ${unknown[*]}" >&2
  echo "registered: $(tr '\n' ' ' <<<"$registered")" >&2
  exit 1
fi
echo "$(wc -w <<<"$used") metric names used, all registered by microgate" >&2

"$promtool" check rules "$rules"
# The test file names the rules by a path relative to itself.
"$promtool" test rules "$tests"
