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
# Across hosts: ISREC_BIND_HOST=<this host's address> on every host (then plain `ray start
# --node-ip-address`, no loopback switches), ISREC_RAY_ROLES=head on the head's host, and
# ISREC_RAY_ROLES=node ISREC_RAY_HEAD_ADDRESS=<head>:PORT on each other host, with a copy of the
# head's token in ISREC_RAY_TOKEN_FILE (tests/test_two_hosts.py does this with a network
# namespace).
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
ROLES="${ISREC_RAY_ROLES:-head node}"
RAY_STATE="$STATE_DIR/ray"
TOKEN_FILE="${ISREC_RAY_TOKEN_FILE:-$RAY_STATE/auth_token}"
# The head's GCS (the second node joins it) and dashboard: this host's own by default.
GCS_ADDRESS="${ISREC_RAY_HEAD_ADDRESS:-$BIND_HOST:$GCS_PORT}"
DASHBOARD_URL="http://${GCS_ADDRESS%:*}:$DASHBOARD_PORT"
# Ray's Unix socket paths must stay under ~100 characters: keep its temp dirs short, one per
# state dir (STATE_DIR/ray/tmp links to it).
RAY_TMP="${ISREC_RAY_TEMP_DIR:-/tmp/isrec-ray-$(printf '%s' "$STATE_DIR" | cksum | cut -d' ' -f1)}"

usage() {
  cat <<EOF
usage: $0 start|stop|status|env

Ray head (GCS $GCS_ADDRESS, dashboard and job submission $DASHBOARD_URL) and a second Ray
node, both on $BIND_HOST. Token authentication: $AUTH_MODE (ISREC_RAY_AUTH_MODE=token|disabled).
Nodes on this host: $ROLES (ISREC_RAY_ROLES: head, node or both).
State (PIDs, logs, token): $STATE_DIR; Ray temp dirs: $RAY_TMP
Submit jobs with:  eval "\$($0 env)"; ray job submit --working-dir . -- python jobs/train.py ...

Environment overrides: ISREC_CLUSTER_DIR, ISREC_PYTHON, ISREC_START_TIMEOUT, ISREC_STOP_TIMEOUT,
ISREC_BIND_HOST (default 127.0.0.1), ISREC_RAY_ROLES, ISREC_RAY_HEAD_ADDRESS (the GCS a node
joins), ISREC_RAY_TOKEN_FILE, ISREC_RAY_PORT, ISREC_RAY_DASHBOARD_PORT, ISREC_RAY_CLIENT_PORT, ISREC_RAY_AGENT_PORT_BASE (8 ports),
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
        has_role "$ROLES" head || die "no Ray token at $TOKEN_FILE: copy the head's there"
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
    sleep 0.2 # kill -0 is a builtin: a short poll costs nothing
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

# nodes_alive_at N: true once N alive nodes have BIND_HOST as their address.
nodes_alive_at() {
  local n
  n="$(alive_nodes "$BIND_HOST" 2>/dev/null || true)"
  [[ -n "$n" && "$n" -ge "$1" ]]
}

# alive_nodes [ADDRESS]: how many nodes are alive (those with that address only, if given).
alive_nodes() {
  http_get "$DASHBOARD_URL/api/v0/nodes?limit=100" "$TOKEN" |
    "$ISREC_PYTHON" -c '
import json, sys
nodes = json.load(sys.stdin)["data"]["result"]["result"]
ip = sys.argv[1]
print(sum(n["state"] == "ALIVE" and ip in ("", n["node_ip"]) for n in nodes))' "${1:-}"
}

# Gloo (torch.distributed on CPU) takes its address from the hostname, which /etc/hosts often
# maps to 127.0.0.1: on another address, point it (and NCCL) at the interface holding BIND_HOST
# unless the caller chose one. Ray's workers inherit the node's environment.
collective_interface_env() {
  local iface
  bind_host_is_loopback && return 0
  # `ip -o addr` lines: "3: eth0@if4    inet 10.0.0.2/24 ..." (veth names carry "@ifN").
  iface="$(ip -o addr show 2>/dev/null |
    awk -v a="$BIND_HOST" '{split($4, p, "/"); sub(/@.*/, "", $2)} p[1] == a {print $2; exit}')"
  if [[ -z "$iface" ]]; then
    log "no interface holds $BIND_HOST (iproute2 missing?): set GLOO_SOCKET_IFNAME yourself"
    return 0
  fi
  export GLOO_SOCKET_IFNAME="${GLOO_SOCKET_IFNAME:-$iface}"
  export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-$iface}"
  log "collectives (gloo, NCCL) on interface $GLOO_SOCKET_IFNAME"
}

start_nodes() {
  local head=(ray start --head) node=(ray start --node-ip-address "$BIND_HOST") here=0
  collective_interface_env
  if bind_host_is_loopback; then
    # Ray's switch that keeps the head on loopback, and Ray's CLI without its loopback rewrite
    # for the second node (see the top of this file).
    head=(env RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head)
    node=("$ISREC_PYTHON" "$ISREC_ROOT/infra/local/ray_node.py")
  fi
  if has_role "$ROLES" head; then
    log "starting head node (GCS $GCS_ADDRESS, auth: $AUTH_MODE)"
    agent_ports 0
    run_ray_start ray-head "${head[@]}" \
      --node-ip-address "$BIND_HOST" --port "$GCS_PORT" \
      --include-dashboard=true --dashboard-host "$BIND_HOST" --dashboard-port "$DASHBOARD_PORT" \
      --ray-client-server-port "$CLIENT_PORT" "${AGENT_ARGS[@]}" \
      --min-worker-port "${HEAD_WORKER_PORTS%-*}" --max-worker-port "${HEAD_WORKER_PORTS#*-}" \
      --num-cpus "$HEAD_CPUS" --object-store-memory "$OBJECT_STORE_BYTES" \
      --temp-dir "$RAY_TMP/head" || return 1
    wait_until ray-head "the job submission API $DASHBOARD_URL/api/jobs/" jobs_api_answers ||
      return 1
    here=1
  fi

  if has_role "$ROLES" node; then
    log "starting a node on $BIND_HOST (head $GCS_ADDRESS)"
    agent_ports 4
    run_ray_start ray-node "${node[@]}" \
      --address "$GCS_ADDRESS" "${AGENT_ARGS[@]}" \
      --min-worker-port "${NODE_WORKER_PORTS%-*}" --max-worker-port "${NODE_WORKER_PORTS#*-}" \
      --num-cpus "$NODE_CPUS" --object-store-memory "$OBJECT_STORE_BYTES" \
      --temp-dir "$RAY_TMP/node" || return 1
    wait_until ray-node "$((here + 1)) alive nodes on $BIND_HOST" nodes_alive_at $((here + 1))
  fi
}

start() {
  local attempt
  auth_env generate
  if { has_role "$ROLES" head && service_alive ray-head; } ||
    { has_role "$ROLES" node && service_alive ray-node; }; then
    log "already running: dashboard/job submission $DASHBOARD_URL, GCS $GCS_ADDRESS"
    return 0
  fi
  rm -f "$(pid_file ray-head)" "$(pid_file ray-node)"
  local ports=()
  if has_role "$ROLES" head; then
    ports+=("$GCS_PORT" "$DASHBOARD_PORT" "$CLIENT_PORT")
    mapfile -t -O "${#ports[@]}" ports < <(seq "$AGENT_PORT_BASE" $((AGENT_PORT_BASE + 3)))
  fi
  if has_role "$ROLES" node; then
    mapfile -t -O "${#ports[@]}" ports < <(seq $((AGENT_PORT_BASE + 4)) $((AGENT_PORT_BASE + 7)))
  fi
  ((${#ports[@]})) || die "ISREC_RAY_ROLES must name head and/or node, not '$ROLES'"
  require_free_ports "${ports[@]}"
  slow_machine_env
  mkdir -p "$RAY_TMP/head" "$RAY_TMP/node" "$RAY_STATE"
  ln -sfn "$RAY_TMP" "$RAY_STATE/tmp"

  # Ray gives its raylet and agents fixed startup deadlines that a busy 2-core machine can
  # miss: the raylet exits when the dashboard agent has not written its port files within a
  # hard-coded 15 s (ray-project/ray#65983), and `ray start` waits 30 s for the raylet. A
  # failed attempt is cleaned up and tried again.
  for ((attempt = 1; attempt <= START_ATTEMPTS; attempt++)); do
    if start_nodes; then
      has_role "$ROLES" head && record_members ray-head
      has_role "$ROLES" node && record_members ray-node
      log "Ray up on $BIND_HOST ($ROLES), GCS $GCS_ADDRESS"
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

# terminate_members NAME GLOB [not]: SIGTERM the processes of node NAME whose command line
# matches GLOB (with "not": those that do not) and wait up to STOP_TIMEOUT for them to exit.
terminate_members() {
  local pid cmd hit want=1 picked=() deadline
  [[ "${3:-}" == not ]] && want=0
  for pid in $(service_pids "$1"); do
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || continue
    # shellcheck disable=SC2053  # GLOB is a pattern on purpose
    if [[ "$cmd" == $2 ]]; then hit=1; else hit=0; fi
    ((hit == want)) && picked+=("$pid")
  done
  ((${#picked[@]})) || return 0
  kill -TERM "${picked[@]}" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  for pid in "${picked[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  done
}

# stop_node NAME: `ray stop`'s order: the raylet, then the other components, the GCS last. The
# GCS and the autoscaler's monitor ignore SIGTERM while the others still run (each stop then
# waited STOP_TIMEOUT for the SIGKILL); in this order every process exits in seconds.
stop_node() {
  terminate_members "$1" '*/raylet/raylet *'
  terminate_members "$1" '*/gcs_server *' not
  stop_service "$1"
}

stop() {
  stop_node ray-node
  stop_node ray-head
}

status() {
  local rc=0
  auth_env
  role_status "$ROLES" head ray-head "GCS $GCS_ADDRESS  dashboard $DASHBOARD_URL  auth $AUTH_MODE" ||
    rc=3
  role_status "$ROLES" node ray-node "alive nodes: $(alive_nodes 2>/dev/null || echo '?')" || rc=3
  return "$rc"
}

env_exports() {
  echo "export RAY_ADDRESS=$GCS_ADDRESS"
  # Keeps ray.init(address=...) on 127.0.0.1 instead of the machine's outward address.
  bind_host_is_loopback && echo "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
  echo "export RAY_API_SERVER_ADDRESS=$DASHBOARD_URL"
  if [[ "$AUTH_MODE" == token ]]; then
    echo "export RAY_AUTH_MODE=token"
    echo "export RAY_AUTH_TOKEN_PATH=$TOKEN_FILE"
  fi
}

dispatch "${1:-}"
