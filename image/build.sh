#!/usr/bin/env bash
# `make image`: the microgate OCI image as an archive, built with no daemon and nothing pulled,
# and its bill of materials beside it.
#
#   target/image/microgate-<version>.oci.tar        the OCI image layout, as one tar
#   target/image/microgate-<version>.cdx.json       CycloneDX SBOM: the crates in the binary and
#                                                   every other file of the image
#   target/image/microgate-<version>.digest         the manifest's digest (sha256:...)
#
# The image holds what the Dockerfile's image holds, at the same paths: the binary, static
# (musl), at /usr/local/bin/microgate; the CA certificates at /etc/ssl/certs/ca-certificates.crt;
# /etc/passwd and /etc/group naming root and nonroot (65532); USER 65532:65532; the entrypoint
# `microgate run`; ports 8080 (the chart's listener) and 9090 (admin).
#
# Reproducible: every timestamp is the commit's time (SOURCE_DATE_EPOCH), every owner numeric,
# the tar entries sorted, the paths compiled into the binary remapped; two builds of one commit
# with the same toolchain and Debian packages give the same digest.
#
# Tools, installed when missing: umoci (image layout), skopeo (reads the archive back, as a
# registry push would), musl-tools (a C compiler for the C parts of ring and mimalloc), jq, the
# Rust musl target, cargo-cyclonedx (pinned, cached under $HOME).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"
for dir in "$HOME/.cargo/bin" /usr/local/go/bin; do
  case ":$PATH:" in *":$dir:"*) ;; *) [ -d "$dir" ] && PATH="$dir:$PATH" ;; esac
done
export PATH

say() { echo "image: $*" >&2; }
start=$(date +%s)

rust_target=x86_64-unknown-linux-musl
cyclonedx_version=0.5.9
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
out=$repo/target/image
archive=$out/microgate-$version.oci.tar
name=microgate:$version

# --- tools -----------------------------------------------------------------------------------
bash tools/apt.sh umoci:umoci skopeo:skopeo musl-gcc:musl-tools jq:jq readelf:binutils strings:binutils strip:binutils \
  /usr/share/ca-certificates/mozilla:ca-certificates
if ! rustup target list --installed | grep -qx "$rust_target"; then
  say "adding the Rust target $rust_target"
  rustup target add "$rust_target" >&2
fi
cyclonedx=$(bash tools/cargo-tool.sh cargo-cyclonedx "$cyclonedx_version")

# --- the binary ------------------------------------------------------------------------------
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct HEAD)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
revision=$(git rev-parse HEAD)
# Uncommitted changes to tracked files make another image than the commit's: say so in its label.
git diff --quiet HEAD -- || revision=$revision-dirty
cargo_home=${CARGO_HOME:-$HOME/.cargo}
say "building the release binary for $rust_target"
# Paths of the checkout and of the crate sources end up in panic messages: remapped, they are the
# same in every clone. RUSTFLAGS with --target leave build scripts and proc macros alone.
# mimalloc's C prints when it was compiled (__DATE__, __TIME__): a fixed value instead, through
# CFLAGS, which the cc crate watches, so a warm target folder recompiles what it changes.
CC_x86_64_unknown_linux_musl=musl-gcc \
  CFLAGS_x86_64_unknown_linux_musl='-Wno-builtin-macro-redefined -D__DATE__="reproducible" -D__TIME__="build"' \
  RUSTFLAGS="--remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$repo=/microgate" \
  cargo build --release --locked --target "$rust_target" --bin microgate >&2
binary=target/$rust_target/release/microgate
if readelf --program-headers "$binary" | grep -q INTERP || readelf --dynamic "$binary" | grep -q NEEDED; then
  echo "image: $binary is not static:" >&2
  readelf --program-headers --dynamic "$binary" >&2
  exit 1
fi

# --- the root filesystem ---------------------------------------------------------------------
# Intermediate files (root filesystem, layer, layout) live in $work, removed at the end.
work=$out/work
rm -rf "$work"
mkdir -p "$work"
rootfs=$work/rootfs
install -d -m 0755 "$rootfs"/{etc/ssl/certs,usr/local/bin,usr/share/doc/ca-certificates,home}
install -d -m 1777 "$rootfs/tmp"
install -d -m 0700 "$rootfs/home/nonroot"
# Without its symbol table: 19 MB instead of 25 (the release profile keeps no debug info anyway).
strip --strip-all -o "$rootfs/usr/local/bin/microgate" "$binary"
chmod 0755 "$rootfs/usr/local/bin/microgate"
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
  'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' > "$rootfs/etc/passwd"
printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' > "$rootfs/etc/group"
# Mozilla's roots as Debian packages them; not the machine's bundle, which may hold local CAs.
find /usr/share/ca-certificates/mozilla -name '*.crt' -print0 | LC_ALL=C sort -z |
  xargs -0 cat > "$rootfs/etc/ssl/certs/ca-certificates.crt"
chmod 0644 "$rootfs"/etc/passwd "$rootfs"/etc/group "$rootfs/etc/ssl/certs/ca-certificates.crt"
install -m 0644 /usr/share/doc/ca-certificates/copyright "$rootfs/usr/share/doc/ca-certificates/copyright"

# One layer. Everything is root's except nonroot's home, appended with its own owner.
tar_flags=(--sort=name "--mtime=@$epoch" --numeric-owner --format=posix
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime)
tar --create --file "$work/layer.tar" --directory "$rootfs" "${tar_flags[@]}" \
  --owner=0 --group=0 --exclude=./home/nonroot .
tar --append --file "$work/layer.tar" --directory "$rootfs" "${tar_flags[@]}" \
  --owner=65532 --group=65532 ./home/nonroot

# --- the image -------------------------------------------------------------------------------
layout=$work/layout
umoci init --layout "$layout"
umoci new --image "$layout:$version"
umoci raw add-layer --image "$layout:$version" --history.created "$created" \
  --history.created_by "make image (image/build.sh)" "$work/layer.tar"
umoci config --image "$layout:$version" --no-history --created "$created" \
  --os linux --architecture amd64 \
  --config.user 65532:65532 \
  --config.entrypoint /usr/local/bin/microgate --config.cmd run \
  --config.exposedports 8080/tcp --config.exposedports 9090/tcp \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --config.label org.opencontainers.image.title=microgate \
  --config.label org.opencontainers.image.version="$version" \
  --config.label org.opencontainers.image.revision="$revision" \
  --config.label org.opencontainers.image.created="$created" \
  --config.label org.opencontainers.image.licenses=Apache-2.0
umoci gc --layout "$layout"
# containerd (kind, k3d, ctr import) names an imported image after io.containerd.image.name;
# the OCI annotation holds only the tag. The chart's `microgate:<version>` is this full name.
jq --compact-output --arg name "docker.io/library/$name" \
  '.manifests[0].annotations["io.containerd.image.name"] = $name' \
  "$layout/index.json" > "$layout/index.json.new"
mv "$layout/index.json.new" "$layout/index.json"
digest=$(jq -r '.manifests[0].digest' "$layout/index.json")

tar --create --file "$archive.partial" --directory "$layout" "${tar_flags[@]}" \
  --owner=0 --group=0 --mode=u+rw,go+r oci-layout index.json blobs
mv "$archive.partial" "$archive"
echo "$digest" > "$out/microgate-$version.digest"
# A second reader of the archive: skopeo, which a push to a registry uses (README).
skopeo inspect --raw "oci-archive:$archive" | jq -e --arg d "$digest" \
  '.config.digest and (.layers | length == 1)' >/dev/null
[ "sha256:$(skopeo inspect --raw "oci-archive:$archive" | sha256sum | cut -d' ' -f1)" = "$digest" ] ||
  { echo "image: skopeo reads another manifest from $archive than $digest" >&2; exit 1; }

# --- the bill of materials -------------------------------------------------------------------
bash "$here/sbom.sh" "$cyclonedx" "$rust_target" "$rootfs" "$digest" "$version" "$created" \
  > "$out/microgate-$version.cdx.json"

say "$archive: $digest"
say "archive $(( $(stat -c %s "$archive") / 1024 )) KiB," \
  "unpacked $(( $(du -s --apparent-size --block-size=1 "$rootfs" | cut -f1) / 1024 )) KiB," \
  "SBOM $(jq '.components | length' "$out/microgate-$version.cdx.json") components," \
  "built in $(( $(date +%s) - start ))s"
rm -rf "$work"
echo "$digest"
