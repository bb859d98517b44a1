#!/usr/bin/env bash
# Spark standalone cluster on this machine: one master and ISREC_SPARK_WORKERS workers (default
# 1), bound to 127.0.0.1.
#
# pip's pyspark ships no sbin/start-master.sh, so the master and each worker are started with
# spark-class in the background, each as its own session; their PIDs go to the state dir
# (ISREC_CLUSTER_DIR, default ./data/cluster) and stop signals exactly those processes.
#
# Several workers on one host: worker N (1-based) listens on ISREC_SPARK_WORKER_PORT + N - 1 and
# ISREC_SPARK_WORKER_UI_PORT + N - 1, and has its own PID file, work dir and log: spark-worker
# (spark/work, logs/spark-worker.log) for the first, spark-worker-N (spark/work-N,
# logs/spark-worker-N.log) for the others. stop and status act on every worker recorded in the
# state dir, whatever ISREC_SPARK_WORKERS says then.
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
WORKERS="${ISREC_SPARK_WORKERS:-1}"
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

Spark standalone master ($MASTER_URL, UI $MASTER_UI) and $WORKERS worker(s)
($WORKER_CORES core, $WORKER_MEMORY each; worker N on ports $WORKER_PORT+N-1 and UI
$WORKER_UI_PORT+N-1) from the pip pyspark, bound to $BIND_HOST.
Daemons on this host: $ROLES (ISREC_SPARK_ROLES: master, worker or both).
State (PIDs, logs, worker dirs): $STATE_DIR

Environment overrides: ISREC_CLUSTER_DIR, ISREC_PYTHON, ISREC_START_TIMEOUT, ISREC_STOP_TIMEOUT,
ISREC_BIND_HOST (default 127.0.0.1), ISREC_SPARK_ROLES, ISREC_SPARK_MASTER_URL (the master a
worker joins), ISREC_SPARK_MASTER_PORT, ISREC_SPARK_MASTER_UI_PORT, ISREC_SPARK_WORKER_PORT,
ISREC_SPARK_WORKER_UI_PORT, ISREC_SPARK_WORKER_CORES, ISREC_SPARK_WORKER_MEMORY,
ISREC_SPARK_WORKERS (workers on this host, default 1).
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
  export SPARK_LOG_DIR="$STATE_DIR/logs"
  # Executors run Python workers with the project's interpreter.
  export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$ISREC_PYTHON}"
}

# Worker N (1-based): its PID file name, work dir and ports. The first keeps the names of the
# one-worker cluster (spark-worker, spark/work).
worker_name() { if (($1 == 1)); then echo spark-worker; else echo "spark-worker-$1"; fi; }
worker_dir() {
  if (($1 == 1)); then echo "$SPARK_STATE/work"; else echo "$SPARK_STATE/work-$1"; fi
}
worker_port() { echo $((WORKER_PORT + $1 - 1)); }
worker_ui_port() { echo $((WORKER_UI_PORT + $1 - 1)); }

# The worker numbers to start: 1..ISREC_SPARK_WORKERS.
configured_workers() { seq 1 "$WORKERS"; }

# The worker numbers stop and status act on: the configured ones and every one with a PID
# file in the state dir (a cluster started with more workers than ISREC_SPARK_WORKERS now says).
known_workers() {
  local file n
  {
    configured_workers
    for file in "$STATE_DIR"/spark-worker.pid "$STATE_DIR"/spark-worker-*.pid; do
      [[ -f "$file" ]] || continue
      n="${file##*/spark-worker}"
      n="${n%.pid}"
      n="${n#-}"
      [[ "$n" =~ ^[0-9]+$ ]] || n=1
      echo "$n"
    done
  } | sort -nu
}

check_workers_setting() {
  [[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] ||
    die "ISREC_SPARK_WORKERS must be a positive integer, not '$WORKERS'"
}

alive_workers() {
  http_get "$MASTER_UI/json/" | grep -o '"aliveworkers" *: *[0-9]*' | grep -o '[0-9]*$'
}

master_answers() { http_get "$MASTER_UI/json/" >/dev/null; }

# worker_registered PORT: true once the master lists this host's worker BIND_HOST:PORT as ALIVE.
worker_registered() {
  http_get "$MASTER_UI/json/" | "$ISREC_PYTHON" -c '
import json, sys
host, port = sys.argv[1], int(sys.argv[2])
workers = json.load(sys.stdin).get("workers", [])
sys.exit(not any(w["host"] == host and w["port"] == port and w["state"] == "ALIVE" for w in workers))
' "$BIND_HOST" "$1"
}

start() {
  local ports=() n
  if { has_role "$ROLES" master && service_alive spark-master; } ||
    { has_role "$ROLES" worker && any_worker_alive; }; then
    log "already running: $MASTER_URL (UI $MASTER_UI)"
    return 0
  fi
  rm -f "$(pid_file spark-master)"
  for n in $(configured_workers); do rm -f "$(pid_file "$(worker_name "$n")")"; done
  has_role "$ROLES" master && ports+=("$MASTER_PORT" "$MASTER_UI_PORT")
  if has_role "$ROLES" worker; then
    for n in $(configured_workers); do
      ports+=("$(worker_port "$n")" "$(worker_ui_port "$n")")
    done
  fi
  ((${#ports[@]})) || die "ISREC_SPARK_ROLES must name master and/or worker, not '$ROLES'"
  require_distinct_ports "${ports[@]}"
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
    # All workers start at once, then each must register: on 2 cores that halves the wait.
    for n in $(configured_workers); do launch_worker "$n" || failed_start; done
    for n in $(configured_workers); do
      wait_until "$(worker_name "$n")" "worker $n registering with the master" \
        worker_registered "$(worker_port "$n")" || failed_start
      record_members "$(worker_name "$n")"
    done
  fi

  log "Spark master: $MASTER_URL  (web UI $MASTER_UI)"
  echo "$MASTER_URL"
}

# launch_worker N: start worker N (its own ports, work dir and log) joining MASTER_URL.
launch_worker() {
  local dir
  dir="$(worker_dir "$1")"
  mkdir -p "$dir"
  log "starting worker $1 on $BIND_HOST:$(worker_port "$1") ($WORKER_CORES core, $WORKER_MEMORY)," \
    "master $MASTER_URL"
  SPARK_WORKER_DIR="$dir" launch "$(worker_name "$1")" "$SPARK_HOME/bin/spark-class" \
    org.apache.spark.deploy.worker.Worker \
    --host "$BIND_HOST" --port "$(worker_port "$1")" --webui-port "$(worker_ui_port "$1")" \
    --cores "$WORKER_CORES" --memory "$WORKER_MEMORY" --work-dir "$dir" "$MASTER_URL"
}

any_worker_alive() {
  local n
  for n in $(known_workers); do
    service_alive "$(worker_name "$n")" && return 0
  done
  return 1
}

# Two daemons given the same port (e.g. a worker port block that reaches the master's port).
require_distinct_ports() {
  local dup
  dup="$(printf '%s\n' "$@" | sort | uniq -d | head -n 1)"
  [[ -z "$dup" ]] ||
    die "port $dup is given to two daemons (check the ports and ISREC_SPARK_WORKERS)"
}

failed_start() {
  stop >/dev/null
  die "Spark did not start (logs in $STATE_DIR/logs)"
}

stop() {
  local n
  for n in $(known_workers | sort -nr); do stop_service "$(worker_name "$n")"; done
  stop_service spark-master
}

# One line per daemon of this host's roles; exits 3 when any of them is not running. The
# worker lines end with the number of workers the master lists as alive (all hosts).
status() {
  local rc=0 n alive
  role_status "$ROLES" master spark-master "$MASTER_URL  UI $MASTER_UI" || rc=3
  has_role "$ROLES" worker || return "$rc"
  alive="$(alive_workers 2>/dev/null || echo '?')"
  for n in $(known_workers); do
    role_status "$ROLES" worker "$(worker_name "$n")" \
      "$BIND_HOST:$(worker_port "$n")  workers alive: $alive" || rc=3
  done
  return "$rc"
}

env_exports() {
  # etl.spark.get_spark() reads ISREC_SPARK_MASTER when not run by spark-submit.
  echo "export ISREC_SPARK_MASTER=$MASTER_URL"
}

check_workers_setting
dispatch "${1:-}"
