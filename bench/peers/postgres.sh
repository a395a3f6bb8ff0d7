#!/usr/bin/env bash
# PostgreSQL peer benchmark: the walletd transfer workload (debit if funded, credit, ledger row)
# through pgbench on a throwaway loopback cluster with durable commits. Prints one JSON line per
# mode on stdout; progress goes to stderr. See README.md in this directory.
#
# Environment (defaults): ACCOUNTS=100000 FUNDING=1000000 DURATION=10 CLIENTS=8
#   THREADS=<cores> PG_MODES="interactive single" MAX_TRIES=10
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PEER_NAME=postgres
# shellcheck source=lib.sh
. "$here/lib.sh"

ACCOUNTS=${ACCOUNTS:-100000}
FUNDING=${FUNDING:-1000000}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-$(nproc)}
PG_MODES=${PG_MODES:-interactive single}
MAX_TRIES=${MAX_TRIES:-10}
for v in ACCOUNTS FUNDING DURATION CLIENTS THREADS MAX_TRIES; do need_int "$v" "${!v}"; done
[ "$ACCOUNTS" -ge 2 ] || die "ACCOUNTS must be at least 2"
[ "$THREADS" -le "$CLIENTS" ] || THREADS=$CLIENTS

ensure_packages postgresql iproute2
bindir=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -type f -path '*/bin/initdb' -printf '%h\n' 2>/dev/null |
    sort -V | tail -n 1)
if [ -z "$bindir" ] || [ ! -x "$bindir/pg_ctl" ]; then
    die "no initdb/pg_ctl under /usr/lib/postgresql/*/bin"
fi
pgbench=$bindir/pgbench
[ -x "$pgbench" ] || pgbench=$(command -v pgbench) || die "pgbench not found"
psql=$bindir/psql
[ -x "$psql" ] || psql=$(command -v psql) || die "psql not found"

# The server refuses to run as root: run it as the package's postgres user then.
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no postgres user"
    as_server() { runuser -u postgres -- "$@"; }
else
    as_server() { "$@"; }
fi

tmp=$(mktemp -d /tmp/walletd-peer-pg.XXXXXX)
data=$tmp/data
server_pid=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_client
    if [ -f "$data/postmaster.pid" ]; then
        server_pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null || true)
    fi
    if alive "$server_pid"; then
        log "stopping server PID $server_pid"
        as_server timeout 30 "$bindir/pg_ctl" -D "$data" -m fast -w -t 20 stop >/dev/null 2>&1 || true
        stop_pid "$server_pid" 10
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

[ "$(id -u)" -eq 0 ] && chown postgres: "$tmp"
port=$(free_port)
log "initdb in $data"
as_server timeout 120 "$bindir/initdb" -D "$data" -U bench --auth=trust -E UTF8 --locale=C -N >"$tmp/initdb.log" 2>&1 ||
    { cat "$tmp/initdb.log" >&2; die "initdb failed"; }
cat >>"$data/postgresql.conf" <<CONF
# walletd peer benchmark
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$tmp'
max_connections = $(( CLIENTS + 20 ))
fsync = on
synchronous_commit = on
full_page_writes = on
CONF
log "starting postgres on 127.0.0.1:$port"
as_server timeout 90 "$bindir/pg_ctl" -D "$data" -l "$tmp/server.log" -w -t 60 start >/dev/null ||
    die "pg_ctl start failed"
server_pid=$(head -n 1 "$data/postmaster.pid")
log "server PID $server_pid"

sql() { timeout 300 "$psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U bench -d postgres -At "$@"; }

version=$(sql -c "show server_version" | cut -d' ' -f1)
log "PostgreSQL $version: creating $ACCOUNTS accounts funded with $FUNDING each"
sql <<SQL
CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
CREATE TABLE ledger (id bigserial PRIMARY KEY, from_id bigint, to_id bigint, amount bigint,
                     created_at timestamptz DEFAULT now());
INSERT INTO accounts SELECT g, $FUNDING FROM generate_series(1, $ACCOUNTS) g;
VACUUM ANALYZE accounts;
CHECKPOINT;
SQL

# Two distinct random accounts and an amount of 1..100, as wallet-bench draws them.
draw='\set from random(1, :accounts)
\set to random(1, :accounts - 1)
\if :to >= :from
\set to :to + 1
\endif
\set amount random(1, 100)'

# Both forms debit only if the source has the funds and the destination exists (as walletd
# checks), and credit and write the ledger row only if the debit happened.
# interactive: one transaction of several round trips, as an application would write it.
cat >"$tmp/interactive.sql" <<SQL
$draw
BEGIN;
WITH d AS (UPDATE accounts SET balance = balance - :amount WHERE id = :from AND balance >= :amount AND EXISTS (SELECT 1 FROM accounts WHERE id = :to) RETURNING 1) SELECT count(*) AS debited FROM d \gset
\if :debited
UPDATE accounts SET balance = balance + :amount WHERE id = :to;
INSERT INTO ledger (from_id, to_id, amount) VALUES (:from, :to, :amount);
\endif
END;
SQL

# single: the same transfer as one statement (its own transaction): one round trip.
cat >"$tmp/single.sql" <<SQL
$draw
WITH d AS (UPDATE accounts SET balance = balance - :amount WHERE id = :from AND balance >= :amount AND EXISTS (SELECT 1 FROM accounts WHERE id = :to) RETURNING id), c AS (UPDATE accounts SET balance = balance + :amount WHERE id = :to AND EXISTS (SELECT 1 FROM d) RETURNING id) INSERT INTO ledger (from_id, to_id, amount) SELECT :from, :to, :amount FROM c;
SQL

# Pull "NAME = value" / "NAME: value" numbers out of pgbench's report.
field() { sed -n "s/^$1[ =:]*\([0-9.]*\).*/\1/p" "$2" | head -n 1; }

for mode in $PG_MODES; do
    case $mode in
        interactive) mode_label="interactive txn (5 round trips)" ;;
        single) mode_label="single statement (1 round trip)" ;;
        *) die "unknown mode '$mode' (interactive, single)" ;;
    esac
    sql -c "CHECKPOINT" >/dev/null
    ledger_before=$(sql -c "SELECT count(*) FROM ledger")
    syncs_before=$(sql -c "SELECT wal_sync FROM pg_stat_wal")
    busy=$(cpu_busy_pct)
    snap_before=$(cpu_snapshot "$server_pid")
    log "mode $mode: pgbench -M prepared -c $CLIENTS -j $THREADS -T $DURATION"
    rm -f "$tmp"/log."$mode"*
    run_client "$tmp/pgbench.$mode.out" "$tmp/pgbench.$mode.err" \
        timeout $(( DURATION + 120 )) "$pgbench" -n -h 127.0.0.1 -p "$port" -U bench \
        -M prepared -c "$CLIENTS" -j "$THREADS" -T "$DURATION" --max-tries "$MAX_TRIES" \
        -D accounts="$ACCOUNTS" -f "$tmp/$mode.sql" -l --log-prefix="$tmp/log.$mode" postgres ||
        { cat "$tmp/pgbench.$mode.out" "$tmp/pgbench.$mode.err" >&2; die "pgbench failed"; }
    sleep 0.2 # let the backends exit and be reaped
    other=$(cpu_other_pct "$snap_before" "$(cpu_snapshot "$server_pid")")
    out=$tmp/pgbench.$mode.out
    tps=$(field 'tps' "$out")
    avg=$(field 'latency average' "$out")
    processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
    failed=$(field 'number of failed transactions' "$out"); failed=${failed:-0}
    retried=$(field 'number of transactions retried' "$out"); retried=${retried:-0}
    if [ -z "$tps" ] || [ -z "$avg" ]; then cat "$out" >&2; die "could not parse pgbench output"; fi
    # Per-transaction log: client txno latency_us script epoch epoch_us [retries]; "failed" otherwise.
    cat "$tmp"/log."$mode"* | awk '$3 ~ /^[0-9]+$/ { printf "%.3f\n", $3 / 1000 }' >"$tmp/lat.$mode"
    read -r p50 p99 < <(percentiles "$tmp/lat.$mode")
    ledger_rows=$(( $(sql -c "SELECT count(*) FROM ledger") - ledger_before ))
    wal_syncs=$(( $(sql -c "SELECT wal_sync FROM pg_stat_wal") - syncs_before ))
    conserved=$(sql -c "SELECT sum(balance) = $ACCOUNTS::numeric * $FUNDING AND min(balance) >= 0 FROM accounts")
    [ "$conserved" = t ] && conserved=true || conserved=false
    printf '{"peer":"postgresql","version":"%s","mode":"%s","transfers_per_sec":%.1f,"latency_ms":{"avg":%s,"p50":%s,"p99":%s},"clients":%s,"threads":%s,"duration_s":%s,"accounts":%s,"transfers":%s,"ledger_rows":%s,"failed":%s,"retried":%s,"wal_syncs":%s,"conserved":%s,"cpu_busy_before_pct":%s,"cpu_other_during_pct":%s,"durable":"synchronous_commit=on, fsync=on"}\n' \
        "$version" "$mode_label" "$tps" "$avg" "$p50" "$p99" "$CLIENTS" "$THREADS" "$DURATION" \
        "$ACCOUNTS" "${processed:-null}" "$ledger_rows" "$failed" "$retried" "$wal_syncs" "$conserved" "$busy" "$other"
done
