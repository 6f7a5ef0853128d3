#!/usr/bin/env bash
# Serve polymicro for development (called by `make run`, which builds .venv first).
#
#   1. Unless POLYMICRO_MONGODB_URI is set, start SecantusDB (secantusd-py) on
#      127.0.0.1 with its data in var/db (port 27018, or a free one if taken).
#   2. flask --app polymicro seed-demo --if-empty
#   3. gunicorn on 127.0.0.1:POLYMICRO_PORT (default 8000, the next free port if busy).
#
# Ctrl-C or SIGTERM stops gunicorn and the SecantusDB this script started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv
DB_DIR=var/db
DB_LOG=var/secantus.log
DB_PID_FILE=var/secantus.pid

die() { echo "run.sh: $*" >&2; exit 1; }
say() { echo "run.sh: $*" || true; } # || true: the terminal or a pipe may be gone

[ -x "$VENV/bin/gunicorn" ] || die "$VENV is missing; run 'make run' (it installs it) or 'make venv'"
PATH="$PWD/$VENV/bin:$PATH"
export PATH

# is_running PID: true while the process exists and is not a zombie.
is_running() {
    local stat
    stat=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $stat != Z* ]]
}

# stop_pid PID NAME: SIGTERM, wait up to 30 s, then SIGKILL; reaps it if it is our child.
stop_pid() {
    local pid=$1 name=$2 i
    is_running "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        is_running "$pid" || break
        sleep 0.1
    done
    if is_running "$pid"; then
        say "$name (pid $pid) did not stop within 30 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# free_port PORT: print PORT if it can be bound on 127.0.0.1, else the next one that can.
free_port() {
    python - "$1" <<'EOF'
import socket, sys

start = int(sys.argv[1])
for port in range(start, min(start + 200, 65536)):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(port)
        sys.exit(0)
sys.exit(f"no free TCP port on 127.0.0.1 from {start} to {start + 199}")
EOF
}

# accepts PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

db_pid=""
app_pid=""
cleanup() {
    trap - EXIT INT TERM HUP
    trap '' PIPE
    [ -z "$app_pid" ] || stop_pid "$app_pid" gunicorn
    if [ -n "$db_pid" ]; then
        stop_pid "$db_pid" SecantusDB
        rm -f "$DB_PID_FILE"
    fi
    [ -z "$app_pid$db_pid" ] || say "stopped"
}
trap cleanup EXIT
trap 'exit 0' INT # Ctrl-C is the normal way to stop: not an error
trap 'exit 143' TERM
trap 'exit 129' HUP

if [ -n "${POLYMICRO_MONGODB_URI:-}" ]; then
    say "using POLYMICRO_MONGODB_URI as given; no embedded database is started"
else
    mkdir -p "$DB_DIR"
    # One server per storage directory. The pid file holds "SECANTUS_PID RUN_SH_PID":
    # refuse if that run is still alive, stop its server if only the server is left.
    if [ -f "$DB_PID_FILE" ]; then
        read -r old_pid old_run <"$DB_PID_FILE" || true
        if [[ ${old_run:-} =~ ^[0-9]+$ ]] && is_running "$old_run" &&
            ps -o args= -p "$old_run" | grep -q run.sh; then
            die "another 'make run' (pid $old_run) is using $DB_DIR; stop it first"
        fi
        if [[ ${old_pid:-} =~ ^[0-9]+$ ]] && is_running "$old_pid" &&
            ps -o args= -p "$old_pid" | grep -q secantusd; then
            stop_pid "$old_pid" "stale SecantusDB from an earlier run"
        fi
        rm -f "$DB_PID_FILE"
    fi

    db_port=$(free_port 27018)
    say "starting SecantusDB on 127.0.0.1:$db_port (data in $DB_DIR, log in $DB_LOG)"
    secantusd-py --host 127.0.0.1 --port "$db_port" --storage-path "$DB_DIR" \
        --log-level WARNING >>"$DB_LOG" 2>&1 &
    db_pid=$!
    echo "$db_pid $$" >"$DB_PID_FILE"

    for ((i = 0; i < 300; i++)); do # up to 30 s
        accepts "$db_port" && break
        is_running "$db_pid" || die "SecantusDB exited during start-up; see $DB_LOG"
        sleep 0.1
    done
    accepts "$db_port" || die "SecantusDB did not accept connections on 127.0.0.1:$db_port within 30 s; see $DB_LOG"
    export POLYMICRO_MONGODB_URI="mongodb://127.0.0.1:$db_port/polymicro"
fi

flask --app polymicro seed-demo --if-empty

want_port=${POLYMICRO_PORT:-8000}
port=$(free_port "$want_port")
[ "$port" = "$want_port" ] || say "port $want_port is busy; using $port"

echo
echo "polymicro is serving on http://127.0.0.1:$port  (Swagger UI: http://127.0.0.1:$port/docs) — Ctrl-C stops everything"
echo "probes: /api/health/live, /api/health/ready; Prometheus metrics: http://127.0.0.1:$port/metrics"
# seed-demo keeps the demo admin's generated password in the instance folder.
creds="${POLYMICRO_INSTANCE_PATH:-instance}/demo-admin.txt"
if [ -r "$creds" ]; then
    read -r demo_user demo_password <"$creds"
    echo "log in: POST /api/auth/login with username '$demo_user', password '$demo_password'"
    echo "        (or Authorize in the Swagger UI; from $creds)"
else
    echo "log in: create an admin with: .venv/bin/flask --app polymicro create-admin"
fi
if [ "${POLYMICRO_AUTH_ENABLED:-true}" = false ]; then
    echo "WARNING: POLYMICRO_AUTH_ENABLED=false: no login needed, and none is checked"
fi
echo

gunicorn -c gunicorn.conf.py --bind "127.0.0.1:$port" wsgi:app &
app_pid=$!
# Returns when gunicorn exits, or at once on Ctrl-C/SIGTERM (the traps then clean up).
wait "$app_pid"
