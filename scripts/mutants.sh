#!/usr/bin/env bash
# Mutation testing (cargo-mutants) of the modules that hold the README's guarantees, run
# against the fast tests only: the library's unit and core tests, filtered per module.
# Not part of CI: the crate is rebuilt once per mutant (10-30 s each on two cores).
# Results: $CARGO_TARGET_DIR/mutants/<module>/mutants.out/{caught,missed,unviable,timeout}.txt;
# docs/testing.md records the last run and a reason for every missed mutant.
#
#   scripts/mutants.sh                  every module below
#   scripts/mutants.sh oci headers      some of them, by name
#   MUTANTS_ARGS="--in-place" scripts/mutants.sh headers
#                                       mutate this tree itself (one job; a scratch copy
#                                       with a built target dir saves the first build)
#
# Needs cargo-mutants: cargo install cargo-mutants
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v cargo-mutants >/dev/null 2>&1; then
    echo "mutants.sh: cargo-mutants is not installed: cargo install cargo-mutants" >&2
    exit 1
fi

# name|file|the library tests that exercise it (cargo test filters)
modules=(
    "headers|src/source/registry/headers.rs|registry::"
    "oci|src/oci.rs|oci:: source:: tree::"
    "names|src/names/mod.rs|names:: tree::"
    "names-archive|src/names/archive.rs|names:: archive:: tree::"
    "block|src/cache/block.rs|cache:: read_tests::"
    "partial|src/cache/partial.rs|cache:: read_tests:: core_tests:: read_fault_tests::"
    "verified|src/cache/verified.rs|cache:: read_tests:: core_tests::"
    "index|src/read/index.rs|index:: read_tests:: core_tests::"
)
out="${CARGO_TARGET_DIR:-target}/mutants"
status=0
for m in "${modules[@]}"; do
    IFS='|' read -r name file filters <<<"$m"
    if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then
        continue
    fi
    printf '\n==> [mutants.sh] %s: %s (tests: %s)\n' "$name" "$file" "$filters"
    rc=0
    mkdir -p "$out/$name"
    # shellcheck disable=SC2086 # the filters and MUTANTS_ARGS are word lists
    cargo mutants --no-shuffle --baseline skip --timeout "${MUTANTS_TIMEOUT:-120}" \
        ${MUTANTS_ARGS:-} -f "$file" \
        -o "$out/$name" --cargo-arg=--lib -- -- $filters || rc=$?
    # 2: some mutants missed, 3: some timed out; anything else is a failure of the run.
    case $rc in
        0 | 2 | 3) ;;
        *) echo "mutants.sh: cargo mutants failed on $name (exit $rc)" >&2; status=1 ;;
    esac
    for kind in caught missed unviable timeout; do
        f="$out/$name/mutants.out/$kind.txt"
        printf '%s %s: %s\n' "$name" "$kind" "$( [ -f "$f" ] && wc -l <"$f" || echo 0)"
    done
done
exit $status
