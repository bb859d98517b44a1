#!/usr/bin/env bash
# An S3-compatible object store on 127.0.0.1: SeaweedFS (Apache-2.0) master, volume, filer and
# S3 gateway in one `weed server` process, with one access key enforced and the buckets in
# ISREC_S3_BUCKETS created at start. The lake (s3a:// for Spark, s3:// for the rest) and Ray
# Train's storage can live there: `eval "$(infra/local/s3.sh env)"` points every client at it.
#
# SeaweedFS ships no PyPI or Debian package, so `install` builds the pinned release from the Go
# module proxy once (~10 min on 2 cores; later runs reuse the binary and Go's caches).
#
# usage: infra/local/s3.sh install|start|stop|status|env
set -euo pipefail
SERVICE=s3
# shellcheck source=infra/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SEAWEEDFS_MODULE=github.com/seaweedfs/seaweedfs
SEAWEEDFS_VERSION="${ISREC_SEAWEEDFS_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}"
TOOLS_DIR="${ISREC_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/isrec/tools}"
WEED="${ISREC_WEED:-$TOOLS_DIR/seaweedfs-$SEAWEEDFS_VERSION/weed}"
PORT="${ISREC_S3_PORT:-8333}"
MASTER_PORT="${ISREC_S3_MASTER_PORT:-9333}"
VOLUME_PORT="${ISREC_S3_VOLUME_PORT:-9340}"
FILER_PORT="${ISREC_S3_FILER_PORT:-8888}"
ACCESS_KEY="${ISREC_S3_ACCESS_KEY:-isrec}"
SECRET_KEY="${ISREC_S3_SECRET_KEY:-isrec-local-secret}"
REGION="${ISREC_S3_REGION:-us-east-1}"
BUCKETS="${ISREC_S3_BUCKETS:-isrec}"
S3_STATE="$STATE_DIR/s3"
ENDPOINT="http://$BIND_HOST:$PORT"

usage() {
  cat <<EOF
usage: $0 install|start|stop|status|env

SeaweedFS S3 gateway at $ENDPOINT (buckets: $BUCKETS; access key $ACCESS_KEY)
  binary:  $WEED ($SEAWEEDFS_MODULE@$SEAWEEDFS_VERSION)
  data:    $S3_STATE
State (PID, logs): $STATE_DIR

Environment overrides: ISREC_CLUSTER_DIR, ISREC_TOOLS_DIR, ISREC_WEED, ISREC_SEAWEEDFS_VERSION,
ISREC_S3_PORT, ISREC_S3_MASTER_PORT, ISREC_S3_VOLUME_PORT, ISREC_S3_FILER_PORT,
ISREC_S3_ACCESS_KEY, ISREC_S3_SECRET_KEY, ISREC_S3_REGION, ISREC_S3_BUCKETS (comma-separated),
ISREC_START_TIMEOUT, ISREC_STOP_TIMEOUT.
EOF
}

install() {
  if [[ -x "$WEED" ]]; then
    log "SeaweedFS present: $WEED"
    return 0
  fi
  command -v go >/dev/null 2>&1 || die "Go is needed to build SeaweedFS (or set ISREC_WEED)"
  local src build
  log "building $SEAWEEDFS_MODULE@$SEAWEEDFS_VERSION (once; ~10 min on 2 cores)"
  src="$(GOFLAGS=-mod=mod go mod download -json "$SEAWEEDFS_MODULE@$SEAWEEDFS_VERSION" |
    "$ISREC_PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
  # The module has replace directives, so `go install mod@version` refuses it: build a copy.
  build="$(mktemp -d)"
  cp -r "$src/." "$build/"
  chmod -R u+w "$build"
  mkdir -p "$(dirname "$WEED")"
  # Go lists every module it downloads (hundreds): keep that in a log, show it on failure.
  (cd "$build" && go build -trimpath -o "$WEED.tmp" ./weed) >"$build.log" 2>&1 || {
    tail -n 40 "$build.log" >&2
    rm -rf "$build" "$build.log"
    die "SeaweedFS build failed"
  }
  rm -rf "$build" "$build.log"
  mv "$WEED.tmp" "$WEED"
  log "built $WEED"
}

healthy() { http_get "$ENDPOINT/healthz" >/dev/null; }

write_identity() {
  # One identity, so requests signed with any other key are refused.
  cat >"$S3_STATE/s3.json" <<EOF
{"identities": [{"name": "isrec",
  "credentials": [{"accessKey": "$ACCESS_KEY", "secretKey": "$SECRET_KEY"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
EOF
  chmod 600 "$S3_STATE/s3.json"
}

create_buckets() {
  local bucket
  for bucket in ${BUCKETS//,/ }; do
    AWS_ACCESS_KEY_ID="$ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$SECRET_KEY" \
      "$ISREC_PYTHON" - "$BIND_HOST:$PORT" "$REGION" "$bucket" <<'PY' || return 1
import sys

import pyarrow.fs as pafs

endpoint, region, bucket = sys.argv[1:]
fs = pafs.S3FileSystem(
    endpoint_override=endpoint, scheme="http", region=region, allow_bucket_creation=True
)
if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
    fs.create_dir(bucket)
PY
    log "bucket s3://$bucket"
  done
}

start() {
  if service_alive s3; then
    log "already running: $ENDPOINT"
    return 0
  fi
  [[ -x "$WEED" ]] || die "no SeaweedFS binary at $WEED: run '$0 install' first"
  rm -f "$(pid_file s3)"
  require_free_ports "$PORT" "$MASTER_PORT" "$VOLUME_PORT" "$FILER_PORT" \
    $((PORT + 10000)) $((MASTER_PORT + 10000)) $((VOLUME_PORT + 10000)) $((FILER_PORT + 10000))
  mkdir -p "$S3_STATE/data"
  write_identity
  log "starting SeaweedFS S3 gateway on $ENDPOINT (data $S3_STATE/data)"
  # The Iceberg and Lance side servers are off: only S3 is needed.
  launch s3 "$WEED" server -dir="$S3_STATE/data" -ip="$BIND_HOST" -ip.bind="$BIND_HOST" \
    -master.port="$MASTER_PORT" -volume.port="$VOLUME_PORT" -filer -filer.port="$FILER_PORT" \
    -s3 -s3.port="$PORT" -s3.config="$S3_STATE/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 \
    -master.volumeSizeLimitMB=64 -volume.max=20 -volume.preStopSeconds=1 -iam=false -webdav=false ||
    failed_start
  wait_until s3 "$ENDPOINT/healthz" healthy || failed_start
  # The gateway answers before the master has volumes to write to: retry the first writes.
  local deadline=$((SECONDS + START_TIMEOUT))
  until create_buckets 2>>"$(log_file s3)"; do
    ((SECONDS < deadline)) || failed_start
    sleep 2
  done
  record_members s3
  log "S3 endpoint: $ENDPOINT"
  echo "$ENDPOINT"
}

failed_start() {
  stop >/dev/null
  die "SeaweedFS did not start (log: $(log_file s3))"
}

stop() { stop_service s3; }

status() {
  print_status_line s3 "$ENDPOINT  health: $(healthy && echo OK || echo '-')"
  service_alive s3 || return 3
}

env_exports() {
  cat <<EOF
export AWS_ENDPOINT_URL_S3=$ENDPOINT
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
export AWS_REGION=$REGION
EOF
}

dispatch "${1:-}" install
