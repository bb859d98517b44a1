#!/usr/bin/env bash
# MLflow tracking server on 127.0.0.1 with a SQLite backend store and a local artifact store
# served through the server (clients upload artifacts over HTTP, no direct file access).
#
# usage: infra/local/mlflow.sh start|stop|status|env
set -euo pipefail
SERVICE=mlflow
# shellcheck source=infra/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${ISREC_MLFLOW_PORT:-5000}"
WORKERS="${ISREC_MLFLOW_WORKERS:-1}"
MLFLOW_STATE="$STATE_DIR/mlflow"
BACKEND_URI="${ISREC_MLFLOW_BACKEND_URI:-sqlite:///$MLFLOW_STATE/mlflow.db}"
ARTIFACTS="${ISREC_MLFLOW_ARTIFACTS:-$MLFLOW_STATE/artifacts}"
TRACKING_URI="http://$BIND_HOST:$PORT"

usage() {
  cat <<EOF
usage: $0 start|stop|status|env

MLflow tracking server at $TRACKING_URI
  backend store:  $BACKEND_URI
  artifacts:      $ARTIFACTS (served by the server: mlflow-artifacts:/ URIs)
State (PID, logs): $STATE_DIR

Environment overrides: ISREC_CLUSTER_DIR, ISREC_PYTHON, ISREC_START_TIMEOUT, ISREC_STOP_TIMEOUT,
ISREC_MLFLOW_PORT, ISREC_MLFLOW_WORKERS, ISREC_MLFLOW_BACKEND_URI, ISREC_MLFLOW_ARTIFACTS.
EOF
}

healthy() { [[ "$(http_get "$TRACKING_URI/health")" == OK* ]]; }

start() {
  if service_alive mlflow; then
    log "already running: $TRACKING_URI"
    return 0
  fi
  rm -f "$(pid_file mlflow)"
  require_free_ports "$PORT"
  mkdir -p "$MLFLOW_STATE"
  [[ "$ARTIFACTS" == *://* ]] || mkdir -p "$ARTIFACTS"

  log "starting tracking server on $TRACKING_URI (backend $BACKEND_URI)"
  launch mlflow mlflow server --host "$BIND_HOST" --port "$PORT" --workers "$WORKERS" \
    --backend-store-uri "$BACKEND_URI" --serve-artifacts --artifacts-destination "$ARTIFACTS" ||
    failed_start
  # The first start creates and migrates the database, which takes a while.
  wait_until mlflow "$TRACKING_URI/health" healthy || failed_start
  record_members mlflow
  log "MLflow tracking URI: $TRACKING_URI"
  echo "$TRACKING_URI"
}

failed_start() {
  stop >/dev/null
  die "MLflow did not start (log: $(log_file mlflow))"
}

stop() { stop_service mlflow; }

status() {
  print_status_line mlflow "$TRACKING_URI  health: $(http_get "$TRACKING_URI/health" || echo '-')"
  service_alive mlflow || return 3
}

env_exports() { echo "export MLFLOW_TRACKING_URI=$TRACKING_URI"; }

dispatch "${1:-}"
