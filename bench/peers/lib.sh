# Helpers shared by postgres.sh and redis.sh (sourced, not run).
# shellcheck shell=bash

log() { printf '[%s] %s\n' "${PEER_NAME:-peer}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Install Debian packages that are missing (needs root; apt-get only when something is missing).
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing packages (${missing[*]}) and not root to install them"
    log "installing ${missing[*]}"
    # policy-rc.d-less machines would start the distribution's own service; we never use it.
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "${missing[@]}" >/dev/null ||
        { timeout 300 apt-get update -qq >/dev/null &&
          DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "${missing[@]}" >/dev/null; } ||
        die "apt-get install ${missing[*]} failed"
}

# A TCP port nobody listens on, on 127.0.0.1 (small race until the server binds it).
free_port() {
    local port i
    for i in $(seq 1 200); do
        port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
        if [ -z "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]; then
            echo "$port"
            return 0
        fi
        : "$i"
    done
    die "no free port found"
}

# Is this PID alive?
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# TERM, wait up to $2 seconds, then KILL.
stop_pid() {
    local pid=$1 wait_s=${2:-10} i
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 $(( wait_s * 10 ))); do
        alive "$pid" || return 0
        sleep 0.1
        : "$i"
    done
    log "PID $pid ignored SIGTERM for ${wait_s}s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

# Percentiles of a file holding one number per line: prints "p50 p99" (nearest rank).
percentiles() {
    sort -n "$1" | awk '
        { v[NR] = $1 }
        END {
            if (NR == 0) { print "null null"; exit }
            i50 = int(NR * 0.50); if (i50 < NR * 0.50) i50++; if (i50 < 1) i50 = 1
            i99 = int(NR * 0.99); if (i99 < NR * 0.99) i99++; if (i99 < 1) i99 = 1
            print v[i50], v[i99]
        }'
}

# Percent of all CPUs busy over the last second (from /proc/stat), taken just before a run while
# our own server idles: flags runs that shared the machine with something else.
cpu_busy_pct() {
    local a b
    a=$(awk '/^cpu / { print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / { print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
        t = y[2] - x[2]; printf "%.0f\n", (t > 0 ? 100 * (y[1] - x[1]) / t : 0) }'
}

# Positive integer or die.
need_int() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"; }

# Run a client command in the background, stdout to $1 and stderr to $2, and wait for it, so
# that a signal to this script runs its EXIT trap at once (bash defers traps while a foreground
# child runs); the trap stops $client_pid (stop_client). Returns the command's status.
client_pid=""
run_client() {
    local out=$1 err=$2 rc=0
    shift 2
    "$@" >"$out" 2>"$err" &
    client_pid=$!
    wait "$client_pid" || rc=$?
    client_pid=""
    return "$rc"
}
stop_client() { if alive "$client_pid"; then stop_pid "$client_pid" 5; fi; }

# CPU accounting around a run, to see whether something else shared the machine during it.
# cpu_snapshot PID...: prints "busy total own" in clock ticks: busy and total over all CPUs (from
# /proc/stat), own = CPU of the given processes, their live children (e.g. PostgreSQL's backends
# and background workers) and everything they and this script have reaped (cutime, cstime).
cpu_snapshot() {
    local own=0 pid f
    local -a x
    for pid in "$@" $$ $(ps -o pid= --ppid "$1" 2>/dev/null || true); do
        f=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        read -r -a x <<<"$f"
        # after "pid (comm) ": x[11..14] = utime stime cutime cstime
        own=$(( own + x[11] + x[12] + x[13] + x[14] ))
    done
    awk -v own="$own" '/^cpu / { print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9, own }' /proc/stat
}
# cpu_other_pct "BEFORE" "AFTER": percent of the machine's CPU used by others between two
# snapshots (kernel threads such as the journal's count as others: expect a few percent).
cpu_other_pct() {
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[2] - x[2];
        o = (y[1] - x[1]) - (y[3] - x[3]); if (o < 0) o = 0
        printf "%.0f\n", (t > 0 ? 100 * o / t : 0) }'
}
