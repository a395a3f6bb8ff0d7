#!/usr/bin/env bash
# Run the peer benchmarks (PostgreSQL, Redis) and print them in one table, next to walletd's
# figures when given wallet-bench JSON summaries (wallet-bench ... --json FILE).
#
# usage: compare.sh [--no-postgres] [--no-redis] [--save FILE] [--load FILE] [WALLETD_JSON...]
#   --no-postgres / --no-redis   skip that peer
#   --save FILE                  also write the peers' JSON lines to FILE
#   --load FILE                  take the peers' JSON lines from FILE (from --save) instead of
#                                running them (then --no-* are implied)
#   WALLETD_JSON                 wallet-bench summaries; the first one is the reference of the
#                                ratio column (walletd transfers/s divided by the row's)
# Environment: passed on to postgres.sh and redis.sh (DURATION, ACCOUNTS, CLIENTS, ...).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PEER_NAME=compare
# shellcheck source=lib.sh
. "$here/lib.sh"

usage() { sed -n '5,13s/^# \{0,1\}//p' "$0" >&2; exit 2; }
run_pg=1 run_redis=1 save="" load="" walletd=()
while [ $# -gt 0 ]; do
    case $1 in
        --no-postgres) run_pg=0 ;;
        --no-redis) run_redis=0 ;;
        --save) [ $# -ge 2 ] || usage; save=$2; shift ;;
        --load) [ $# -ge 2 ] || usage; load=$2; shift ;;
        -h|--help) usage ;;
        -*) log "unknown option $1"; usage ;;
        *) [ -r "$1" ] || die "cannot read $1"; walletd+=("$1") ;;
    esac
    shift
done

ensure_packages jq

lines=$(mktemp /tmp/walletd-peer-compare.XXXXXX)
trap 'rm -f "$lines"' EXIT
failed=0
if [ -n "$load" ]; then
    [ -r "$load" ] || die "cannot read $load"
    cp "$load" "$lines"
else
    # Each script stops its own server (by PID, in its EXIT trap) and has its own time bounds;
    # a failing peer is reported and the others still run.
    if [ "$run_pg" = 1 ]; then
        "$here/postgres.sh" >>"$lines" || { log "postgres.sh failed"; failed=1; }
    fi
    if [ "$run_redis" = 1 ]; then
        "$here/redis.sh" >>"$lines" || { log "redis.sh failed"; failed=1; }
    fi
    [ -z "$save" ] || cp "$lines" "$save"
fi

# One tab-separated row per system/mode: system, mode, durable ack, transfers/s, p50, p99, ratio.
# x.y below 10, whole numbers above.
ratio_def='def ratio: (if . >= 10 then round else (. * 10 | round / 10) end | tostring) + "x";'
ref=""
if [ "${#walletd[@]}" -gt 0 ]; then
    ref=$(jq -r '.transfers_per_sec' "${walletd[0]}")
fi
{
    printf 'system\tmode\tdurable ack\ttransfers/s\tp50 ms\tp99 ms\twalletd/peer\n'
    for f in "${walletd[@]}"; do
        jq -r --arg ref "$ref" "$ratio_def"'
            def ms: if . == null then "-" else (. / 1000 * 1000 | round / 1000 | tostring) end;
            [ "walletd",
              (if .mode == "engine" then "engine (in process, no network)"
               elif .mode == "run" then "run (client over TCP)" else .mode end)
                + (if .config.batch then ", batch \(.config.batch)" else "" end)
                + (if .config.connections then ", \(.config.connections) conn" else "" end)
                + (if (.config.pipeline // .config.inflight) then
                     ", \(.config.pipeline // .config.inflight) batches in flight"
                     + (if .config.connections then "/conn" elif .config.partitions then "/partition"
                        else "" end) else "" end)
                + ", per-batch latency",
              "fsync before ack (group commit)",
              (.transfers_per_sec | round | tostring),
              (.latency_us.p50 | ms), (.latency_us.p99 | ms),
              (($ref | tonumber) / .transfers_per_sec | ratio)
            ] | @tsv' "$f"
    done
    jq -r --arg ref "$ref" "$ratio_def"'
        def busy: (.cpu_other_during_pct // .cpu_busy_before_pct // 0) > 10;
        def num: if . == null then "-" else (. * 1000 | round / 1000 | tostring) end;
        [ .peer + " " + .version,
          .mode + ", \(.clients) clients",
          .durable,
          (.transfers_per_sec | round | tostring)
            + (if busy then " *" else "" end),
          (.latency_ms.p50 | num), (.latency_ms.p99 | num),
          (if $ref == "" then "-" else ($ref | tonumber) / .transfers_per_sec | ratio end)
        ] | @tsv' "$lines"
} | awk -F'\t' '
    { for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } n = NR; nf = NF }
    END {
        for (r = 1; r <= n; r++) {
            line = ""
            for (i = 1; i <= nf; i++) {
                # text columns left-aligned, figures right-aligned
                fmt = (i <= 3) ? "%-" w[i] "s" : "%" w[i] "s"
                line = line (i > 1 ? " | " : "") sprintf(fmt, cell[r, i])
            }
            print line
            if (r == 1) { sep = ""; for (i = 1; i <= nf; i++) { s = sprintf("%" w[i] "s", ""); gsub(/ /, "-", s); sep = sep (i > 1 ? "-+-" : "") s } print sep }
        }
    }'
if [ "${#walletd[@]}" -gt 0 ]; then
    echo
    echo "walletd latency is per batch of transfers (ready to send -> durable reply); the peers' is per"
    echo "transfer (pgbench: per transaction; redis-benchmark: per request, per pipeline slot)."
fi
if jq -e 'select((.cpu_other_during_pct // .cpu_busy_before_pct // 0) > 10)' "$lines" >/dev/null 2>&1
then
    echo
    echo "* other processes used more than 10% of the machine's CPU during this run: noisy figure."
fi
if grep -q '"conserved":false' "$lines"; then
    log "a peer run broke conservation of balances: see the JSON lines"
    failed=1
fi
exit "$failed"
