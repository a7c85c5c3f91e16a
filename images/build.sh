#!/usr/bin/env bash
# `make images`: the three programs as FROM-scratch OCI images, built offline with buildah
# (no base image, nothing pulled, only COPY), for amd64 and arm64, each written as an OCI
# archive and checked.
#
#   1. cargo build --release of the three binaries, statically linked (glibc, +crt-static),
#      for each architecture into a release target dir of its own:
#      $SPOTKUBE_CACHE/target-release. The host's architecture builds natively, the other
#      one cross-compiles (Debian's gcc-<triplet> cross linker and C compiler, for ring's C
#      code; the Rust target from rustup).
#   2. a build context: <arch>/spotkube-* (stripped), etc/ (images/rootfs), the host's
#      CA bundle.
#   3. buildah bud --platform linux/<arch> of images/<name>.Containerfile, pushed to
#      $SPOTKUBE_CACHE/images/spotkube-<name>-<version>-<arch>.tar (oci-archive).
#   4. from each archive: the file list (the binary, etc/, the CA bundle; no shell), the
#      image's architecture (config and the binary's ELF machine), a static binary,
#      `--version` run inside it, user 65532:65532, entrypoint, OCI labels, size, and
#      (controller) that a host name resolves in the static binary. A foreign
#      architecture runs under qemu-user when `buildah run` cannot (no binfmt_misc).
#   5. with more than one architecture: an OCI image index (multi-arch) per program,
#      $SPOTKUBE_CACHE/images/spotkube-<name>-<version>.tar (oci-archive), checked.
#
# Static glibc rather than musl: the Rust toolchain's own target, nothing more to install,
# and glibc's allocator (musl's is much slower for allocation-heavy servers); files and
# dns lookups are built into static glibc 2.34+, so no NSS modules are needed at run time.
# What is missing (buildah; for a cross build gcc-<triplet>, libc6-dev-<arch>-cross,
# qemu-user-static) is installed with apt-get. Any failed check fails the script.
# Env: SPOTKUBE_IMAGE_ARCHES ("amd64 arm64"; the release workflow builds one natively on
#      a runner of each), SPOTKUBE_CACHE (~/.cache/spotkube), SPOTKUBE_IMAGES_OUT,
#      SPOTKUBE_RELEASE_TARGET_DIR, SPOTKUBE_IMAGE_REGISTRY (ghcr.io/spotkube),
#      SPOTKUBE_IMAGE_SOURCE (the repo URL), SPOTKUBE_IMAGE_MAX_MB (30),
#      SPOTKUBE_BUILDAH_ISOLATION (chroot), BUILDAH (buildah).
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

# Per architecture: the Rust target, the GNU triplet (prefix of the cross gcc/binutils),
# Debian's cross packages, readelf's "Machine:", the qemu-user binary.
arch_info() {
  case "$1" in
    amd64)
      TRIPLE=x86_64-unknown-linux-gnu GNU=x86_64-linux-gnu
      CROSS_PKGS="gcc-x86-64-linux-gnu libc6-dev-amd64-cross"
      ELF_MACHINE="Advanced Micro Devices X86-64" QEMU=qemu-x86_64-static ;;
    arm64)
      TRIPLE=aarch64-unknown-linux-gnu GNU=aarch64-linux-gnu
      CROSS_PKGS="gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
      ELF_MACHINE=AArch64 QEMU=qemu-aarch64-static ;;
    *) die "unsupported architecture '$1' (SPOTKUBE_IMAGE_ARCHES: amd64 and/or arm64)" ;;
  esac
}

case "$(uname -m)" in
  x86_64) HOST_ARCH=amd64 ;;
  aarch64 | arm64) HOST_ARCH=arm64 ;;
  *) die "unsupported host architecture $(uname -m)" ;;
esac
ARCHES=()
for a in ${SPOTKUBE_IMAGE_ARCHES:-amd64 arm64}; do
  arch_info "$a"
  [[ " ${ARCHES[*]-} " == *" $a "* ]] || ARCHES+=("$a")
done
[ "${#ARCHES[@]}" -gt 0 ] || die "SPOTKUBE_IMAGE_ARCHES is empty"
cross() { [ "$1" != "$HOST_ARCH" ]; }

# --- tools: buildah, cross toolchains, qemu-user (Debian's packages) ---------------------
apt_pkgs=()
if [ -z "${BUILDAH:-}" ] && ! command -v buildah >/dev/null; then apt_pkgs+=(buildah); fi
for a in "${ARCHES[@]}"; do
  cross "$a" || continue
  arch_info "$a"
  # The cross gcc links (it finds the target's static libc.a) and compiles ring's C code.
  if ! command -v "$GNU-gcc" >/dev/null || [ "$("$GNU-gcc" -print-file-name=libc.a)" = libc.a ]; then
    read -r -a pk <<< "$CROSS_PKGS"; apt_pkgs+=("${pk[@]}")
  fi
  # Runs the foreign binary for the --version and name resolution checks.
  command -v "$QEMU" >/dev/null || apt_pkgs+=(qemu-user-static)
done
[ "${#ARCHES[@]}" -eq 1 ] || command -v jq >/dev/null || apt_pkgs+=(jq)  # index check
if [ "${#apt_pkgs[@]}" -gt 0 ]; then
  read -r -a apt_pkgs <<< "$(printf '%s\n' "${apt_pkgs[@]}" | sort -u | tr '\n' ' ')"
  log "missing: apt-get install -y ${apt_pkgs[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
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
targets=() desc=()
for a in "${ARCHES[@]}"; do
  arch_info "$a"
  targets+=(--target "$TRIPLE")
  if cross "$a"; then
    # Cross: the target's linker, and its C compiler and archiver for build scripts using
    # the cc crate (ring). Already set in the environment wins.
    if command -v rustup >/dev/null && ! rustup target list --installed | grep -x "$TRIPLE" >/dev/null; then
      log "rustup target add $TRIPLE"
      rustup target add "$TRIPLE"
    fi
    t="${TRIPLE//-/_}"
    for kv in "CARGO_TARGET_${t^^}_LINKER=$GNU-gcc" "CC_$t=$GNU-gcc" "AR_$t=$GNU-ar"; do
      var="${kv%%=*}"; [ -n "${!var:-}" ] || export "$kv"
    done
    var="CARGO_TARGET_${t^^}_LINKER"
    desc+=("$TRIPLE cross, linker ${!var}")
  else
    desc+=("$TRIPLE native")
  fi
done
log "cargo build --release, static ($(IFS=';'; echo "${desc[*]}" | sed 's/;/; /g')) into $CARGO_TARGET_DIR"
pkgs=(); for p in "${PROGRAMS[@]}"; do pkgs+=(-p "spotkube-$p"); done
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked "${targets[@]}" "${pkgs[@]}" --bins

# static (no interpreter, no shared libraries) and of the right machine
check_elf() { # <what> <file>
  local machine
  if readelf -lW "$2" | grep -q 'INTERP' || readelf -dW "$2" | grep -q '(NEEDED)'; then
    die "$1 is dynamically linked"
  fi
  machine="$(readelf -hW "$2" | sed -n 's/^ *Machine: *//p')"
  [ "$machine" = "$ELF_MACHINE" ] || die "$1 is for machine '$machine', want '$ELF_MACHINE'"
}
for a in "${ARCHES[@]}"; do
  arch_info "$a"
  for p in "${PROGRAMS[@]}"; do
    bin="$CARGO_TARGET_DIR/$TRIPLE/release/spotkube-$p"
    [ -x "$bin" ] || die "$bin was not built"
    check_elf "$bin" "$bin"
  done
done

# --- 2. build context -------------------------------------------------------------------
CTX="$OUT/context"
rm -rf "$CTX" && mkdir -p "$CTX/etc"
# Symbols stripped from the image's copy only (the controller: 44 MB -> 28 MB); the
# unstripped binary stays in the target dir to symbolize a backtrace from the same build.
# A foreign ELF needs the target's strip (binutils-<triplet>, with the cross gcc).
for a in "${ARCHES[@]}"; do
  arch_info "$a"
  strip=strip; cross "$a" && strip="$GNU-strip"
  mkdir -p "$CTX/$a"
  for p in "${PROGRAMS[@]}"; do
    install -m 0555 "$CARGO_TARGET_DIR/$TRIPLE/release/spotkube-$p" "$CTX/$a/"
    "$strip" --strip-all "$CTX/$a/spotkube-$p"
  done
done
install -m 0644 images/rootfs/etc/* "$CTX/etc/"
install -m 0644 "$CA_BUNDLE" "$CTX/ca-certificates.crt"

# --- 3. images and archives -------------------------------------------------------------
ctr="" qroot="" list=""
cleanup() {
  if [ -n "$ctr" ]; then bh umount "$ctr" >/dev/null 2>&1 || true; bh rm "$ctr" >/dev/null 2>&1 || true; fi
  if [ -n "$list" ]; then bh manifest rm "$list" >/dev/null 2>&1 || true; fi
  if [ -n "$qroot" ]; then rm -rf "$qroot"; fi
}
trap cleanup EXIT
# A multi-arch index from an earlier run would name images this run replaces.
for p in "${PROGRAMS[@]}"; do rm -f "$OUT/spotkube-$p-$VERSION.tar"; done

# A command inside the image, as IMG_CMD: `buildah run`, or for a foreign architecture
# whose binaries `buildah run` cannot exec (binfmt_misc not registered: a container usually
# cannot register it) the image's own binary under qemu-user, chrooted into a copy of the
# image's rootfs, as the image's user, with only the given environment: the same files
# (its /etc/nsswitch.conf, passwd, CA bundle) and, as `buildah run` provides them, the
# host's /etc/hosts and /etc/resolv.conf.  <buildah|qemu> <user> [--env K=V]... -- <cmd>...
img_cmd() {
  local mode="$1" usr="$2" envs=() flags=(); shift 2
  while [ "$1" = --env ]; do envs+=("$2"); flags+=(--env "$2"); shift 2; done
  shift # --
  if [ "$mode" = buildah ]; then
    IMG_CMD=("${BUILDAH_CMD[@]}" run --isolation "$ISOLATION" "${flags[@]}" "$ctr" -- "$@")
  else
    IMG_CMD=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
      "${envs[@]}" "$(command -v chroot)" --userspec="$usr" "$qroot" "/.qemu/$QEMU" "$@")
  fi
}

summary=()
for a in "${ARCHES[@]}"; do
  arch_info "$a"
  for p in "${PROGRAMS[@]}"; do
    name="spotkube-$p"
    ref="$REGISTRY/$name:$VERSION"
    archive="$OUT/$name-$VERSION-$a.tar"
    log "building $ref ($a)"
    bh bud --quiet --layers=false --platform "linux/$a" --timestamp "$EPOCH" \
      --build-arg "TARGETARCH=$a" --build-arg "VERSION=$VERSION" \
      --build-arg "REVISION=$REVISION" --build-arg "SOURCE=$SOURCE" \
      -f "images/$p.Containerfile" -t "$ref" "$CTX" >/dev/null
    rm -f "$archive"
    bh push --quiet "$ref" "oci-archive:$archive:$ref"

    # --- 4. checks, on what the archive holds ---
    ctr="$(bh from --quiet --os linux --arch "$a" "oci-archive:$archive")"
    platform="$(bh inspect --format '{{.OCIv1.OS}}/{{.OCIv1.Architecture}}' "$ctr")"
    [ "$platform" = "linux/$a" ] || die "$name ($a): image config platform is '$platform', want linux/$a"
    mnt="$(bh mount "$ctr")"
    files="$(cd "$mnt" && find . -mindepth 1 ! -type d | sort | tr '\n' ' ')"
    want="./etc/group ./etc/nsswitch.conf ./etc/passwd ./etc/ssl/certs/ca-certificates.crt ./$name "
    [ "$files" = "$want" ] || die "$name ($a): files are [$files], want [$want] (no shell, nothing else)"
    cmp -s "$mnt/etc/ssl/certs/ca-certificates.crt" "$CA_BUNDLE" || die "$name ($a): CA bundle differs from $CA_BUNDLE"
    check_elf "$name ($a): the image's /$name" "$mnt/$name"
    size=$(du -sb "$mnt" | cut -f1)

    user="$(bh inspect --format '{{.OCIv1.Config.User}}' "$ctr")"
    [ "$user" = "65532:65532" ] || die "$name ($a): config user is '$user', want 65532:65532"
    entry="$(bh inspect --format '{{.OCIv1.Config.Entrypoint}}' "$ctr")"
    [ "$entry" = "[/$name]" ] || die "$name ($a): entrypoint is $entry, want [/$name]"
    for kv in "version=$VERSION" "revision=$REVISION" "source=$SOURCE"; do
      got="$(bh inspect --format "{{index .OCIv1.Config.Labels \"org.opencontainers.image.${kv%%=*}\"}}" "$ctr")"
      [ "$got" = "${kv#*=}" ] || die "$name ($a): label org.opencontainers.image.${kv%%=*} is '$got', want '${kv#*=}'"
    done

    mode=buildah
    img_cmd buildah "$user" -- "/$name" --version
    if ! out="$("${IMG_CMD[@]}" 2>&1)"; then
      cross "$a" || die "$name ($a): '/$name --version' in the image failed: $out"
      # A foreign architecture and `buildah run` failed (here: exec format error, no
      # binfmt_misc handler for it): the same runs under qemu-user, see img_cmd.
      why="$(grep -o 'exec format error' <<< "$out" | head -1)" || why="$(tail -n 1 <<< "$out")"
      log "$name ($a): buildah run cannot run $a binaries here ($why); running /$name under $QEMU in a chroot of the image's rootfs instead"
      mode=qemu
      qroot="$OUT/qemu-root"
      rm -rf "$qroot" && mkdir -p "$qroot/.qemu"
      cp -a "$mnt/." "$qroot/"
      install -m 0644 /etc/hosts /etc/resolv.conf "$qroot/etc/"
      install -m 0555 "$(command -v "$QEMU")" "$qroot/.qemu/"
      img_cmd qemu "$user" -- "/$name" --version
      out="$("${IMG_CMD[@]}" 2>&1)" || die "$name ($a): '/$name --version' under $QEMU failed: $out"
    fi
    [ "$out" = "$name $VERSION" ] || die "$name ($a): --version printed '$out', want '$name $VERSION'"
    if [ "$p" = controller ]; then
      # Name resolution in a static glibc binary with no NSS modules: localhost (from the
      # /etc/hosts buildah provides) must resolve, so the AWS call gets as far as a refused
      # connection rather than a "dns error".
      img_cmd "$mode" "$user" --env AWS_ACCESS_KEY_ID=x --env AWS_SECRET_ACCESS_KEY=x \
        --env AWS_ENDPOINT_URL=http://localhost:9 -- \
        "/$name" rank --source aws --region us-east-1 --spot-advisor-url http://localhost:9/
      out="$(timeout 60 "${IMG_CMD[@]}" 2>&1 || true)"
      grep -q 'Connection refused' <<< "$out" || die "$name ($a): no connection to localhost:9 from the image: $out"
    fi
    img_cmd "$mode" "$user" -- /bin/sh -c 'id -u'
    uid="$("${IMG_CMD[@]}" 2>/dev/null)" && die "$name ($a): /bin/sh ran in the image ($uid)"
    if [ -n "$qroot" ]; then rm -rf "$qroot"; qroot=""; fi
    bh umount "$ctr" >/dev/null
    bh rm "$ctr" >/dev/null; ctr=""

    max=$((MAX_MB * 1000000))
    [ "$size" -le "$max" ] || die "$name ($a): $size bytes unpacked, over the ${MAX_MB} MB goal"
    summary+=("$(awk -v n="$name" -v r="$a" -v s="$size" -v a="$(stat -c %s "$archive")" \
      -v b="$(stat -c %s "$CARGO_TARGET_DIR/$TRIPLE/release/$name")" -v f="$archive" \
      'BEGIN { printf "%-20s %-5s %5.1f MB unpacked  %5.1f MB archive  %5.1f MB binary before strip  %s", n, r, s / 1e6, a / 1e6, b / 1e6, f }')")
    run_how="--version"; [ "$mode" = qemu ] && run_how="--version under $QEMU"
    log "$name ($a): ok (platform linux/$a, static $ELF_MACHINE binary, files, CA bundle, user 65532:65532, entrypoint, labels, $run_how, no shell$([ "$p" = controller ] && echo ", name resolution"))"
  done
done

# --- 5. multi-arch image index ----------------------------------------------------------
# One OCI image index per program over the per-arch archives, written offline (buildah
# manifest create/add/push to an oci-archive; nothing is pulled or pushed to a registry).
# Checked: one index, one entry per architecture, each the manifest of that arch's archive.
indexes=()
if [ "${#ARCHES[@]}" -gt 1 ]; then
  for p in "${PROGRAMS[@]}"; do
    name="spotkube-$p"
    ref="$REGISTRY/$name:$VERSION"
    index="$OUT/$name-$VERSION.tar"
    list="localhost/$name-index:$VERSION"
    bh manifest rm "$list" >/dev/null 2>&1 || true
    bh manifest create "$list" >/dev/null
    want=""
    for a in "${ARCHES[@]}"; do
      bh manifest add --os linux --arch "$a" "$list" "oci-archive:$OUT/$name-$VERSION-$a.tar" >/dev/null
      want+="linux/$a=$(tar -xOf "$OUT/$name-$VERSION-$a.tar" index.json | jq -r '.manifests[0].digest') "
    done
    bh manifest push --quiet --all --format oci "$list" "oci-archive:$index:$ref"
    bh manifest rm "$list" >/dev/null; list=""
    top="$(tar -xOf "$index" index.json | jq -r '.manifests[] | "\(.mediaType) \(.digest)"')"
    [ "${top%% *}" = application/vnd.oci.image.index.v1+json ] && [ "$(wc -l <<< "$top")" -eq 1 ] \
      || die "$name: $index holds [$top], want one OCI image index"
    got="$(tar -xOf "$index" "blobs/sha256/${top##*sha256:}" \
      | jq -r '.manifests[] | "\(.platform.os)/\(.platform.architecture)=\(.digest)"' | sort | tr '\n' ' ')"
    want="$(tr ' ' '\n' <<< "$want" | sed '/^$/d' | sort | tr '\n' ' ')"
    [ "$got" = "$want" ] || die "$name: index entries [$got], want [$want]"
    indexes+=("$(printf '%-20s %s  %5.1f MB  %s' "$name" "$(IFS=,; echo "${ARCHES[*]}")" \
      "$(awk -v s="$(stat -c %s "$index")" 'BEGIN { print s / 1e6 }')" "$index")")
    log "$name: index ok ($(sed 's/=sha256:\([0-9a-f]\{12\}\)[0-9a-f]*/ sha256:\1/g; s/ $//; s/ linux/, linux/g' <<< "$got"))"
  done
fi

echo "images (version $VERSION, revision $REVISION):"
printf '  %s\n' "${summary[@]}"
if [ "${#indexes[@]}" -gt 0 ]; then
  echo "multi-arch image indexes (oci-archive):"
  printf '  %s\n' "${indexes[@]}"
fi
