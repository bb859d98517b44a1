#!/usr/bin/env bash
# The whole local platform: Spark standalone, a two-node Ray cluster and the MLflow server,
# all bound to 127.0.0.1, with their PIDs and logs under ISREC_CLUSTER_DIR (./data/cluster).
#
# usage: infra/local/all.sh start|stop|status|env
# start needs ISREC_MLFLOW_ADMIN_PASSWORD (>= 12 characters): the MLflow admin's password.
#   eval "$(infra/local/all.sh env)"   # ISREC_SPARK_MASTER, RAY_*, MLFLOW_TRACKING_URI
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
services=(spark ray mlflow)

case "${1:-}" in
  start)
    for service in "${services[@]}"; do
      "$here/$service.sh" start || {
        echo "[all] error: $service did not start; the others stay up ($0 stop ends them)" >&2
        exit 1
      }
    done
    echo "[all] up; set the clients' environment with: eval \"\$($0 env)\""
    ;;
  stop)
    rc=0
    for ((i = ${#services[@]} - 1; i >= 0; i--)); do
      "$here/${services[i]}.sh" stop || rc=1
    done
    exit "$rc"
    ;;
  status)
    rc=0
    for service in "${services[@]}"; do
      "$here/$service.sh" status || rc=3
    done
    exit "$rc"
    ;;
  env)
    for service in "${services[@]}"; do
      "$here/$service.sh" env
    done
    ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
