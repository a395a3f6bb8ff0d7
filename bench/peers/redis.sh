#!/usr/bin/env bash
# Redis peer benchmark: the walletd transfer workload as one Lua script (check funds, debit,
# credit, XADD a ledger entry; atomic) driven by redis-benchmark with EVALSHA on random account
# keys, against a throwaway loopback redis-server with appendfsync always. Prints one JSON line
# per mode on stdout; progress goes to stderr. See README.md in this directory.
#
# Environment (defaults): ACCOUNTS=100000 FUNDING=1000000 AMOUNT=50 DURATION=10
#   REDIS_CLIENTS=50 PIPELINE=16 REDIS_MODES="unpipelined pipelined"
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PEER_NAME=redis
# shellcheck source=lib.sh
. "$here/lib.sh"

ACCOUNTS=${ACCOUNTS:-100000}
FUNDING=${FUNDING:-1000000}
AMOUNT=${AMOUNT:-50}
DURATION=${DURATION:-10}
REDIS_CLIENTS=${REDIS_CLIENTS:-50}
PIPELINE=${PIPELINE:-16}
REDIS_MODES=${REDIS_MODES:-unpipelined pipelined}
for v in ACCOUNTS FUNDING AMOUNT DURATION REDIS_CLIENTS PIPELINE; do need_int "$v" "${!v}"; done
[ "$ACCOUNTS" -ge 2 ] || die "ACCOUNTS must be at least 2"

ensure_packages redis-server redis-tools iproute2
command -v redis-server >/dev/null || die "redis-server not found"
version=$(redis-server --version | sed -n 's/.* v=\([0-9.]*\).*/\1/p')

tmp=$(mktemp -d /tmp/walletd-peer-redis.XXXXXX)
server_pid=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_client
    if alive "$server_pid"; then
        log "stopping server PID $server_pid"
        stop_pid "$server_pid" 15
    fi
    if [ "$rc" -ne 0 ] && [ -f "$tmp/server.log" ]; then
        log "server log tail:"; tail -n 20 "$tmp/server.log" >&2 || true
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port=$(free_port)
log "starting redis-server $version on 127.0.0.1:$port (appendonly yes, appendfsync always)"
redis-server --bind 127.0.0.1 --port "$port" --dir "$tmp" --daemonize no \
    --appendonly yes --appendfsync always --save '' --logfile "$tmp/server.log" \
    --maxclients $(( REDIS_CLIENTS + 100 )) >/dev/null 2>&1 &
server_pid=$!
log "server PID $server_pid"

cli() { timeout 120 redis-cli -h 127.0.0.1 -p "$port" "$@"; }
for _ in $(seq 1 100); do
    [ "$(cli ping 2>/dev/null || true)" = PONG ] && break
    alive "$server_pid" || die "redis-server exited at start-up"
    sleep 0.1
done
[ "$(cli ping)" = PONG ] || die "redis-server did not answer"
[ "$(cli config get appendfsync | tail -n 1)" = always ] || die "appendfsync is not 'always'"

# KEYS: from, to, ledger stream; ARGV: amount. All or nothing (a script is atomic in Redis).
# Answers the XADD entry id, or a status reply naming the refusal: business refusals are result
# codes (as walletd answers per transfer), not errors, because redis-benchmark exits on the
# first error reply (so "insufficient funds" and the rare random from == to don't end the run).
# Refusals are counted in KEYS[3]..":refused" (the run's transfers = ledger entries + refusals).
transfer_lua='
local function refuse(code)
    redis.call("INCR", KEYS[3] .. ":refused")
    return redis.status_reply(code)
end
if KEYS[1] == KEYS[2] then return refuse("SAME_ACCOUNT") end
local amount = tonumber(ARGV[1])
if not amount or amount <= 0 then return redis.error_reply("ERR bad amount") end
local from = tonumber(redis.call("GET", KEYS[1]))
if not from or redis.call("EXISTS", KEYS[2]) == 0 then return refuse("NO_SUCH_ACCOUNT") end
if from < amount then return refuse("INSUFFICIENT_FUNDS") end
redis.call("DECRBY", KEYS[1], amount)
redis.call("INCRBY", KEYS[2], amount)
return redis.call("XADD", KEYS[3], "*", "from", KEYS[1], "to", KEYS[2], "amount", ARGV[1])'
sha=$(cli script load "$transfer_lua")
[[ "$sha" =~ ^[0-9a-f]{40}$ ]] || die "SCRIPT LOAD answered '$sha'"

# redis-benchmark expands __rand_int__ to 12 digits, independently at each occurrence.
log "funding $ACCOUNTS accounts with $FUNDING each"
cli eval 'for i = 0, tonumber(ARGV[1]) - 1 do
              redis.call("SET", string.format("acct:%012d", i), ARGV[2]) end
          return redis.call("DBSIZE")' 0 "$ACCOUNTS" "$FUNDING" >/dev/null
sum_lua='local s = 0
for i = 0, tonumber(ARGV[1]) - 1 do s = s + tonumber(redis.call("GET", string.format("acct:%012d", i))) end
return tostring(s)'
# Sanity: one transfer through the script, and the from == to refusal.
[[ "$(cli evalsha "$sha" 3 acct:000000000000 acct:000000000001 ledger "$AMOUNT")" =~ ^[0-9]+-[0-9]+$ ]] ||
    die "transfer script did not append to the ledger"
[ "$(cli evalsha "$sha" 3 acct:000000000001 acct:000000000001 ledger 1)" = SAME_ACCOUNT ] ||
    die "transfer script did not refuse from == to"

# Run redis-benchmark; print its CSV data line ("EVALSHA ...",rps,avg,min,p50,p95,p99,max).
bench() { # requests pipeline
    run_client "$tmp/bench.out" "$tmp/bench.err" \
        timeout $(( DURATION * 3 + 60 )) redis-benchmark -h 127.0.0.1 -p "$port" \
        -c "$REDIS_CLIENTS" -n "$1" -P "$2" -r "$ACCOUNTS" --csv \
        EVALSHA "$sha" 3 acct:__rand_int__ acct:__rand_int__ ledger "$AMOUNT" ||
        { cat "$tmp/bench.out" "$tmp/bench.err" >&2; die "redis-benchmark failed"; }
    grep -v '^"test"' "$tmp/bench.out" | tail -n 1 | tr -d '"'
}

for mode in $REDIS_MODES; do
    case $mode in
        unpipelined) pipeline=1; label="unpipelined" ;;
        pipelined) pipeline=$PIPELINE; label="pipelined $PIPELINE" ;;
        *) die "unknown mode '$mode' (unpipelined, pipelined)" ;;
    esac
    # redis-benchmark stops after -n requests, not after a time: calibrate with a short run
    # (also a warm-up), then size -n for DURATION seconds.
    bench $(( 2000 * REDIS_CLIENTS / 10 + 2000 * pipeline )) "$pipeline" >"$tmp/calib"
    calib=$(cat "$tmp/calib")
    rate=$(cut -d, -f2 <<<"$calib")
    [[ "$rate" =~ ^[0-9.]+$ ]] || { cat "$tmp/bench.err" >&2; die "calibration failed: '$calib'"; }
    requests=$(awk -v r="$rate" -v d="$DURATION" 'BEGIN { printf "%d", r * d }')
    xlen_before=$(cli xlen ledger)
    refused_before=$(cli get ledger:refused); refused_before=${refused_before:-0}
    busy=$(cpu_busy_pct)
    snap_before=$(cpu_snapshot "$server_pid")
    log "mode $label: redis-benchmark -c $REDIS_CLIENTS -P $pipeline -n $requests (~${DURATION}s at ${rate}/s)"
    started=$(date +%s.%N)
    bench "$requests" "$pipeline" >"$tmp/line"
    line=$(cat "$tmp/line")
    other=$(cpu_other_pct "$snap_before" "$(cpu_snapshot "$server_pid")")
    seconds=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }')
    IFS=, read -r _ rps avg _ p50 _ p99 _ <<<"$line"
    [[ "$rps" =~ ^[0-9.]+$ ]] || { cat "$tmp/bench.err" >&2; die "could not parse '$line'"; }
    ledger_entries=$(( $(cli xlen ledger) - xlen_before ))
    refused=$(cli get ledger:refused); refused=$(( ${refused:-0} - refused_before ))
    total=$(cli eval "$sum_lua" 0 "$ACCOUNTS")
    expected=$(awk -v a="$ACCOUNTS" -v f="$FUNDING" 'BEGIN { printf "%.0f", a * f }')
    [ "$total" = "$expected" ] && conserved=true || conserved=false
    printf '{"peer":"redis","version":"%s","mode":"%s","transfers_per_sec":%.1f,"latency_ms":{"avg":%s,"p50":%s,"p99":%s},"clients":%s,"pipeline":%s,"transfers":%s,"seconds":%s,"ledger_entries":%s,"refused":%s,"conserved":%s,"cpu_busy_before_pct":%s,"cpu_other_during_pct":%s,"durable":"appendfsync always"}\n' \
        "$version" "$label" "$rps" "$avg" "$p50" "$p99" "$REDIS_CLIENTS" "$pipeline" \
        $(( ledger_entries + refused )) "$seconds" "$ledger_entries" "$refused" "$conserved" "$busy" "$other"
done
