#!/usr/bin/env bash
# One command that runs the tests:
#
#   scripts/test.sh                 everything (as CI runs it)
#   scripts/test.sh --test mount    the same setup, then only these cargo test arguments
#
# Checks the Rust toolchain (cargo >= 1.85 with rustfmt and clippy) and /dev/fuse, installs
# what the tests need (apt: fuse3, docker-registry, gdal-bin, curl, apache2-utils, attr,
# systemd, make, python3-venv; the ORAS Python client into a virtual environment under the
# build directory, target/oras-venv), stops the docker-registry system service that the
# Debian package may start (the tests run their own registries on their own ports), then
# runs cargo fmt --check, cargo clippy --all-targets -- -D warnings, cargo test, and the
# systemd units booted in a container (tests/systemd/check.sh; installs debootstrap and
# systemd-container for it).
# Stops at the first failure with a non-zero exit status. CI runs exactly this (.ci/run).
#
# Under CI=true a test whose tool is missing fails, naming the package; otherwise it is
# skipped, and the script ends with a list of what was skipped and why.
#
# Set ORASFS_SKIP_INSTALL=1 to skip the install steps.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

step() { printf '\n==> [test.sh] %s\n' "$*"; }
die() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }

step "Checking the Rust toolchain and /dev/fuse"
check_toolchain
check_fuse_device

# Tests append "test: why" here when they skip (see tests/common: needs).
ORASFS_SKIP_LOG="$(mktemp "${TMPDIR:-/tmp}/orasfs-skips.XXXXXX")"
export ORASFS_SKIP_LOG
skip_summary() {
    if [ -s "$ORASFS_SKIP_LOG" ]; then
        printf '\n==> [test.sh] Skipped tests (%s):\n' "$(sort -u "$ORASFS_SKIP_LOG" | wc -l)"
        sort -u "$ORASFS_SKIP_LOG" | sed 's/^/  /'
    else
        printf '\n==> [test.sh] No test was skipped.\n'
    fi
}
on_exit() {
    local rc=$?
    skip_summary
    rm -f "$ORASFS_SKIP_LOG"
    [ "$rc" -eq 0 ] || echo "test.sh: FAILED (exit $rc)" >&2
}
trap on_exit EXIT

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "not root and sudo is missing"
    SUDO="sudo"
fi

if [ "${ORASFS_SKIP_INSTALL:-0}" != 1 ]; then
    step "Installing system packages (apt)"
    APT_PKGS=(fuse3 docker-registry gdal-bin curl apache2-utils attr systemd make python3-venv gcc libc6-dev)
    missing=()
    for p in "${APT_PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing: ${missing[*]}"
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    else
        echo "all present: ${APT_PKGS[*]}"
    fi

    VENV="$(oras_venv)"
    step "Installing the ORAS Python client (pip: oras) into $VENV"
    command -v python3 >/dev/null || die "python3 not found"
    if "$VENV/bin/python3" -c 'import oras.client' 2>/dev/null; then
        echo "oras already installed in $VENV"
    else
        python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (apt: python3-venv)"
        PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" install -q oras
        "$VENV/bin/python3" -c 'import oras.client' || die "pip installed oras but $VENV/bin/python3 cannot import it"
    fi

    step "Stopping the docker-registry system service (tests start their own registries)"
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        $SUDO systemctl stop docker-registry 2>/dev/null || true
    fi
    if [ -x /etc/init.d/docker-registry ]; then
        $SUDO service docker-registry stop >/dev/null 2>&1 || true
    fi
    # Anything still serving the package's own config is the service: stop exactly those
    # processes (other registries, e.g. ones a developer started, are left alone).
    for d in /proc/[0-9]*; do
        cmd="$(tr '\0' ' ' 2>/dev/null <"$d/cmdline")" || continue
        case "$cmd" in
            *docker-registry\ serve\ /etc/docker/registry/config.yml*)
                pid="${d#/proc/}"
                echo "stopping docker-registry service process $pid"
                $SUDO kill "$pid" 2>/dev/null || true
                ;;
        esac
    done
    echo "done"
fi

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test $*"
cargo test "$@"
if [ $# -gt 0 ]; then
    step "Only the tests asked for were run (cargo test $*)"
    exit 0
fi

# --- systemd units under a real systemd (issue 16) --------------------------------------
# Boots a Debian bookworm container with systemd-nspawn (rootfs built once with debootstrap,
# reused under the target directory) and checks the units end to end; see the script.
# debootstrap and systemd-container go in without recommends: the recommended
# libnss-mymachines would edit the host's /etc/nsswitch.conf.
step "systemd units under a real systemd (tests/systemd/check.sh)"
if [ "${ORASFS_SKIP_INSTALL:-0}" != 1 ]; then
    for p in debootstrap systemd-container; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" && continue
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$p" \
            || { $SUDO apt-get update -q && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$p"; }
    done
fi
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build -q --bin orasfs
$SUDO env "CARGO_TARGET_DIR=$target_dir" "ORASFS_CHECK_BIN=$target_dir/debug/orasfs" "PATH=$PATH" \
    "PYTHON=${PYTHON:-$(oras_venv)/bin/python3}" tests/systemd/check.sh

step "All tests passed"
