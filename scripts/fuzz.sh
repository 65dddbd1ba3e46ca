#!/bin/bash
# Run each fuzz target (fuzz/fuzz_targets) for SECS seconds with cargo-fuzz
# and print, per target, the executions, the corpus size and any crash.
# usage: scripts/fuzz.sh SECS TARGET...
# The stable toolchain builds them (RUSTC_BOOTSTRAP lets cargo-fuzz pass
# its -Z flags); no sanitizer: the targets are safe Rust, and a panic or an
# abort is what libFuzzer catches.
set -euo pipefail
secs=${1:?usage: fuzz.sh SECS TARGET...}
shift
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
status=0
summary=()
for t in "$@"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    log="artifacts/$t/fuzz.log"
    if cargo fuzz run --sanitizer none "$t" "corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 > "$log" 2>&1; then
        found="none"
    else
        found="CRASH: $(ls -t "artifacts/$t"/crash-* "artifacts/$t"/oom-* "artifacts/$t"/timeout-* 2>/dev/null | head -n1)"
        status=1
    fi
    # The targets' scratch files (libFuzzer exits without destructors).
    rm -rf /dev/shm/runvm-fuzz-config-* /tmp/runvm-fuzz-bundle-*
    runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -n1)
    corpus=$(ls "corpus/$t" | wc -l)
    summary+=("$t: ${runs:-?} executions in ${secs} s, corpus $corpus inputs, findings: $found")
    echo "fuzz: ${summary[-1]}"
done
printf '%s\n' "${summary[@]}"
exit $status
