#!/usr/bin/env bash
# Checks the license of every crate the workspace builds against the allow list in deny.toml,
# with cargo-deny (pinned, cached under $HOME). Offline: the license check reads only the
# crates' own metadata, which cargo already has.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
deny=$(bash tools/cargo-tool.sh cargo-deny 0.20.2)
# cargo-deny reads the whole graph, every platform's crates included, which a build on this one
# does not download: fetch them (from the local cache when they are there).
cargo fetch --locked --quiet
"$deny" deny --offline --locked check licenses
