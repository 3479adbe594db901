#!/usr/bin/env bash
# Run every cargo-fuzz target for a while and print what happened.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 600 (10 minutes; FUZZ_SECONDS works too). With no TARGET,
# every target in fuzz/Cargo.toml runs, one after the other. FUZZ_JOBS=N runs N fuzzing
# processes per target (default 1).
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). cargo-fuzz passes nightly-only flags
# (-Zsanitizer=address and friends); on a stable toolchain RUSTC_BOOTSTRAP=1, set here,
# lets them through. The AddressSanitizer runtime ships with the stable x86_64 Linux std.
#
# The corpus grows in fuzz/corpus/TARGET (not in git); fuzz/seeds/TARGET holds the
# starting inputs. A crash stops its target and leaves the input in
# fuzz/artifacts/TARGET/; the script carries on with the next target and exits 1 at the
# end. Keep every crash as a regression: copy it to tests/fuzz_regressions/TARGET/ (the
# test suite replays each file there through the same checks, fuzz/checks.rs), fix it, and
# run `cargo test --test fuzz_regressions`.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs=${1:-${FUZZ_SECONDS:-600}}
shift || true
jobs=${FUZZ_JOBS:-1}
export RUSTC_BOOTSTRAP=1

command -v cargo-fuzz >/dev/null || { echo "run.sh: cargo-fuzz missing: cargo install cargo-fuzz" >&2; exit 2; }

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

echo "==> building ${targets[*]}"
cargo fuzz build || exit 2

log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
failed=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    seeds=()
    [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
    extra=()
    [ -f "fuzz/dicts/$t.dict" ] && extra+=("-dict=fuzz/dicts/$t.dict")
    [ "$jobs" -gt 1 ] && extra+=("-jobs=$jobs" "-workers=$jobs")
    echo "==> $t for ${secs}s x $jobs job(s)"
    touch "$log_dir/$t.start"
    start=$(date +%s)
    # With -jobs, libFuzzer writes fuzz-N.log into the working directory: use the log dir.
    (cd "$log_dir" && cargo fuzz run --fuzz-dir "$OLDPWD/fuzz" "$t" \
        "$OLDPWD/fuzz/corpus/$t" "${seeds[@]/#/$OLDPWD/}" -- \
        -artifact_prefix="$OLDPWD/fuzz/artifacts/$t/" \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 "${extra[@]/#-dict=/-dict=$OLDPWD/}") >"$log_dir/$t.log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    cat "$log_dir"/fuzz-*.log >>"$log_dir/$t.log" 2>/dev/null && rm -f "$log_dir"/fuzz-*.log
    runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log_dir/$t.log" | awk '{s+=$2} END {print s+0}')
    cov=$(grep -Eo 'cov: [0-9]+' "$log_dir/$t.log" | tail -1 | awk '{print $2}')
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    # Only crashes found by this run count; older ones stay in fuzz/artifacts/ until removed.
    crashes=$(find "fuzz/artifacts/$t" -type f -newer "$log_dir/$t.start" | wc -l)
    if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
        failed=1
        echo "    FAILED (exit $rc); last lines:"
        tail -30 "$log_dir/$t.log" | sed 's/^/    /'
    fi
    summary+=("$(printf '%-18s %6ss %12s execs  cov %-6s corpus %-6s crashes %s' "$t" "$took" "$runs" "${cov:-?}" "$corpus" "$crashes")")
done

echo
echo "==> fuzz summary ($(date -u +%Y-%m-%dT%H:%MZ), $(rustc --version))"
printf '%s\n' "${summary[@]}"
[ "$failed" -eq 0 ] || echo "crash inputs are in fuzz/artifacts/<target>/: add them to tests/fuzz_regressions/<target>/"
exit "$failed"
