# shellcheck shell=bash
# Shared helpers for infra/local/*.sh (sourced, not executed).
#
# Every service is started as the leader of a new session (setsid), so the recorded PID is also
# the session id of everything the service spawns. A PID file holds "PID STARTTIME" (STARTTIME
# from /proc/PID/stat, so a reused PID is never mistaken for ours). Stopping signals exactly the
# processes of that session plus their descendants, never anything found by name.

ISREC_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE_DIR="${ISREC_CLUSTER_DIR:-$ISREC_ROOT/data/cluster}"
mkdir -p "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd)"
START_TIMEOUT="${ISREC_START_TIMEOUT:-180}"
STOP_TIMEOUT="${ISREC_STOP_TIMEOUT:-15}"
# The address every service binds to and advertises: loopback unless ISREC_BIND_HOST names one
# of this host's addresses that the other hosts reach (a cluster across machines; tests/
# test_two_hosts.py uses the addresses of a network namespace).
BIND_HOST="${ISREC_BIND_HOST:-127.0.0.1}"

# The project's virtual environment provides spark-class, ray and mlflow.
if [[ -z "${ISREC_PYTHON:-}" ]]; then
  if [[ -x "$ISREC_ROOT/.venv/bin/python" ]]; then
    ISREC_PYTHON="$ISREC_ROOT/.venv/bin/python"
  else
    ISREC_PYTHON="$(command -v python3 || true)"
  fi
fi
[[ -n "$ISREC_PYTHON" && -x "$ISREC_PYTHON" ]] || {
  echo "error: no python found (set ISREC_PYTHON or run 'make install')" >&2
  exit 1
}
ISREC_BIN="$(dirname "$ISREC_PYTHON")"
export PATH="$ISREC_BIN:$PATH"

# The services start a dozen Python processes that import ray, mlflow and pyspark: let Python
# keep their compiled bytecode (__pycache__ in the environment) instead of recompiling those
# packages in every process, which on a busy 2-core machine makes Ray miss its startup deadlines.
unset PYTHONDONTWRITEBYTECODE

# Telemetry off: no service started here reports usage anywhere.
export MLFLOW_DISABLE_TELEMETRY=true
export RAY_USAGE_STATS_ENABLED=0
export DO_NOT_TRACK=1

SERVICE="${SERVICE:-isrec}"

log() { printf '[%s] %s\n' "$SERVICE" "$*"; }
warn() { printf '[%s] error: %s\n' "$SERVICE" "$*" >&2; }
die() {
  warn "$@"
  exit 1
}

pid_file() { printf '%s/%s.pid' "$STATE_DIR" "$1"; }
log_file() { printf '%s/logs/%s.log' "$STATE_DIR" "$1"; }

# Start time of a live process in clock ticks since boot (field 22 of /proc/PID/stat); nothing
# for a process that is gone or a zombie (an exited child nobody has reaped yet).
proc_starttime() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
  # The command name (field 2) may contain spaces: drop everything up to its closing ')'.
  stat="${stat##*) }"
  awk '$1 != "Z" {print $20}' <<<"$stat"
}

# PIDs of session SID and of all descendants of its members, one per line.
tree_pids() {
  ps -e -o pid=,ppid=,sid=,stat= | awk -v s="$1" '
    $4 ~ /^Z/ { next }
    { n++; pid[n] = $1; ppid[n] = $2; sid[n] = $3 }
    END {
      for (i = 1; i <= n; i++) if (sid[i] == s) mark[pid[i]] = 1
      do {
        changed = 0
        for (i = 1; i <= n; i++)
          if (!(pid[i] in mark) && (ppid[i] in mark)) { mark[pid[i]] = 1; changed = 1 }
      } while (changed)
      for (p in mark) print p
    }'
}

# Processes that belong to the service recorded in PID file NAME (none if the file is stale).
service_pids() {
  local file sid start now
  file="$(pid_file "$1")"
  [[ -f "$file" ]] || return 0
  read -r sid start <"$file" || return 0
  now="$(proc_starttime "$sid")"
  # The leader's PID now belongs to another process: the session number can only be reused
  # once every member of our session is gone, so nothing of ours is left.
  if [[ -n "$now" && "$now" != "$start" ]]; then
    return 0
  fi
  tree_pids "$sid"
}

# True while any process of the service is alive.
service_alive() { [[ -n "$(service_pids "$1")" ]]; }

# launch NAME CMD...: run CMD as a new session leader in the background, logging to
# logs/NAME.log, and record its PID and start time in NAME.pid.
launch() {
  local name="$1" pid start
  shift
  mkdir -p "$STATE_DIR/logs"
  # A non-interactive shell puts background jobs in its own process group, so setsid does not
  # need to fork: $! is the PID of the new session leader.
  setsid "$@" >>"$(log_file "$name")" 2>&1 </dev/null &
  pid=$!
  start=""
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    start="$(proc_starttime "$pid")"
    [[ -n "$start" ]] && break
    sleep 0.1
  done
  if [[ -z "$start" ]]; then
    tail -n 30 "$(log_file "$name")" >&2 || true
    warn "$name exited at once; log: $(log_file "$name")"
    return 1
  fi
  printf '%s %s\n' "$pid" "$start" >"$(pid_file "$name")"
}

# Record the PIDs that make up a running service (for status and for the reader's benefit).
record_members() {
  service_pids "$1" | sort -n >"$STATE_DIR/$1.pids"
}

# stop_service NAME: SIGTERM every process of the service, SIGKILL what is left after
# STOP_TIMEOUT seconds, then remove its PID files.
stop_service() {
  local name="$1" pids pid deadline
  local -A seen=() signalled=()
  pids="$(service_pids "$name")"
  if [[ -z "$pids" ]]; then
    rm -f "$(pid_file "$name")" "$STATE_DIR/$name.pids"
    log "$name is not running"
    return 0
  fi
  log "stopping $name (pids: $(tr '\n' ' ' <<<"$pids"))"
  deadline=$((SECONDS + STOP_TIMEOUT))
  while :; do
    # Remember every PID seen with its start time: a child orphaned by its parent's exit leaves
    # the tree, but is still ours while its start time is unchanged.
    for pid in $pids; do
      [[ -n "${seen[$pid]:-}" ]] || seen[$pid]="$(proc_starttime "$pid")"
    done
    pids="$(alive_of_seen)"
    [[ -z "$pids" ]] && break
    if ((SECONDS >= deadline)); then
      log "still running after ${STOP_TIMEOUT}s, sending SIGKILL to: $(tr '\n' ' ' <<<"$pids")"
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
      # A killed process is gone once the kernel has freed it: seconds on a loaded machine.
      for _ in 1 2 3 4 5 6 7 8 9 10; do
        sleep 1
        pids="$(alive_of_seen)"
        [[ -z "$pids" ]] && break
      done
      [[ -z "$pids" ]] && break
      die "could not stop $name: $(tr '\n' ' ' <<<"$pids")"
    fi
    for pid in $pids; do
      if [[ -z "${signalled[$pid]:-}" ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        signalled[$pid]=1
      fi
    done
    sleep 0.5
    pids="$( (service_pids "$name"; alive_of_seen) | sort -u)"
  done
  rm -f "$(pid_file "$name")" "$STATE_DIR/$name.pids"
  log "$name stopped"
}

# Helper of stop_service: the PIDs in `seen` still alive with the same start time.
alive_of_seen() {
  local pid
  for pid in "${!seen[@]}"; do
    [[ -n "${seen[$pid]}" && "$(proc_starttime "$pid")" == "${seen[$pid]}" ]] && echo "$pid"
  done
  return 0
}

# http_get URL [BEARER_TOKEN]: print the body; fail unless the answer is 2xx.
http_get() {
  if command -v curl >/dev/null 2>&1; then
    if [[ -n "${2:-}" ]]; then
      curl -fsS --max-time 5 -H "Authorization: Bearer $2" "$1" 2>/dev/null
    else
      curl -fsS --max-time 5 "$1" 2>/dev/null
    fi
  else
    "$ISREC_PYTHON" - "$1" "${2:-}" <<'PY' 2>/dev/null
import sys
import urllib.request

req = urllib.request.Request(sys.argv[1])
if sys.argv[2]:
    req.add_header("Authorization", f"Bearer {sys.argv[2]}")
with urllib.request.urlopen(req, timeout=5) as resp:
    sys.stdout.write(resp.read().decode())
PY
  fi
}

# wait_until NAME DESCRIPTION CHECK...: run CHECK until it succeeds, for at most START_TIMEOUT
# seconds; give up early (showing the end of the log) if the service's processes are gone.
wait_until() {
  local name="$1" what="$2" deadline
  shift 2
  deadline=$((SECONDS + START_TIMEOUT))
  until "$@"; do
    if ! service_alive "$name"; then
      tail -n 30 "$(log_file "$name")" >&2 || true
      warn "$name exited before $what; log: $(log_file "$name")"
      return 1
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$(log_file "$name")" >&2 || true
      warn "$what: no answer after ${START_TIMEOUT}s (ISREC_START_TIMEOUT); log: $(log_file "$name")"
      return 1
    fi
    sleep 0.5
  done
}

# True when BIND_HOST is a loopback address (127.0.0.0/8, ::1, localhost).
bind_host_is_loopback() {
  [[ "$BIND_HOST" == 127.* || "$BIND_HOST" == ::1 || "$BIND_HOST" == localhost ]]
}

# has_role ROLES ROLE: true when the space- or comma-separated ROLES contain ROLE.
has_role() { [[ " ${1//,/ } " == *" $2 "* ]]; }

# Fail early with a clear message when a TCP port on BIND_HOST is already taken.
port_free() {
  ! (exec 3<>"/dev/tcp/$BIND_HOST/$1") 2>/dev/null
}

require_free_ports() {
  local port
  for port in "$@"; do
    port_free "$port" || die "port $BIND_HOST:$port is already in use (override it, see --help)"
  done
}

# role_status ROLES ROLE NAME DETAIL: the status line of service NAME when this host's ROLES
# include ROLE; fails (3) when that service is not running.
role_status() {
  has_role "$1" "$2" || return 0
  print_status_line "$3" "$4"
  service_alive "$3" || return 3
}

print_status_line() {
  local name="$1" detail="$2"
  if service_alive "$name"; then
    printf '%-14s running  pids: %s  %s\n' "$name" "$(service_pids "$name" | sort -n | tr '\n' ' ')" \
      "$detail"
  else
    printf '%-14s stopped\n' "$name"
  fi
}

# dispatch COMMAND [EXTRA...]: run the calling script's start, stop, status or env_exports
# function, or the function named COMMAND when it is one of EXTRA; anything else prints usage
# and exits 2.
dispatch() {
  local command="${1:-}" extra
  shift || true
  case "$command" in
    start | stop | status) "$command" ;;
    env) env_exports ;;
    -h | --help | help) usage ;;
    *)
      for extra in "$@"; do
        if [[ -n "$command" && "$command" == "$extra" ]]; then
          "$command"
          return
        fi
      done
      usage >&2
      exit 2
      ;;
  esac
}
