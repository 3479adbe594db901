#!/usr/bin/env bash
# One command that sets everything up and runs the main job:
#
#   scripts/demo.sh
#
# It checks the Rust toolchain (cargo >= 1.85 with rustfmt and clippy) and /dev/fuse. On a
# Debian machine it installs what is missing (fuse3, gdal-bin, curl, a C compiler),
# builds orasfs in release mode, mounts the example OCI image layout
# examples/eo-layout:v1 at a temporary mountpoint, lists it, prints its STAC item, runs
# gdalinfo on the Cloud-Optimized GeoTIFF straight from the mount, shows the tag listing
# of the whole layout, and unmounts. Whatever happens, the mounts are undone and orasfs is
# stopped before the script exits. Exit status is non-zero if any step fails.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$(pwd)"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

step "Checking the Rust toolchain"
check_toolchain

# --- 1. System packages -------------------------------------------------------------
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "not root and sudo is missing: install fuse3, gdal-bin, curl and gcc as root first"
    SUDO="sudo"
fi

step "Checking system packages"
missing=()
need() { # need COMMAND PACKAGE...
    local cmd="$1"; shift
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$@")
}
need fusermount3 fuse3
need gdalinfo gdal-bin
need curl curl
need cc gcc libc6-dev          # ring (TLS) compiles C, and rustc links with cc
if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${missing[*]} and apt-get is not available; install them by hand"
    echo "installing: ${missing[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    echo "all present (fuse3, gdal-bin, curl, cc)"
fi
check_fuse_device

# --- 2. Build -----------------------------------------------------------------------
step "Building orasfs (cargo build --release)"
cargo build --release
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/orasfs"
[ -x "$BIN" ] || die "build finished but $BIN is missing"

# --- 3. Mount, look, unmount --------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/orasfs-demo.XXXXXX")"
WORK="$(cd "$WORK" && pwd -P)"
CACHE="$WORK/cache"
mkdir -p "$CACHE"

PIDS=()      # orasfs processes we started
MOUNTS=()    # mountpoints we asked for

is_mounted() { awk -v mp="$1" '$2 == mp { found = 1 } END { exit !found }' /proc/mounts; }

# Wait up to $2 tenths of a second for process $1 to end; true if it did.
wait_gone() {
    local pid="$1" n="$2"
    while [ "$n" -gt 0 ] && kill -0 "$pid" 2>/dev/null; do sleep 0.1; n=$((n - 1)); done
    ! kill -0 "$pid" 2>/dev/null
}

unmount() {
    local mp="$1"
    is_mounted "$mp" || return 0
    fusermount3 -u "$mp" 2>/dev/null || fusermount3 -uz "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
    ! is_mounted "$mp"
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local mp pid
    for mp in "${MOUNTS[@]}"; do
        unmount "$mp" || echo "demo: could not unmount $mp" >&2
    done
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            wait_gone "$pid" 50 || { kill -TERM "$pid" 2>/dev/null; wait_gone "$pid" 50; } || kill -KILL "$pid" 2>/dev/null
        fi
        wait "$pid" 2>/dev/null
    done
    local left=0
    for mp in "${MOUNTS[@]}"; do is_mounted "$mp" && left=1; done
    if [ "$left" -eq 0 ]; then
        rm -rf "$WORK"
    else
        echo "demo: a mount is still in place; left $WORK alone" >&2
        rc=1
    fi
    if [ "$rc" -ne 0 ]; then echo "demo: FAILED (exit $rc)" >&2; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# mount_source SOURCE MOUNTPOINT: start orasfs in the background, wait (bounded) for the mount.
MOUNT_PID=""
mount_source() {
    local source="$1" mp="$2" log="$2.log"
    mkdir -p "$mp"
    MOUNTS+=("$mp")
    echo "orasfs mount --foreground --cache-dir $CACHE $source $mp"
    "$BIN" mount --foreground --cache-dir "$CACHE" "$source" "$mp" >"$log" 2>&1 &
    MOUNT_PID=$!
    PIDS+=("$MOUNT_PID")
    for _ in $(seq 1 150); do
        if is_mounted "$mp"; then echo "mounted (pid $MOUNT_PID)"; return 0; fi
        if ! kill -0 "$MOUNT_PID" 2>/dev/null; then
            local st=0
            wait "$MOUNT_PID" || st=$?
            echo "orasfs exited with status $st before mounting; its output:" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "timed out after 15 s waiting for $mp to be mounted; orasfs output:" >&2
    cat "$log" >&2
    return 1
}

# unmount_source MOUNTPOINT PID: unmount and check that orasfs exits cleanly.
unmount_source() {
    local mp="$1" pid="$2"
    fusermount3 -u "$mp"
    if ! wait_gone "$pid" 100; then
        echo "orasfs (pid $pid) still running 10 s after unmount" >&2
        return 1
    fi
    local st=0
    wait "$pid" || st=$?
    if [ "$st" -ne 0 ]; then
        echo "orasfs exited with status $st; its output:" >&2
        cat "$mp.log" >&2
        return 1
    fi
    echo "unmounted; orasfs exited cleanly"
}

LAYOUT="$REPO/examples/eo-layout"
[ -f "$LAYOUT/index.json" ] || die "$LAYOUT is missing (examples/make-eo-layout.sh makes it)"

step "Mounting examples/eo-layout:v1"
MNT="$WORK/eo-v1"
mount_source "$LAYOUT:v1" "$MNT"
V1_PID="$MOUNT_PID"

step "ls -la $MNT"
ls -la "$MNT"

step "STAC item: $MNT/stac_item.json"
cat "$MNT/stac_item.json"

step "gdalinfo $MNT/imagery.tif"
gdalinfo "$MNT/imagery.tif"

step "Checking file contents against the manifest's digests"
for f in imagery.tif stac_item.json; do
    sum="$(sha256sum "$MNT/$f" | cut -d' ' -f1)"
    grep -q "\"sha256:$sum\"" "$MNT/.manifest.json" || die "$f: sha256 $sum is not in .manifest.json"
    echo "$f  sha256:$sum  matches the manifest"
done

step "Unmounting $MNT"
unmount_source "$MNT" "$V1_PID"

step "Mounting examples/eo-layout (no tag: one directory per tag)"
MNT_ALL="$WORK/eo-all"
mount_source "$LAYOUT" "$MNT_ALL"
ALL_PID="$MOUNT_PID"
echo "\$ ls -la $MNT_ALL"
ls -la "$MNT_ALL"
echo "\$ ls -la $MNT_ALL/v1"
ls -la "$MNT_ALL/v1"

step "Unmounting $MNT_ALL"
unmount_source "$MNT_ALL" "$ALL_PID"

step "Demo finished: all steps passed"
