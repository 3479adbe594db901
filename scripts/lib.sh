# Checks shared by scripts/demo.sh and scripts/test.sh; sourced, not run. The caller
# defines die MESSAGE (print it and exit non-zero).

# The Rust toolchain orasfs needs (Cargo.toml's rust-version).
ORASFS_MIN_RUST=1.85

# check_toolchain: cargo >= $ORASFS_MIN_RUST on PATH (or in ~/.cargo/bin, which is then put
# on PATH), with rustfmt and clippy. Prints the cargo version.
check_toolchain() {
    local rustup_hint="install Rust with rustup (https://rustup.rs): curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --component rustfmt,clippy"
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found: $rustup_hint"
    local version
    version="$(cargo --version 2>/dev/null)" || die "'cargo --version' failed: $rustup_hint"
    echo "$version"
    local number="${version#cargo }"
    number="${number%% *}"
    local major minor
    IFS=. read -r major minor _ <<<"$number"
    case "$major.$minor" in
        *[!0-9.]* | .* | *.) die "cannot read the version in '$version': $rustup_hint" ;;
    esac
    local want_major="${ORASFS_MIN_RUST%%.*}" want_minor="${ORASFS_MIN_RUST#*.}"
    if [ "$major" -lt "$want_major" ] || { [ "$major" -eq "$want_major" ] && [ "$minor" -lt "$want_minor" ]; }; then
        die "$version is too old: orasfs needs Rust >= $ORASFS_MIN_RUST (Debian's own cargo cannot read Cargo.lock); $rustup_hint, and put ~/.cargo/bin first on PATH"
    fi
    cargo fmt --version >/dev/null 2>&1 || die "rustfmt is missing: rustup component add rustfmt"
    cargo clippy --version >/dev/null 2>&1 || die "clippy is missing: rustup component add clippy"
}

# check_fuse_device [PATH]: the FUSE device (default /dev/fuse) exists.
check_fuse_device() {
    local dev="${1:-/dev/fuse}"
    [ -e "$dev" ] || die "$dev does not exist: this machine (or container) has no FUSE device; load the module (modprobe fuse), or run the container with --device /dev/fuse --cap-add SYS_ADMIN"
}

# oras_venv: where the ORAS Python client lives, a virtual environment under the build
# directory (the system Python is left alone, PEP 668).
oras_venv() {
    local target="${CARGO_TARGET_DIR:-target}"
    case "$target" in
        /*) ;;
        *) target="$(pwd)/$target" ;;
    esac
    echo "$target/oras-venv"
}
