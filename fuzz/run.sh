#!/usr/bin/env bash
# `make fuzz`: each fuzz target for a bounded time (FUZZ_SECONDS in all, default 600, shared
# equally), starting from seeds made of the hostile-input corpus (tests/hostile/requests.corpus)
# and from what earlier runs found (target/fuzz/corpus). A crash stops the run: its input is in
# fuzz/artifacts/<target>/; copy it into fuzz/regressions/<target>/, where `make test` replays
# every file (src/gateway/fuzzing.rs), and fix the reader.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
seconds=${FUZZ_SECONDS:-600}
targets=(request_head chunked response_head)
per=$(( seconds / ${#targets[@]} ))
[ "$per" -ge 1 ] || { echo "fuzz: FUZZ_SECONDS=$seconds is too short for ${#targets[@]} targets" >&2; exit 1; }

PATH=$(bash "$here/tools.sh"):$PATH
export PATH
rustup toolchain list | grep -q '^nightly' || { echo "fuzz: needs the nightly toolchain (rustup toolchain install nightly)" >&2; exit 1; }

seeds=$repo/target/fuzz/seeds
rm -rf "$seeds"
(cd "$repo" && cargo run --quiet -p microgate-test-support --bin fuzz-seeds -- "$seeds")
# The same dependency versions as the gateway itself, plus libFuzzer.
[ -f "$here/Cargo.lock" ] || cp "$repo/Cargo.lock" "$here/Cargo.lock"
for target in "${targets[@]}"; do
  corpus=$repo/target/fuzz/corpus/$target
  mkdir -p "$corpus"
  echo "fuzz: $target for ${per}s" >&2
  (cd "$repo" && cargo +nightly fuzz run "$target" "$corpus" "$seeds/$target" -- \
    -max_total_time="$per" -rss_limit_mb=2048 -print_final_stats=1)
done
