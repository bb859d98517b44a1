#!/usr/bin/env bash
# Spark standalone cluster on this machine: one master and one worker, bound to 127.0.0.1.
#
# pip's pyspark ships no sbin/start-master.sh, so the master and the worker are started with
# spark-class in the background, each as its own session; their PIDs go to the state dir
# (ISREC_CLUSTER_DIR, default ./data/cluster) and stop signals exactly those processes.
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
SPARK_STATE="$STATE_DIR/spark"
MASTER_URL="spark://$BIND_HOST:$MASTER_PORT"
MASTER_UI="http://$BIND_HOST:$MASTER_UI_PORT"

usage() {
  cat <<EOF
usage: $0 start|stop|status|env

Spark standalone master ($MASTER_URL, UI $MASTER_UI) and one worker
($WORKER_CORES core, $WORKER_MEMORY) from the pip pyspark, bound to $BIND_HOST.
State (PIDs, logs, worker dir): $STATE_DIR

Environment overrides: ISREC_CLUSTER_DIR, ISREC_PYTHON, ISREC_START_TIMEOUT, ISREC_STOP_TIMEOUT,
ISREC_SPARK_MASTER_PORT, ISREC_SPARK_MASTER_UI_PORT, ISREC_SPARK_WORKER_PORT,
ISREC_SPARK_WORKER_UI_PORT, ISREC_SPARK_WORKER_CORES, ISREC_SPARK_WORKER_MEMORY.
EOF
}

spark_env() {
  SPARK_HOME="$("$ISREC_PYTHON" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
  export SPARK_HOME
  # Every Spark socket (RPC, block manager, web UIs) binds to this address.
  export SPARK_LOCAL_IP="$BIND_HOST"
  export SPARK_LOCAL_HOSTNAME=localhost
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

worker_registered() {
  local n
  n="$(alive_workers || true)"
  [[ -n "$n" && "$n" -ge 1 ]]
}

start() {
  if service_alive spark-master || service_alive spark-worker; then
    log "already running: $MASTER_URL (UI $MASTER_UI)"
    return 0
  fi
  rm -f "$(pid_file spark-master)" "$(pid_file spark-worker)"
  require_free_ports "$MASTER_PORT" "$MASTER_UI_PORT" "$WORKER_PORT" "$WORKER_UI_PORT"
  spark_env

  log "starting master on $MASTER_URL"
  launch spark-master "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.master.Master \
    --host "$BIND_HOST" --port "$MASTER_PORT" --webui-port "$MASTER_UI_PORT" || failed_start
  wait_until spark-master "the master UI $MASTER_UI" master_answers || failed_start

  log "starting worker ($WORKER_CORES core, $WORKER_MEMORY)"
  launch spark-worker "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.worker.Worker \
    --host "$BIND_HOST" --port "$WORKER_PORT" --webui-port "$WORKER_UI_PORT" \
    --cores "$WORKER_CORES" --memory "$WORKER_MEMORY" --work-dir "$SPARK_WORKER_DIR" \
    "$MASTER_URL" || failed_start
  wait_until spark-worker "the worker registering with the master" worker_registered ||
    failed_start

  record_members spark-master
  record_members spark-worker
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
  print_status_line spark-master "$MASTER_URL  UI $MASTER_UI"
  print_status_line spark-worker "workers alive: $(alive_workers 2>/dev/null || echo '?')"
  if service_alive spark-master && service_alive spark-worker; then return 0; fi
  return 3
}

env_exports() {
  # etl.spark.get_spark() reads ISREC_SPARK_MASTER when not run by spark-submit.
  echo "export ISREC_SPARK_MASTER=$MASTER_URL"
}

dispatch "${1:-}"
