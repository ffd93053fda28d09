#!/usr/bin/env bash
# Control-plane benchmarks: each run gets a fresh release gateway (default config = the echo
# agent) on a temp state dir, started with `ulimit -n 4096`, and stopped afterwards.
#
#   cargo build --release -p pincer -p pincer-bench
#   crates/pincer-bench/control-plane.sh [http-chat] [ws-chat] [idle-ws]    # default: all three
#
# Environment: PINCER, BENCH (the binaries; default target/release/...), REPEAT (runs per
# setting, default 2), CONCURRENCY (default "1 16 64"), CLIENTS (idle-ws, default 1000),
# WAIT_IDLE (seconds to wait, before each run, for the machine to be under 10% busy; default
# 0 = do not wait). Each run prints how busy the machine was just before it started.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
PINCER=${PINCER:-$root/target/release/pincer}
BENCH=${BENCH:-$root/target/release/pincer-bench}
REPEAT=${REPEAT:-2}
CONCURRENCY=${CONCURRENCY:-1 16 64}
CLIENTS=${CLIENTS:-1000}
modes=("$@")
[ ${#modes[@]} -eq 0 ] && modes=(http-chat ws-chat idle-ws)

# The gateway needs a descriptor per client; 1,000 idle clients exceed the usual 1,024.
ulimit -n 4096

gw_pid=""
gw_dir=""
start_gateway() {
    gw_dir=$(mktemp -d)
    "$PINCER" gateway run --port 0 --state-dir "$gw_dir/state" >"$gw_dir/out" 2>"$gw_dir/err" &
    gw_pid=$!
    for _ in $(seq 100); do
        grep -q "^listening on" "$gw_dir/out" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "gateway did not start; stderr:" >&2
    cat "$gw_dir/err" >&2
    exit 1
}
stop_gateway() {
    kill -TERM "$gw_pid" 2>/dev/null || true
    wait "$gw_pid" 2>/dev/null || true
    rm -rf "$gw_dir"
    gw_pid=""
}
trap '[ -n "$gw_pid" ] && stop_gateway' EXIT

# Percent of all CPUs busy over one second (from /proc/stat).
cpu_busy() {
    local a b
    read -r -a a < <(head -1 /proc/stat)
    sleep 1
    read -r -a b < <(head -1 /proc/stat)
    local total=0 idle
    for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
    idle=$((b[4] - a[4] + b[5] - a[5]))
    echo $((total > 0 ? 100 * (total - idle) / total : 0))
}
# Wait up to WAIT_IDLE seconds for the machine to be under 10% busy; print how busy it was.
before_run() {
    local busy waited=0
    busy=$(cpu_busy)
    while [ "$busy" -ge 10 ] && [ "$waited" -lt "${WAIT_IDLE:-0}" ]; do
        sleep 4
        waited=$((waited + 5))
        busy=$(cpu_busy)
    done
    echo "machine busy before the run: ${busy}% of all CPUs"
}

# Measured requests per setting: enough for a stable p99, a few seconds each.
requests() {
    case "$1:$2" in
    http-chat:1 | ws-chat:1) echo 5000 ;;
    ws-chat:*) echo 10000 ;;
    *) echo 40000 ;;
    esac
}

echo "# $(date -u +%FT%TZ) $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg)"
for mode in "${modes[@]}"; do
    for run in $(seq "$REPEAT"); do
        if [ "$mode" = idle-ws ]; then
            start_gateway
            echo "## idle-ws, run $run"
            before_run
            "$BENCH" idle-ws --state-dir "$gw_dir/state" --clients "$CLIENTS"
            stop_gateway
            continue
        fi
        for c in $CONCURRENCY; do
            start_gateway
            echo "## $mode, concurrency $c, run $run"
            before_run
            "$BENCH" "$mode" --state-dir "$gw_dir/state" --concurrency "$c" --requests "$(requests "$mode" "$c")"
            stop_gateway
        done
    done
done
