#!/usr/bin/env bash
# MLflow tracking server on 127.0.0.1 with a SQLite backend store and a local artifact store
# served through the server (clients upload artifacts over HTTP, no direct file access).
# It runs MLflow's basic-auth app: every request but /health needs a user and password. The
# admin's password comes from ISREC_MLFLOW_ADMIN_PASSWORD (at least 12 characters; no default,
# the script refuses to start without it) and is used when the admin is first created; the
# auth config (basic_auth.ini) and the CSRF key are written at start-up into the state dir.
#
# usage: infra/local/mlflow.sh start|stop|status|env
#   ISREC_MLFLOW_ADMIN_PASSWORD=... infra/local/mlflow.sh start
#   eval "$(infra/local/mlflow.sh env)"   # MLFLOW_TRACKING_URI, _USERNAME, _PASSWORD
set -euo pipefail
SERVICE=mlflow
# shellcheck source=infra/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${ISREC_MLFLOW_PORT:-5000}"
WORKERS="${ISREC_MLFLOW_WORKERS:-1}"
JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
MLFLOW_STATE="$STATE_DIR/mlflow"
BACKEND_URI="${ISREC_MLFLOW_BACKEND_URI:-sqlite:///$MLFLOW_STATE/mlflow.db}"
ARTIFACTS="${ISREC_MLFLOW_ARTIFACTS:-$MLFLOW_STATE/artifacts}"
TRACKING_URI="http://$BIND_HOST:$PORT"
ADMIN_USER="${ISREC_MLFLOW_ADMIN_USER:-admin}"
AUTH_DB_URI="${ISREC_MLFLOW_AUTH_DB_URI:-sqlite:///$MLFLOW_STATE/basic_auth.db}"
AUTH_INI="$MLFLOW_STATE/basic_auth.ini"
SECRET_KEY_FILE="$MLFLOW_STATE/flask_secret_key"

usage() {
  cat <<EOF
usage: $0 start|stop|status|env

MLflow tracking server at $TRACKING_URI
  backend store:  $BACKEND_URI
  artifacts:      $ARTIFACTS (served by the server: mlflow-artifacts:/ URIs)
  basic auth:     admin $ADMIN_USER, users in $AUTH_DB_URI
State (PID, logs, auth config): $STATE_DIR

start needs ISREC_MLFLOW_ADMIN_PASSWORD (at least 12 characters), the password the admin user
gets when the server creates it (first start); clients send MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD (printed by env).

Environment overrides: ISREC_CLUSTER_DIR, ISREC_PYTHON, ISREC_START_TIMEOUT, ISREC_STOP_TIMEOUT,
ISREC_MLFLOW_PORT, ISREC_MLFLOW_WORKERS, ISREC_MLFLOW_BACKEND_URI, ISREC_MLFLOW_ARTIFACTS,
ISREC_MLFLOW_ADMIN_USER, ISREC_MLFLOW_AUTH_DB_URI, ISREC_MLFLOW_SECRET_KEY,
MLFLOW_SERVER_ENABLE_JOB_EXECUTION (default false: MLflow's job runner off).
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
  auth_setup

  log "starting tracking server on $TRACKING_URI (backend $BACKEND_URI, basic auth)"
  # MLflow's job execution (a job runner and huey consumers, GenAI scorers and trace rollups)
  # is nothing this platform uses; its half-dozen extra Python processes made the start 3x
  # slower on a busy 2-core machine (61 s against 20 s) and keep polling after it.
  launch mlflow env MLFLOW_SERVER_ENABLE_JOB_EXECUTION="$JOB_EXECUTION" \
    mlflow server --app-name basic-auth --host "$BIND_HOST" --port "$PORT" \
    --workers "$WORKERS" --backend-store-uri "$BACKEND_URI" --serve-artifacts \
    --artifacts-destination "$ARTIFACTS" || failed_start
  # The first start creates and migrates the database, which takes a while.
  wait_until mlflow "$TRACKING_URI/health" healthy || failed_start
  record_members mlflow
  log "MLflow tracking URI: $TRACKING_URI"
  echo "$TRACKING_URI"
}

# The basic-auth app's config, its admin password and CSRF key, for the server's environment
# only: the ini (no password in it) and the key file are mode 600 in the state dir.
auth_setup() {
  local password="${ISREC_MLFLOW_ADMIN_PASSWORD:-}"
  [[ -n "$password" ]] ||
    die "set ISREC_MLFLOW_ADMIN_PASSWORD (at least 12 characters): the MLflow admin's password"
  ((${#password} >= 12)) || die "ISREC_MLFLOW_ADMIN_PASSWORD must have at least 12 characters"
  (
    umask 077
    printf '[mlflow]\ndefault_permission = READ\ndatabase_uri = %s\nadmin_username = %s\n' \
      "$AUTH_DB_URI" "$ADMIN_USER" >"$AUTH_INI"
    if [[ -z "${ISREC_MLFLOW_SECRET_KEY:-}" && ! -s "$SECRET_KEY_FILE" ]]; then
      "$ISREC_PYTHON" -c 'import secrets; print(secrets.token_hex(32))' >"$SECRET_KEY_FILE"
    fi
  )
  export MLFLOW_AUTH_CONFIG_PATH="$AUTH_INI"
  export MLFLOW_AUTH_ADMIN_PASSWORD="$password"
  MLFLOW_FLASK_SERVER_SECRET_KEY="${ISREC_MLFLOW_SECRET_KEY:-$(cat "$SECRET_KEY_FILE")}"
  export MLFLOW_FLASK_SERVER_SECRET_KEY
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

# The clients' settings; the password only when ISREC_MLFLOW_ADMIN_PASSWORD is set here.
env_exports() {
  echo "export MLFLOW_TRACKING_URI=$TRACKING_URI"
  echo "export MLFLOW_TRACKING_USERNAME=$ADMIN_USER"
  if [[ -n "${ISREC_MLFLOW_ADMIN_PASSWORD:-}" ]]; then
    printf 'export MLFLOW_TRACKING_PASSWORD=%q\n' "$ISREC_MLFLOW_ADMIN_PASSWORD"
  fi
}

dispatch "${1:-}"
