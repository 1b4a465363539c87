# Shared by start.sh and stop.sh (sourced, not run). Linux only: uses setsid and ps.
#
# Settings (environment variables, all optional):
#   KDTUNE_CLUSTER_DIR     state, logs and MLflow data           (default ./kdtune-cluster)
#   KDTUNE_RAY_TMP         Ray's temp dirs; keep it short: Ray puts unix sockets there
#                          (default /tmp/kdtune-ray-$KDTUNE_RAY_PORT)
#   KDTUNE_RAY_PORT        Ray head (GCS) port                    (default 6380)
#   KDTUNE_MLFLOW_PORT     MLflow server port                     (default 5000)
#   KDTUNE_MLFLOW_HOST     MLflow bind address                    (default 127.0.0.1)
#   KDTUNE_MLFLOW_WORKERS  MLflow server worker processes         (default 1)
#   KDTUNE_HEAD_CPUS / KDTUNE_NODE2_CPUS   CPUs Ray may use per node   (default 1 / 1)
#   KDTUNE_HEAD_GPUS / KDTUNE_NODE2_GPUS   GPUs Ray may use per node   (default 0 / 0)
#   KDTUNE_OBJECT_STORE_MB object store per node, MiB             (default 256)
#   KDTUNE_MIN_WORKER_PORT first of 2 x KDTUNE_WORKER_PORTS worker ports (default: a free range)
#   KDTUNE_WORKER_PORTS    worker ports per node                  (default 100)
#   KDTUNE_DASHBOARD       1: start the Ray dashboard UI on 127.0.0.1 (needs ray[default]) (default 0)
#   KDTUNE_DASHBOARD_PORT  dashboard port                         (default: a free port)
#   KDTUNE_START_TIMEOUT   seconds to wait for each service       (default 180)
#   KDTUNE_PYTHON          Python with ray and mlflow installed   (default: the repo's .venv)
#   KDTUNE_SERVICES        what start.sh starts: "ray mlflow", or "mlflow" alone (default both)

KDTUNE_LOCAL_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KDTUNE_REPO_ROOT="$(cd "$KDTUNE_LOCAL_HERE/../.." && pwd)"

kdtune_defaults() {
    : "${KDTUNE_CLUSTER_DIR:=$PWD/kdtune-cluster}"
    KDTUNE_CLUSTER_DIR="$(realpath -m "$KDTUNE_CLUSTER_DIR")"
    : "${KDTUNE_RAY_PORT:=6380}"
    : "${KDTUNE_RAY_TMP:=/tmp/kdtune-ray-$KDTUNE_RAY_PORT}"
    : "${KDTUNE_MLFLOW_PORT:=5000}"
    : "${KDTUNE_MLFLOW_HOST:=127.0.0.1}"
    : "${KDTUNE_MLFLOW_WORKERS:=1}"
    : "${KDTUNE_HEAD_CPUS:=1}"
    : "${KDTUNE_NODE2_CPUS:=1}"
    : "${KDTUNE_HEAD_GPUS:=0}"
    : "${KDTUNE_NODE2_GPUS:=0}"
    : "${KDTUNE_OBJECT_STORE_MB:=256}"
    : "${KDTUNE_WORKER_PORTS:=100}"
    : "${KDTUNE_DASHBOARD:=0}"
    : "${KDTUNE_START_TIMEOUT:=180}"
    : "${KDTUNE_SERVICES:=ray mlflow}"
    if [ -z "${KDTUNE_PYTHON:-}" ]; then
        if [ -x "$KDTUNE_REPO_ROOT/.venv/bin/python" ]; then
            KDTUNE_PYTHON="$KDTUNE_REPO_ROOT/.venv/bin/python"
        else
            KDTUNE_PYTHON="$(command -v python3)"
        fi
    fi
    STATE_FILE="$KDTUNE_CLUSTER_DIR/state.env"
    LOG_DIR="$KDTUNE_CLUSTER_DIR/logs"
}

log() { printf '[kdtune-cluster] %s\n' "$*" >&2; }

# Pids of every process in session $1 (our services run as session leaders via setsid; Ray's
# workers change their process group but keep the session).
session_members() {
    ps -e -o pid=,sid= | awk -v s="$1" '$2 == s { print $1 }'
}

# Is $1 alive and still the process we started (its command line mentions $2)?
is_ours() {
    local pid="$1" marker="$2"
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$marker"
}

# stop_session NAME PID MARKER: SIGTERM the leader (Ray drains and stops its own processes),
# then SIGTERM what is left of its session, then SIGKILL after a grace period.
stop_session() {
    local name="$1" pid="$2" marker="$3" i left
    if [ -z "$pid" ]; then
        return 0
    fi
    if is_ours "$pid" "$marker"; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 60); do
            is_ours "$pid" "$marker" || break
            sleep 0.5
        done
    fi
    left="$(session_members "$pid")"
    if [ -n "$left" ]; then
        # shellcheck disable=SC2086
        kill -TERM $left 2>/dev/null || true
        for i in $(seq 1 20); do
            left="$(session_members "$pid")"
            [ -z "$left" ] && break
            sleep 0.5
        done
    fi
    left="$(session_members "$pid")"
    if [ -n "$left" ]; then
        log "$name: killing leftover processes $(echo $left)"
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null || true
        sleep 0.5
    fi
    left="$(session_members "$pid")"
    if [ -n "$left" ]; then
        log "$name: could not stop $(echo $left)"
        return 1
    fi
    return 0
}
