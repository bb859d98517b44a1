#!/usr/bin/env bash
# Run, or run again, one of the one-shot jobs of infra/k8s/jobs.
#
# RayJobs and SparkApplications have fixed names (kustomize cannot render generateName), and a
# finished one stays until its TTL: `kubectl apply` of the same manifest then changes nothing
# and runs nothing. This script deletes the finished run of that name first (refusing while it
# is still running, unless --force) and applies the manifest anew, with the image of
# image/kustomization.yaml. The logs of a deleted run are gone: MLflow keeps the training runs.
#
# usage: infra/k8s/run-job.sh [--force] etl|train|train-gpu|score
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
namespace="${ISREC_NAMESPACE:-isrec}"

usage() {
  echo "usage: $0 [--force] etl|train|train-gpu|score" >&2
  exit 2
}

force=0
if [[ "${1:-}" == --force ]]; then
  force=1
  shift
fi
case "${1:-}" in
  etl) kind=sparkapplication name=isrec-etl state='{.status.applicationState.state}' ;;
  score) kind=sparkapplication name=isrec-score state='{.status.applicationState.state}' ;;
  train) kind=rayjob name=isrec-train state='{.status.jobDeploymentStatus}' ;;
  train-gpu) kind=rayjob name=isrec-train-gpu state='{.status.jobDeploymentStatus}' ;;
  *) usage ;;
esac

if current="$(kubectl -n "$namespace" get "$kind" "$name" -o jsonpath="$state" 2>/dev/null)"; then
  case "$current" in
    COMPLETED | FAILED | SUBMISSION_FAILED | INVALIDATING | Complete | Failed | "") ;;
    *)
      if ((!force)); then
        echo "error: $kind/$name is $current; wait for it or pass --force" >&2
        exit 1
      fi
      ;;
  esac
  echo "deleting the previous $kind/$name (${current:-no state})"
  kubectl -n "$namespace" delete "$kind" "$name" --wait=true
fi
kubectl apply -k "$here/jobs" -l "app.kubernetes.io/name=$name"
echo "follow it: kubectl -n $namespace get $kind $name -w"
