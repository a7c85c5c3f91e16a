#!/usr/bin/env bash
# `make images`: the three programs as FROM-scratch OCI images, built offline with buildah
# (no base image, nothing pulled, only COPY), each written as an OCI archive and checked.
#
#   1. cargo build --release of the three binaries, statically linked (glibc, +crt-static),
#      into a release target dir of its own: $SPOTKUBE_CACHE/target-release.
#   2. a build context: <arch>/spotkube-* (stripped), etc/ (images/rootfs), the host's
#      CA bundle.
#   3. buildah bud of images/<name>.Containerfile, pushed to
#      $SPOTKUBE_CACHE/images/spotkube-<name>-<version>-<arch>.tar (oci-archive).
#   4. from each archive: the file list (the binary, etc/, the CA bundle; no shell),
#      `--version` run inside it, user 65532:65532, entrypoint, OCI labels, size, and
#      (controller) that a host name resolves in the static binary.
#
# Static glibc rather than musl: the Rust toolchain's own target, nothing more to install,
# and glibc's allocator (musl's is much slower for allocation-heavy servers); files and
# dns lookups are built into static glibc 2.34+, so no NSS modules are needed at run time.
# Builds for the machine's own architecture (amd64 or arm64; the release workflow runs
# it on one runner of each). Any failed check fails the script.
# Env: SPOTKUBE_CACHE (~/.cache/spotkube), SPOTKUBE_IMAGES_OUT, SPOTKUBE_RELEASE_TARGET_DIR,
#      SPOTKUBE_IMAGE_REGISTRY (ghcr.io/spotkube), SPOTKUBE_IMAGE_SOURCE (the repo URL),
#      SPOTKUBE_IMAGE_MAX_MB (30), SPOTKUBE_BUILDAH_ISOLATION (chroot), BUILDAH (buildah).
# Run it as root (rootful buildah): the file checks read the image's mounted rootfs.
set -euo pipefail
cd "$(dirname "$0")/.."

PROGRAMS=(webhook extender controller)
CACHE="${SPOTKUBE_CACHE:-$HOME/.cache/spotkube}"
OUT="${SPOTKUBE_IMAGES_OUT:-$CACHE/images}"
# Never the debug target dir the Makefile exports: release + crt-static would rebuild it.
export CARGO_TARGET_DIR="${SPOTKUBE_RELEASE_TARGET_DIR:-$CACHE/target-release}"
REGISTRY="${SPOTKUBE_IMAGE_REGISTRY:-ghcr.io/spotkube}"
SOURCE="${SPOTKUBE_IMAGE_SOURCE:-https://github.com/spotkube/spotkube}"
MAX_MB="${SPOTKUBE_IMAGE_MAX_MB:-30}"
# `buildah run` with the default OCI isolation needs a cgroup setup crun accepts; on a
# host with hybrid cgroups v1 (this one) crun refuses ("cgroups in hybrid mode not
# supported"). chroot isolation needs no cgroups and runs the binary all the same.
ISOLATION="${SPOTKUBE_BUILDAH_ISOLATION:-chroot}"
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

log() { echo "[images] $*" >&2; }
die() { echo "[images] FAIL: $*" >&2; exit 1; }

case "$(uname -m)" in
  x86_64) ARCH=amd64 TRIPLE=x86_64-unknown-linux-gnu ;;
  aarch64 | arm64) ARCH=arm64 TRIPLE=aarch64-unknown-linux-gnu ;;
  *) die "unsupported architecture $(uname -m)" ;;
esac

# --- buildah (Debian's package) ---------------------------------------------------------
if [ -z "${BUILDAH:-}" ] && ! command -v buildah >/dev/null; then
  log "buildah is missing: apt-get install -y buildah"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq buildah >/dev/null
fi
read -r -a BUILDAH_CMD <<< "${BUILDAH:-buildah}"
bh() { "${BUILDAH_CMD[@]}" "$@"; }
[ -r "$CA_BUNDLE" ] || die "$CA_BUNDLE is missing (apt-get install ca-certificates)"

# --- version, revision ------------------------------------------------------------------
VERSION="$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml)"
[ -n "$VERSION" ] || die "no version in Cargo.toml's [workspace.package]"
REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [ "$REVISION" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  log "note: the work tree has uncommitted changes; the revision label names HEAD"
fi
# Image and file timestamps from the commit: the same binaries give the same image digest.
EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"

# --- 1. static binaries -----------------------------------------------------------------
log "cargo build --release (static, $TRIPLE) into $CARGO_TARGET_DIR"
pkgs=(); for p in "${PROGRAMS[@]}"; do pkgs+=(-p "spotkube-$p"); done
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target "$TRIPLE" "${pkgs[@]}" --bins
BIN_DIR="$CARGO_TARGET_DIR/$TRIPLE/release"
for p in "${PROGRAMS[@]}"; do
  bin="$BIN_DIR/spotkube-$p"
  [ -x "$bin" ] || die "$bin was not built"
  if readelf -lW "$bin" | grep -q 'INTERP' || readelf -dW "$bin" | grep -q '(NEEDED)'; then
    die "$bin is dynamically linked"
  fi
done

# --- 2. build context -------------------------------------------------------------------
CTX="$OUT/context"
rm -rf "$CTX" && mkdir -p "$CTX/$ARCH" "$CTX/etc"
# Symbols stripped from the image's copy only (the controller: 44 MB -> 28 MB); the
# unstripped binary stays in the target dir to symbolize a backtrace from the same build.
for p in "${PROGRAMS[@]}"; do
  install -m 0555 "$BIN_DIR/spotkube-$p" "$CTX/$ARCH/"
  strip --strip-all "$CTX/$ARCH/spotkube-$p"
done
install -m 0644 images/rootfs/etc/* "$CTX/etc/"
install -m 0644 "$CA_BUNDLE" "$CTX/ca-certificates.crt"

# --- 3. images and archives -------------------------------------------------------------
ctr=""
cleanup() { if [ -n "$ctr" ]; then bh umount "$ctr" >/dev/null 2>&1 || true; bh rm "$ctr" >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT

summary=()
for p in "${PROGRAMS[@]}"; do
  name="spotkube-$p"
  ref="$REGISTRY/$name:$VERSION"
  archive="$OUT/$name-$VERSION-$ARCH.tar"
  log "building $ref ($ARCH)"
  bh bud --quiet --layers=false --platform "linux/$ARCH" --timestamp "$EPOCH" \
    --build-arg "TARGETARCH=$ARCH" --build-arg "VERSION=$VERSION" \
    --build-arg "REVISION=$REVISION" --build-arg "SOURCE=$SOURCE" \
    -f "images/$p.Containerfile" -t "$ref" "$CTX" >/dev/null
  rm -f "$archive"
  bh push --quiet "$ref" "oci-archive:$archive:$ref"

  # --- 4. checks, on what the archive holds ---
  ctr="$(bh from --quiet "oci-archive:$archive")"
  mnt="$(bh mount "$ctr")"
  files="$(cd "$mnt" && find . -mindepth 1 ! -type d | sort | tr '\n' ' ')"
  want="./etc/group ./etc/nsswitch.conf ./etc/passwd ./etc/ssl/certs/ca-certificates.crt ./$name "
  [ "$files" = "$want" ] || die "$name: files are [$files], want [$want] (no shell, nothing else)"
  cmp -s "$mnt/etc/ssl/certs/ca-certificates.crt" "$CA_BUNDLE" || die "$name: CA bundle differs from $CA_BUNDLE"
  size=$(du -sb "$mnt" | cut -f1)
  bh umount "$ctr" >/dev/null

  user="$(bh inspect --format '{{.OCIv1.Config.User}}' "$ctr")"
  [ "$user" = "65532:65532" ] || die "$name: config user is '$user', want 65532:65532"
  entry="$(bh inspect --format '{{.OCIv1.Config.Entrypoint}}' "$ctr")"
  [ "$entry" = "[/$name]" ] || die "$name: entrypoint is $entry, want [/$name]"
  for kv in "version=$VERSION" "revision=$REVISION" "source=$SOURCE"; do
    got="$(bh inspect --format "{{index .OCIv1.Config.Labels \"org.opencontainers.image.${kv%%=*}\"}}" "$ctr")"
    [ "$got" = "${kv#*=}" ] || die "$name: label org.opencontainers.image.${kv%%=*} is '$got', want '${kv#*=}'"
  done
  out="$(bh run --isolation "$ISOLATION" "$ctr" -- "/$name" --version 2>&1)" \
    || die "$name: '/$name --version' in the image failed: $out"
  [ "$out" = "$name $VERSION" ] || die "$name: --version printed '$out', want '$name $VERSION'"
  if [ "$p" = controller ]; then
    # Name resolution in a static glibc binary with no NSS modules: localhost (from the
    # /etc/hosts buildah provides) must resolve, so the AWS call gets as far as a refused
    # connection rather than a "dns error".
    out="$(timeout 60 "${BUILDAH_CMD[@]}" run --isolation "$ISOLATION" --env AWS_ACCESS_KEY_ID=x \
      --env AWS_SECRET_ACCESS_KEY=x --env AWS_ENDPOINT_URL=http://localhost:9 "$ctr" -- \
      "/$name" rank --source aws --region us-east-1 --spot-advisor-url http://localhost:9/ 2>&1 || true)"
    grep -q 'Connection refused' <<< "$out" || die "$name: no connection to localhost:9 from the image: $out"
  fi
  uid="$(bh run --isolation "$ISOLATION" "$ctr" -- /bin/sh -c 'id -u' 2>/dev/null)" \
    && die "$name: /bin/sh ran in the image ($uid)"
  bh rm "$ctr" >/dev/null; ctr=""

  max=$((MAX_MB * 1000000))
  [ "$size" -le "$max" ] || die "$name: $size bytes unpacked, over the ${MAX_MB} MB goal"
  summary+=("$(awk -v n="$name" -v s="$size" -v a="$(stat -c %s "$archive")" -v f="$archive" \
    'BEGIN { printf "%-22s %5.1f MB unpacked  %5.1f MB archive  %s", n, s / 1e6, a / 1e6, f }')")
  log "$name: ok (files, CA bundle, user 65532:65532, entrypoint, labels, --version, no shell$([ "$p" = controller ] && echo ", name resolution"))"
done

echo "images ($ARCH, version $VERSION, revision $REVISION):"
printf '  %s\n' "${summary[@]}"
