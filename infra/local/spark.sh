#!/usr/bin/env bash
# Spark standalone cluster on this machine: one master and one worker, bound to 127.0.0.1.
#
# pip's pyspark ships no sbin/start-master.sh, so the master and the worker are started with
# spark-class in the background, each as its own session; their PIDs go to the state dir
# (ISREC_CLUSTER_DIR, default ./data/cluster) and stop signals exactly those processes.
#
# Across hosts: ISREC_BIND_HOST=<this host's address> on every host, ISREC_SPARK_ROLES=master on
# the master's host, and ISREC_SPARK_ROLES=worker ISREC_SPARK_MASTER_URL=spark://<master>:PORT
# on each worker's host (tests/test_two_hosts.py does this with a network namespace).
#
# usage: infra/local/spark.sh start|stop|status|env
set -euo pipefail
SERVICE=spark
# shellcheck source=infra/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MASTER_PORT="${ISREC_SPARK_MASTER_PORT:-7077}"
MASTER_UI_PORT="${ISREC_SPARK_MASTER_UI_PORT:-8080}"
WORKER_PORT="${ISREC_SPARK_WORKER_PORT:-7078}"
WORKER_UI_PORT="${ISREC_SPARK_WORKER_UI_PORT:-8081}"
WORKER_CORES="${ISREC_SPARK_WORKER_CORES:-1}"
WORKER_MEMORY="${ISREC_SPARK_WORKER_MEMORY:-2g}"
ROLES="${ISREC_SPARK_ROLES:-master worker}"
SPARK_STATE="$STATE_DIR/spark"
# The master this host's worker joins (and clients submit to): this host's own by default.
MASTER_URL="${ISREC_SPARK_MASTER_URL:-spark://$BIND_HOST:$MASTER_PORT}"
MASTER_HOST="${MASTER_URL#spark://}"
MASTER_HOST="${MASTER_HOST%:*}"
MASTER_UI="http://$MASTER_HOST:$MASTER_UI_PORT"

usage() {
  cat <<EOF
usage: $0 start|stop|status|env

Spark standalone master ($MASTER_URL, UI $MASTER_UI) and one worker
($WORKER_CORES core, $WORKER_MEMORY) from the pip pyspark, bound to $BIND_HOST.
Daemons on this host: $ROLES (ISREC_SPARK_ROLES: master, worker or both).
State (PIDs, logs, worker dir): $STATE_DIR

Environment overrides: ISREC_CLUSTER_DIR, ISREC_PYTHON, ISREC_START_TIMEOUT, ISREC_STOP_TIMEOUT,
ISREC_BIND_HOST (default 127.0.0.1), ISREC_SPARK_ROLES, ISREC_SPARK_MASTER_URL (the master a
worker joins), ISREC_SPARK_MASTER_PORT, ISREC_SPARK_MASTER_UI_PORT, ISREC_SPARK_WORKER_PORT,
ISREC_SPARK_WORKER_UI_PORT, ISREC_SPARK_WORKER_CORES, ISREC_SPARK_WORKER_MEMORY.
EOF
}

spark_env() {
  SPARK_HOME="$("$ISREC_PYTHON" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
  export SPARK_HOME
  # Every Spark socket (RPC, block manager, web UIs) binds to this address.
  export SPARK_LOCAL_IP="$BIND_HOST"
  if bind_host_is_loopback; then
    export SPARK_LOCAL_HOSTNAME=localhost
  else
    export SPARK_LOCAL_HOSTNAME="$BIND_HOST"
  fi
  export SPARK_PUBLIC_DNS="$BIND_HOST"
  export SPARK_DAEMON_MEMORY="${SPARK_DAEMON_MEMORY:-512m}"
  export SPARK_WORKER_DIR="$SPARK_STATE/work"
  export SPARK_LOG_DIR="$STATE_DIR/logs"
  # Executors run Python workers with the project's interpreter.
  export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$ISREC_PYTHON}"
  mkdir -p "$SPARK_WORKER_DIR"
}

alive_workers() {
  http_get "$MASTER_UI/json/" | grep -o '"aliveworkers" *: *[0-9]*' | grep -o '[0-9]*$'
}

master_answers() { http_get "$MASTER_UI/json/" >/dev/null; }

# True once the master lists this host's worker (BIND_HOST:WORKER_PORT) as ALIVE.
worker_registered() {
  http_get "$MASTER_UI/json/" | "$ISREC_PYTHON" -c '
import json, sys
host, port = sys.argv[1], int(sys.argv[2])
workers = json.load(sys.stdin).get("workers", [])
sys.exit(not any(w["host"] == host and w["port"] == port and w["state"] == "ALIVE" for w in workers))
' "$BIND_HOST" "$WORKER_PORT"
}

start() {
  local ports=()
  if { has_role "$ROLES" master && service_alive spark-master; } ||
    { has_role "$ROLES" worker && service_alive spark-worker; }; then
    log "already running: $MASTER_URL (UI $MASTER_UI)"
    return 0
  fi
  rm -f "$(pid_file spark-master)" "$(pid_file spark-worker)"
  has_role "$ROLES" master && ports+=("$MASTER_PORT" "$MASTER_UI_PORT")
  has_role "$ROLES" worker && ports+=("$WORKER_PORT" "$WORKER_UI_PORT")
  ((${#ports[@]})) || die "ISREC_SPARK_ROLES must name master and/or worker, not '$ROLES'"
  require_free_ports "${ports[@]}"
  spark_env

  if has_role "$ROLES" master; then
    log "starting master on $MASTER_URL"
    launch spark-master "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.master.Master \
      --host "$BIND_HOST" --port "$MASTER_PORT" --webui-port "$MASTER_UI_PORT" || failed_start
    wait_until spark-master "the master UI $MASTER_UI" master_answers || failed_start
    record_members spark-master
  fi

  if has_role "$ROLES" worker; then
    log "starting worker on $BIND_HOST ($WORKER_CORES core, $WORKER_MEMORY), master $MASTER_URL"
    launch spark-worker "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.worker.Worker \
      --host "$BIND_HOST" --port "$WORKER_PORT" --webui-port "$WORKER_UI_PORT" \
      --cores "$WORKER_CORES" --memory "$WORKER_MEMORY" --work-dir "$SPARK_WORKER_DIR" \
      "$MASTER_URL" || failed_start
    wait_until spark-worker "the worker registering with the master" worker_registered ||
      failed_start
    record_members spark-worker
  fi

  log "Spark master: $MASTER_URL  (web UI $MASTER_UI)"
  echo "$MASTER_URL"
}

failed_start() {
  stop >/dev/null
  die "Spark did not start (logs in $STATE_DIR/logs)"
}

stop() {
  stop_service spark-worker
  stop_service spark-master
}

status() {
  local rc=0
  role_status "$ROLES" master spark-master "$MASTER_URL  UI $MASTER_UI" || rc=3
  role_status "$ROLES" worker spark-worker \
    "workers alive: $(alive_workers 2>/dev/null || echo '?')" || rc=3
  return "$rc"
}

env_exports() {
  # etl.spark.get_spark() reads ISREC_SPARK_MASTER when not run by spark-submit.
  echo "export ISREC_SPARK_MASTER=$MASTER_URL"
}

dispatch "${1:-}"
