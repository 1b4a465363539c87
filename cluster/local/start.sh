#!/usr/bin/env bash
# Start a real 2-node Ray cluster and a real MLflow tracking server on this machine, all on
# 127.0.0.1:
#   - Ray head:   `ray start --head` (GCS on 127.0.0.1:$KDTUNE_RAY_PORT), own temp dir and ports
#   - Ray node 2: `ray start --address 127.0.0.1:$KDTUNE_RAY_PORT`, own temp dir, own ports and
#                 an extra custom resource {"node2": 1}
#   - MLflow:     `mlflow server` with a SQLite backend store and proxied artifacts
#                 (--serve-artifacts) in $KDTUNE_CLUSTER_DIR/mlflow
# Each runs in its own session (setsid) with a pid file, so stop.sh stops exactly these
# processes and nothing else (it never runs `ray stop`, which kills every Ray on the machine).
# Settings: see common.sh. Afterwards:  source $KDTUNE_CLUSTER_DIR/env.sh
#   kdtune search SPACE --address "$RAY_ADDRESS" --mlflow-uri "$MLFLOW_TRACKING_URI" --storage DIR
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kdtune_defaults

if [ -f "$STATE_FILE" ]; then
    # shellcheck disable=SC1090
    old_pids="$(source "$STATE_FILE" && echo "${RAY_HEAD_PID:-} ${RAY_NODE2_PID:-} ${MLFLOW_PID:-}")"
    for pid in $old_pids; do
        if [ -n "$(session_members "$pid")" ]; then
            log "a cluster from $KDTUNE_CLUSTER_DIR is still running (pid $pid); run stop.sh first"
            exit 1
        fi
    done
fi

# Ray's unix sockets live at $KDTUNE_RAY_TMP/node2/session_<date>_<pid>/sockets/plasma_store,
# and a socket path has at most 107 bytes.
if [ "${#KDTUNE_RAY_TMP}" -gt 36 ]; then
    log "KDTUNE_RAY_TMP=$KDTUNE_RAY_TMP is too long for Ray's unix sockets; use a path of at most 36 characters"
    exit 1
fi
if ! command -v setsid > /dev/null; then
    log "setsid (util-linux) is needed"
    exit 1
fi
PY="$KDTUNE_PYTHON"
LOOPBACK="$KDTUNE_LOCAL_HERE/ray_loopback.py"
"$PY" -c "import ray, mlflow" 2>/dev/null || {
    log "$PY cannot import ray and mlflow; set KDTUNE_PYTHON to a Python that has kdtune installed"
    exit 1
}

# -- ports ----------------------------------------------------------------------------------
# Every Ray port is explicit so that the two nodes (and any other Ray on this machine) never
# collide: 13 free single ports plus a range of 2 x KDTUNE_WORKER_PORTS free consecutive
# ports for the workers of both nodes, none inside another or equal to the fixed ports.
# (SO_REUSEADDR as the servers set it: a port just freed by stop.sh is free)
for port in "$KDTUNE_RAY_PORT" "$KDTUNE_MLFLOW_PORT"; do
    if ! "$PY" -c "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', int(sys.argv[1])))" "$port" 2>/dev/null; then
        log "port $port on 127.0.0.1 is in use (set KDTUNE_RAY_PORT / KDTUNE_MLFLOW_PORT)"
        exit 1
    fi
done
WP="$KDTUNE_WORKER_PORTS"
PORT_LIST="$("$PY" - 13 $((2 * WP)) "${KDTUNE_MIN_WORKER_PORT:-}" "$KDTUNE_RAY_PORT" \
    "$KDTUNE_MLFLOW_PORT" "${KDTUNE_DASHBOARD_PORT:-0}" <<'EOF'
import random, socket, sys

n, width = int(sys.argv[1]), int(sys.argv[2])
given_base = int(sys.argv[3]) if sys.argv[3] else None
taken = {int(p) for p in sys.argv[4:]}

def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True

if given_base is not None:
    base = given_base
else:
    for _ in range(500):
        base = random.randrange(20000, 60000 - width)
        if not taken & set(range(base, base + width)) and all(
                free(p) for p in range(base, base + width)):
            break
    else:
        sys.exit("no free range of worker ports")
taken |= set(range(base, base + width))
singles, socks = [], []
while len(singles) < n:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    socks.append(s)  # held until the end, so the OS never hands out the same port twice
    if port not in taken:
        taken.add(port)
        singles.append(port)
for s in socks:
    s.close()
print(base, *singles)
EOF
)" || { log "could not find free ports"; exit 1; }
read -r MIN_WP HEAD_NM HEAD_OM HEAD_METRICS HEAD_AGENT HEAD_AGENT_GRPC HEAD_RTENV DASH_PORT \
        N2_NM N2_OM N2_METRICS N2_AGENT N2_AGENT_GRPC N2_RTENV <<< "$PORT_LIST"
DASH_PORT="${KDTUNE_DASHBOARD_PORT:-$DASH_PORT}"

# -- state ----------------------------------------------------------------------------------
mkdir -p "$LOG_DIR" "$KDTUNE_CLUSTER_DIR/mlflow/artifacts" "$KDTUNE_RAY_TMP"
TOKEN_FILE="$KDTUNE_CLUSTER_DIR/ray-auth-token"
if [ ! -s "$TOKEN_FILE" ]; then
    (umask 077 && "$PY" -c "import secrets; print(secrets.token_hex(32))" > "$TOKEN_FILE")
fi
RAY_ADDRESS_VALUE="127.0.0.1:$KDTUNE_RAY_PORT"
MLFLOW_URI="http://127.0.0.1:$KDTUNE_MLFLOW_PORT"
if [ "$KDTUNE_MLFLOW_HOST" != "127.0.0.1" ] && [ "$KDTUNE_MLFLOW_HOST" != "0.0.0.0" ]; then
    MLFLOW_URI="http://$KDTUNE_MLFLOW_HOST:$KDTUNE_MLFLOW_PORT"
fi

write_state() {
    {
        printf 'KDTUNE_CLUSTER_DIR=%q\n' "$KDTUNE_CLUSTER_DIR"
        printf 'KDTUNE_RAY_TMP=%q\n' "$KDTUNE_RAY_TMP"
        printf 'RAY_ADDRESS_VALUE=%q\n' "$RAY_ADDRESS_VALUE"
        printf 'MLFLOW_URI=%q\n' "$MLFLOW_URI"
        printf 'RAY_HEAD_PID=%q\n' "${RAY_HEAD_PID:-}"
        printf 'RAY_NODE2_PID=%q\n' "${RAY_NODE2_PID:-}"
        printf 'MLFLOW_PID=%q\n' "${MLFLOW_PID:-}"
        printf 'PORTS=%q\n' "$KDTUNE_RAY_PORT $KDTUNE_MLFLOW_PORT $HEAD_NM $HEAD_OM $N2_NM $N2_OM $HEAD_RTENV $N2_RTENV $DASH_PORT"
    } > "$STATE_FILE"
}

fail() {
    log "$1"
    for f in "$LOG_DIR"/*.log; do
        [ -f "$f" ] && { log "--- last lines of $f"; tail -n 25 "$f" >&2; }
    done
    log "stopping what was started"
    KDTUNE_CLUSTER_DIR="$KDTUNE_CLUSTER_DIR" "$KDTUNE_LOCAL_HERE/stop.sh" || true
    exit 1
}

# Every Ray process of this cluster gets these: loopback IPs, token authentication with our
# own token file (not ~/.ray/auth_token), no usage reporting.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$TOKEN_FILE"
export RAY_USAGE_STATS_ENABLED=0
unset RAY_AUTH_TOKEN RAY_ADDRESS

# -- MLflow server (started first: it is the slowest to come up) -----------------------------
log "starting MLflow server on $KDTUNE_MLFLOW_HOST:$KDTUNE_MLFLOW_PORT (store $KDTUNE_CLUSTER_DIR/mlflow)"
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$PY" -m mlflow server \
    --host "$KDTUNE_MLFLOW_HOST" --port "$KDTUNE_MLFLOW_PORT" --workers "$KDTUNE_MLFLOW_WORKERS" \
    --backend-store-uri "sqlite:///$KDTUNE_CLUSTER_DIR/mlflow/mlflow.db" \
    --artifacts-destination "$KDTUNE_CLUSTER_DIR/mlflow/artifacts" --serve-artifacts \
    < /dev/null > "$LOG_DIR/mlflow.log" 2>&1 &
MLFLOW_PID=$!
write_state

# -- Ray: head, then the second node (KDTUNE_SERVICES=mlflow: none) --------------------------
ray_wanted() { case " $KDTUNE_SERVICES " in *" ray "*) return 0 ;; *) return 1 ;; esac; }
if ray_wanted; then
# wait_ray NAME PID LOG: until `ray start --block` says the node runs (or it died).
wait_ray() {
    local name="$1" pid="$2" logfile="$3" i
    for i in $(seq 1 $((KDTUNE_START_TIMEOUT * 2))); do
        grep -q "Ray runtime started" "$logfile" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || fail "Ray $name exited during start (see $logfile)"
        sleep 0.5
    done
    fail "Ray $name did not start within ${KDTUNE_START_TIMEOUT}s (see $logfile)"
}

OBJ_BYTES=$((KDTUNE_OBJECT_STORE_MB * 1024 * 1024))
DASH_ARGS=(--include-dashboard false)
if [ "$KDTUNE_DASHBOARD" = "1" ]; then
    DASH_ARGS=(--include-dashboard true --dashboard-host 127.0.0.1)
fi
log "starting Ray head on $RAY_ADDRESS_VALUE (temp dir $KDTUNE_RAY_TMP/head)"
setsid "$PY" "$LOOPBACK" start --head --block --disable-usage-stats \
    --node-ip-address 127.0.0.1 --port "$KDTUNE_RAY_PORT" \
    --num-cpus "$KDTUNE_HEAD_CPUS" --num-gpus "$KDTUNE_HEAD_GPUS" \
    --resources '{"head": 1}' --object-store-memory "$OBJ_BYTES" \
    --temp-dir "$KDTUNE_RAY_TMP/head" "${DASH_ARGS[@]}" --dashboard-port "$DASH_PORT" \
    --node-manager-port "$HEAD_NM" --object-manager-port "$HEAD_OM" \
    --metrics-export-port "$HEAD_METRICS" --dashboard-agent-listen-port "$HEAD_AGENT" \
    --dashboard-agent-grpc-port "$HEAD_AGENT_GRPC" --runtime-env-agent-port "$HEAD_RTENV" \
    --min-worker-port "$MIN_WP" --max-worker-port $((MIN_WP + WP - 1)) \
    < /dev/null > "$LOG_DIR/ray-head.log" 2>&1 &
RAY_HEAD_PID=$!
write_state
wait_ray head "$RAY_HEAD_PID" "$LOG_DIR/ray-head.log"

log "starting Ray node 2 (temp dir $KDTUNE_RAY_TMP/node2, resource node2)"
setsid "$PY" "$LOOPBACK" start --block --disable-usage-stats \
    --address "$RAY_ADDRESS_VALUE" \
    --num-cpus "$KDTUNE_NODE2_CPUS" --num-gpus "$KDTUNE_NODE2_GPUS" \
    --resources '{"node2": 1}' --object-store-memory "$OBJ_BYTES" \
    --temp-dir "$KDTUNE_RAY_TMP/node2" \
    --node-manager-port "$N2_NM" --object-manager-port "$N2_OM" \
    --metrics-export-port "$N2_METRICS" --dashboard-agent-listen-port "$N2_AGENT" \
    --dashboard-agent-grpc-port "$N2_AGENT_GRPC" --runtime-env-agent-port "$N2_RTENV" \
    --min-worker-port $((MIN_WP + WP)) --max-worker-port $((MIN_WP + 2 * WP - 1)) \
    < /dev/null > "$LOG_DIR/ray-node2.log" 2>&1 &
RAY_NODE2_PID=$!
write_state
wait_ray "node 2" "$RAY_NODE2_PID" "$LOG_DIR/ray-node2.log"

"$PY" "$LOOPBACK" nodes --address "$RAY_ADDRESS_VALUE" --expect 2 --timeout 60 \
    > "$LOG_DIR/nodes.txt" 2>&1 || fail "the Ray cluster does not show 2 alive nodes"
sed 's/^/[kdtune-cluster]   /' "$LOG_DIR/nodes.txt" >&2
fi

# -- wait for MLflow -----------------------------------------------------------------------
"$PY" - "$MLFLOW_URI/health" "$MLFLOW_PID" "$KDTUNE_START_TIMEOUT" <<'EOF' || fail "MLflow server did not answer $MLFLOW_URI/health"
import os, sys, time, urllib.request
url, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("mlflow server exited")
    time.sleep(0.5)
sys.exit("timeout")
EOF

# -- what users and stop.sh need -------------------------------------------------------------
{
    echo "# written by cluster/local/start.sh; source it to use the local cluster"
    printf 'export RAY_ADDRESS=%q\n' "$RAY_ADDRESS_VALUE"
    printf 'export MLFLOW_TRACKING_URI=%q\n' "$MLFLOW_URI"
    echo "# Ray keeps 127.0.0.1 as the node IP only with this (see cluster/local/ray_loopback.py)"
    echo "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
    echo "export RAY_AUTH_MODE=token"
    printf 'export RAY_AUTH_TOKEN_PATH=%q\n' "$TOKEN_FILE"
} > "$KDTUNE_CLUSTER_DIR/env.sh"

if ray_wanted; then
    log "ready: Ray $RAY_ADDRESS_VALUE (2 nodes), MLflow $MLFLOW_URI"
else
    log "ready: MLflow $MLFLOW_URI (no Ray: KDTUNE_SERVICES=$KDTUNE_SERVICES)"
fi
log "use it:  source $KDTUNE_CLUSTER_DIR/env.sh"
log "         kdtune search SPACE --address \$RAY_ADDRESS --mlflow-uri \$MLFLOW_TRACKING_URI --storage DIR"
log "stop it: KDTUNE_CLUSTER_DIR=$KDTUNE_CLUSTER_DIR $KDTUNE_LOCAL_HERE/stop.sh"
