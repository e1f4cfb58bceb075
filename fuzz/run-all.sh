#!/usr/bin/env bash
# Build every cargo-fuzz target and run each for SECONDS (default 60), one
# after the other. Prints executions and the final cov/ft figures per
# target; exits non-zero if any target crashes, hangs (-timeout), runs out
# of memory, or fails to build.
#
# Usage: fuzz/run-all.sh [SECONDS]
# Needs the nightly toolchain; installs cargo-fuzz if it is missing.
# Corpora grow in fuzz/corpus/<target>, crash inputs land in
# fuzz/artifacts/<target> (both git-ignored).
set -u -o pipefail

secs="${1:-60}"
case "$secs" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")" || exit 2

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal || exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked || exit 2
fi

echo "== building all targets ($(df -h . | awk 'NR==2 {print $4}') free on this disk)"
if ! cargo +nightly fuzz build; then
    # A linker killed by SIGBUS means the disk filled up while it wrote;
    # say so instead of leaving only the linker's message.
    echo "build failed; free space now: $(df -h . | awk 'NR==2 {print $4}')" >&2
    exit 1
fi

logdir="$(mktemp -d)"
failed=()
results=()
for target in $(cargo +nightly fuzz list); do
    mkdir -p "corpus/$target"
    extra=()
    case "$target" in
        # Operation sequences need longer inputs than single datagrams.
        endpoint_* | emqx_handler | hono_handler | dtls_record) extra=(-max_len=4096) ;;
    esac
    log="$logdir/$target.log"
    echo "== $target: ${secs}s"
    cargo +nightly fuzz run "$target" -- \
        -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 "${extra[@]}" \
        >"$log" 2>&1
    rc=$?
    execs="$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -n 1)"
    last="$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -n 1)"
    cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
    ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
    line="$(printf '%-20s execs=%-10s cov=%-6s ft=%-7s' "$target" "${execs:-?}" "${cov:-?}" "${ft:-?}")"
    if [ "$rc" -ne 0 ]; then
        failed+=("$target")
        line="$line FAILED (exit $rc, log $log)"
        grep -E "panicked at|ERROR: libFuzzer|SUMMARY|Test unit written to" "$log" | head -n 8 >&2
        grep -A2 "panicked at" "$log" | head -n 6 >&2
    else
        line="$line ok"
    fi
    echo "$line"
    results+=("$line")
done

echo
echo "== summary (${secs}s per target)"
printf '%s\n' "${results[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "crashed: ${failed[*]}" >&2
    exit 1
fi
rm -rf "$logdir"
