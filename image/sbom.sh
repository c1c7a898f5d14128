#!/usr/bin/env bash
# The image's bill of materials, CycloneDX JSON on stdout: the image itself as the subject; the
# microgate crate and every crate compiled into the binary for the image's target (from
# cargo-cyclonedx, with their licenses and the dependency graph); the C library and unwinder
# linked into the static binary; the Debian package the CA certificates come from; and every
# file of the image with its SHA-256.
#
# usage: sbom.sh CARGO_CYCLONEDX RUST_TARGET ROOTFS DIGEST VERSION CREATED    (from build.sh)
set -euo pipefail

cyclonedx=$1 rust_target=$2 rootfs=$3 digest=$4 version=$5 created=$6
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

# cargo-cyclonedx writes one file beside each workspace member's Cargo.toml; a name of our own
# tells them apart from anything else there, and they are removed at once.
name=sbom-$$
cleanup() { find "$repo" -path "$repo/target" -prune -o -name "$name.json" -exec rm -f {} + ; }
trap cleanup EXIT
"$cyclonedx" cyclonedx --manifest-path Cargo.toml --format json --spec-version 1.5 \
  --target "$rust_target" --override-filename "$name" --quiet >&2
crates=$(cat "$repo/$name.json")

sysroot=$(rustc --print sysroot)
libc=$sysroot/lib/rustlib/$rust_target/lib/self-contained/libc.a
musl_version=$(strings "$libc" | grep -m1 -xE '1\.[0-9]+\.[0-9]+' || true)
[ -n "$musl_version" ] || { echo "sbom.sh: no musl version in $libc" >&2; exit 1; }
rust_version=$(rustc --version | cut -d' ' -f2)
certificates_version=$(dpkg-query -W -f='${Version}' ca-certificates)

# One component per file of the image, each with its digest.
files=$(cd "$rootfs" && find . -type f | LC_ALL=C sort | while read -r path; do
  jq -n --arg path "${path#.}" --arg sha "$(sha256sum "$path" | cut -d' ' -f1)" \
    '{type: "file", "bom-ref": ("file:" + $path), name: $path,
      hashes: [{alg: "SHA-256", content: $sha}]}'
done | jq -s .)

# The workspace's own crates are named by path: the checkout's, which differs between clones.
jq --arg digest "$digest" --arg version "$version" --arg created "$created" --arg repo "$repo" \
  --arg musl "$musl_version" --arg rust "$rust_version" --arg certs "$certificates_version" \
  --arg target "$rust_target" --argjson files "$files" '
  walk(if type == "string" then sub("path\\+file://" + $repo; "path+file:///microgate") else . end)
  | .metadata.component as $crate
  | [
      {type: "library", "bom-ref": "musl", name: "musl", version: $musl,
       description: ("the C library linked statically into microgate, from Rust " + $rust + "'"'"'s " + $target + " target"),
       licenses: [{license: {id: "MIT"}}], purl: ("pkg:generic/musl@" + $musl)},
      {type: "library", "bom-ref": "libunwind", name: "libunwind",
       description: ("LLVM'"'"'s unwinder linked statically into microgate, from Rust " + $rust + "'"'"'s " + $target + " target"),
       licenses: [{expression: "Apache-2.0 WITH LLVM-exception"}]},
      {type: "data", "bom-ref": "ca-certificates", name: "ca-certificates", version: $certs,
       description: "Mozilla'"'"'s CA certificates as Debian packages them: /etc/ssl/certs/ca-certificates.crt",
       licenses: [{license: {id: "MPL-2.0"}}],
       purl: ("pkg:deb/debian/ca-certificates@" + $certs + "?arch=all&distro=debian-12")}
    ] as $native
  | .metadata.timestamp = $created
  | .metadata.component = {
      type: "container", "bom-ref": "image", name: "microgate", version: $version,
      purl: ("pkg:oci/microgate@" + ($digest | sub(":"; "%3A")) + "?tag=" + $version),
      hashes: [{alg: "SHA-256", content: ($digest | ltrimstr("sha256:"))}],
      licenses: [{license: {id: "Apache-2.0"}}]}
  | .components = [$crate] + (.components // []) + $native + $files
  | .dependencies = (.dependencies // []) + [
      {ref: "image", dependsOn: ([$crate["bom-ref"], "ca-certificates"] + ($files | map(.["bom-ref"])))},
      {ref: $crate["bom-ref"], dependsOn: ["musl", "libunwind"]}]
  | .dependencies |= (group_by(.ref) | map({ref: .[0].ref, dependsOn: (map(.dependsOn // []) | add | unique)}))
' <<<"$crates"
