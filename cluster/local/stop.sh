#!/usr/bin/env bash
# Stop exactly what start.sh started in $KDTUNE_CLUSTER_DIR (default ./kdtune-cluster): the
# second Ray node, the Ray head and the MLflow server, each by the session of its recorded pid
# (SIGTERM, then SIGKILL after a grace period). Other Ray instances on the machine are left
# alone: this never runs `ray stop`, which would kill every Ray process of the user.
# Logs stay in $KDTUNE_CLUSTER_DIR/logs and $KDTUNE_RAY_TMP; the MLflow data stays in
# $KDTUNE_CLUSTER_DIR/mlflow (start.sh serves it again).
set -uo pipefail

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kdtune_defaults

if [ ! -f "$STATE_FILE" ]; then
    log "nothing to stop: no $STATE_FILE"
    exit 0
fi
# shellcheck disable=SC1090
source "$STATE_FILE"

status=0
# The node first (a head that vanishes under it makes it log errors), then the head, then MLflow.
stop_session "Ray node 2" "${RAY_NODE2_PID:-}" "ray_loopback.py" || status=1
stop_session "Ray head" "${RAY_HEAD_PID:-}" "ray_loopback.py" || status=1
stop_session "MLflow server" "${MLFLOW_PID:-}" "mlflow" || status=1

if [ "$status" = 0 ]; then
    rm -f "$STATE_FILE" "$KDTUNE_CLUSTER_DIR/env.sh"
    log "stopped; logs in $KDTUNE_CLUSTER_DIR/logs and $KDTUNE_RAY_TMP"
fi
exit "$status"
