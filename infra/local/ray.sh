#!/usr/bin/env bash
# Two-node Ray cluster on this machine (a head and one worker node), bound to 127.0.0.1.
#
# `ray stop` would kill every Ray process on the machine, so it is never used. Each node is
# started by `ray start` as the leader of a new session (setsid); `ray start` exits once the
# node is up, and every Ray process of that node (GCS, raylet, dashboard, agents, workers) stays
# in that session. The session id (= the PID `ray start` had) is recorded in
# ray-head.pid / ray-node.pid with its start time, and the member PIDs in *.pids; stop signals
# the members of those sessions and their descendants only.
#
# Loopback only: `ray start --node-ip-address 127.0.0.1` alone is rewritten by Ray to the
# machine's outward address. The head is started with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
# which makes Ray use 127.0.0.1 as the node address (and bind GCS, raylet, dashboard and agents
# to it); the second node is started by ray_node.py (Ray's CLI without the loopback rewrite).
# Drivers that call ray.init(address=...) from outside need RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# too (`ray.sh env` prints it); jobs sent with `ray job submit` inherit it from the head.
#
# Token authentication (Ray >= 2.52, off by default in 2.55): on here unless
# ISREC_RAY_AUTH_MODE=disabled. The token lives in STATE_DIR/ray/auth_token (mode 600); clients
# need RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH, which `ray.sh env` prints.
#
# usage: infra/local/ray.sh start|stop|status|env
set -euo pipefail
SERVICE=ray
# shellcheck source=infra/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

GCS_PORT="${ISREC_RAY_PORT:-6379}"
DASHBOARD_PORT="${ISREC_RAY_DASHBOARD_PORT:-8265}"
CLIENT_PORT="${ISREC_RAY_CLIENT_PORT:-10001}"
# Eight ports from here: dashboard agent HTTP, agent gRPC, runtime-env agent and metrics export,
# first for the head, then for the second node (two nodes on one machine must not share them).
AGENT_PORT_BASE="${ISREC_RAY_AGENT_PORT_BASE:-52365}"
HEAD_WORKER_PORTS="${ISREC_RAY_HEAD_WORKER_PORTS:-10002-14999}"
NODE_WORKER_PORTS="${ISREC_RAY_NODE_WORKER_PORTS:-15000-19999}"
HEAD_CPUS="${ISREC_RAY_HEAD_CPUS:-2}"
NODE_CPUS="${ISREC_RAY_NODE_CPUS:-2}"
OBJECT_STORE_BYTES="${ISREC_RAY_OBJECT_STORE_BYTES:-300000000}"
AUTH_MODE="${ISREC_RAY_AUTH_MODE:-token}"
START_ATTEMPTS="${ISREC_RAY_START_ATTEMPTS:-3}"
RAY_STATE="$STATE_DIR/ray"
TOKEN_FILE="$RAY_STATE/auth_token"
GCS_ADDRESS="$BIND_HOST:$GCS_PORT"
DASHBOARD_URL="http://$BIND_HOST:$DASHBOARD_PORT"
# Ray's Unix socket paths must stay under ~100 characters: keep its temp dirs short, one per
# state dir (STATE_DIR/ray/tmp links to it).
RAY_TMP="${ISREC_RAY_TEMP_DIR:-/tmp/isrec-ray-$(printf '%s' "$STATE_DIR" | cksum | cut -d' ' -f1)}"

usage() {
  cat <<EOF
usage: $0 start|stop|status|env

Ray head (GCS $GCS_ADDRESS, dashboard and job submission $DASHBOARD_URL) and a second Ray
node, both on $BIND_HOST. Token authentication: $AUTH_MODE (ISREC_RAY_AUTH_MODE=token|disabled).
State (PIDs, logs, token): $STATE_DIR; Ray temp dirs: $RAY_TMP
Submit jobs with:  eval "\$($0 env)"; ray job submit --working-dir . -- python jobs/train.py ...

Environment overrides: ISREC_CLUSTER_DIR, ISREC_PYTHON, ISREC_START_TIMEOUT, ISREC_STOP_TIMEOUT,
ISREC_RAY_PORT, ISREC_RAY_DASHBOARD_PORT, ISREC_RAY_CLIENT_PORT, ISREC_RAY_AGENT_PORT_BASE (8 ports),
ISREC_RAY_HEAD_WORKER_PORTS, ISREC_RAY_NODE_WORKER_PORTS (MIN-MAX),
ISREC_RAY_HEAD_CPUS, ISREC_RAY_NODE_CPUS, ISREC_RAY_OBJECT_STORE_BYTES, ISREC_RAY_AUTH_MODE,
ISREC_RAY_TEMP_DIR, ISREC_RAY_START_ATTEMPTS.
EOF
}

# auth_env [generate]: export the auth settings for Ray; with "generate", create the token.
auth_env() {
  case "$AUTH_MODE" in
    token)
      mkdir -p "$RAY_STATE"
      if [[ "${1:-}" == generate && ! -s "$TOKEN_FILE" ]]; then
        (
          umask 077
          "$ISREC_PYTHON" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$TOKEN_FILE"
        )
      fi
      export RAY_AUTH_MODE=token
      export RAY_AUTH_TOKEN_PATH="$TOKEN_FILE"
      TOKEN="$(cat "$TOKEN_FILE" 2>/dev/null || true)"
      ;;
    disabled)
      export RAY_AUTH_MODE=disabled
      unset RAY_AUTH_TOKEN_PATH RAY_AUTH_TOKEN
      TOKEN=""
      ;;
    *) die "ISREC_RAY_AUTH_MODE must be token or disabled, not '$AUTH_MODE'" ;;
  esac
}

# A 2-core laptop needs more than Ray's 30 s for the dashboard's modules to come up.
slow_machine_env() {
  : "${RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT:=180}"
  : "${RAY_DASHBOARD_STARTUP_TIMEOUT_S:=240}"
  export RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT RAY_DASHBOARD_STARTUP_TIMEOUT_S
}

# run_ray_start NAME CMD...: CMD (a `ray start`) as a session leader; wait (bounded) for its exit.
run_ray_start() {
  local name="$1" pid deadline rc
  shift
  launch "$name" "$@" --disable-usage-stats || return 1
  read -r pid _ <"$(pid_file "$name")"
  deadline=$((SECONDS + START_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      tail -n 30 "$(log_file "$name")" >&2 || true
      warn "'ray start' for $name did not finish in ${START_TIMEOUT}s; log: $(log_file "$name")"
      return 1
    fi
    sleep 1
  done
  rc=0
  wait "$pid" || rc=$?
  if ((rc != 0)); then
    tail -n 15 "$(log_file "$name")" >&2 || true
    warn "'ray start' for $name failed (exit $rc); log: $(log_file "$name")"
    return 1
  fi
}

# agent_ports OFFSET: AGENT_ARGS = the four agent port options of one node, from
# AGENT_PORT_BASE + OFFSET.
agent_ports() {
  local p=$((AGENT_PORT_BASE + $1))
  AGENT_ARGS=(--dashboard-agent-listen-port "$p" --dashboard-agent-grpc-port "$((p + 1))"
    --runtime-env-agent-port "$((p + 2))" --metrics-export-port "$((p + 3))")
}

jobs_api_answers() { http_get "$DASHBOARD_URL/api/jobs/" "$TOKEN" >/dev/null; }

alive_nodes() {
  http_get "$DASHBOARD_URL/api/v0/nodes?limit=100" "$TOKEN" |
    "$ISREC_PYTHON" -c '
import json, sys
nodes = json.load(sys.stdin)["data"]["result"]["result"]
print(sum(node["state"] == "ALIVE" for node in nodes))'
}

two_nodes_alive() {
  local n
  n="$(alive_nodes 2>/dev/null || true)"
  [[ -n "$n" && "$n" -ge 2 ]]
}

start_nodes() {
  log "starting head node (GCS $GCS_ADDRESS, auth: $AUTH_MODE)"
  agent_ports 0
  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 run_ray_start ray-head ray start --head \
    --node-ip-address "$BIND_HOST" --port "$GCS_PORT" \
    --include-dashboard=true --dashboard-host "$BIND_HOST" --dashboard-port "$DASHBOARD_PORT" \
    --ray-client-server-port "$CLIENT_PORT" "${AGENT_ARGS[@]}" \
    --min-worker-port "${HEAD_WORKER_PORTS%-*}" --max-worker-port "${HEAD_WORKER_PORTS#*-}" \
    --num-cpus "$HEAD_CPUS" --object-store-memory "$OBJECT_STORE_BYTES" \
    --temp-dir "$RAY_TMP/head" || return 1
  wait_until ray-head "the job submission API $DASHBOARD_URL/api/jobs/" jobs_api_answers ||
    return 1

  log "starting second node"
  agent_ports 4
  run_ray_start ray-node "$ISREC_PYTHON" "$ISREC_ROOT/infra/local/ray_node.py" \
    --address "$GCS_ADDRESS" "${AGENT_ARGS[@]}" \
    --min-worker-port "${NODE_WORKER_PORTS%-*}" --max-worker-port "${NODE_WORKER_PORTS#*-}" \
    --num-cpus "$NODE_CPUS" --object-store-memory "$OBJECT_STORE_BYTES" \
    --temp-dir "$RAY_TMP/node" || return 1
  wait_until ray-node "2 alive nodes" two_nodes_alive
}

start() {
  local attempt
  auth_env generate
  if service_alive ray-head || service_alive ray-node; then
    log "already running: dashboard/job submission $DASHBOARD_URL, GCS $GCS_ADDRESS"
    return 0
  fi
  rm -f "$(pid_file ray-head)" "$(pid_file ray-node)"
  require_free_ports "$GCS_PORT" "$DASHBOARD_PORT" "$CLIENT_PORT" \
    $(seq "$AGENT_PORT_BASE" $((AGENT_PORT_BASE + 7)))
  slow_machine_env
  mkdir -p "$RAY_TMP/head" "$RAY_TMP/node" "$RAY_STATE"
  ln -sfn "$RAY_TMP" "$RAY_STATE/tmp"

  # Ray gives its raylet and agents fixed startup deadlines that a busy 2-core machine can
  # miss: the raylet exits when the dashboard agent has not written its port files within a
  # hard-coded 15 s (ray-project/ray#65983), and `ray start` waits 30 s for the raylet. A
  # failed attempt is cleaned up and tried again.
  for ((attempt = 1; attempt <= START_ATTEMPTS; attempt++)); do
    if start_nodes; then
      record_members ray-head
      record_members ray-node
      log "Ray cluster up: 2 nodes, GCS $GCS_ADDRESS"
      log "dashboard / job submission: $DASHBOARD_URL"
      if [[ "$AUTH_MODE" == token ]]; then
        log "token auth on: clients need RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$TOKEN_FILE"
        log "  (eval \"\$($0 env)\" sets them)"
      fi
      echo "$DASHBOARD_URL"
      return 0
    fi
    log "attempt $attempt of $START_ATTEMPTS failed; stopping what it started"
    stop >/dev/null
  done
  die "Ray did not start (ISREC_RAY_START_ATTEMPTS=$START_ATTEMPTS); logs in $STATE_DIR/logs"
}

stop() {
  stop_service ray-node
  stop_service ray-head
}

status() {
  auth_env
  print_status_line ray-head "GCS $GCS_ADDRESS  dashboard $DASHBOARD_URL  auth $AUTH_MODE"
  print_status_line ray-node "alive nodes: $(alive_nodes 2>/dev/null || echo '?')"
  if service_alive ray-head && service_alive ray-node; then return 0; fi
  return 3
}

env_exports() {
  echo "export RAY_ADDRESS=$GCS_ADDRESS"
  # Keeps ray.init(address=...) on 127.0.0.1 instead of the machine's outward address.
  echo "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
  echo "export RAY_API_SERVER_ADDRESS=$DASHBOARD_URL"
  if [[ "$AUTH_MODE" == token ]]; then
    echo "export RAY_AUTH_MODE=token"
    echo "export RAY_AUTH_TOKEN_PATH=$TOKEN_FILE"
  fi
}

dispatch "${1:-}"
