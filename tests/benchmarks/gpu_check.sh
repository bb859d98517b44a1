#!/usr/bin/env bash
# GPU check of the training path (not run by CI: CI has no GPU). Runs on a CUDA machine whose
# python3 has torch but not the rest of the stack, from the repository root:
#
#   GPU_DIR=.gpu bash tests/benchmarks/gpu_check.sh
#
# GPU_DIR holds site.tar.xz (Ray 2.55 and the packages Ray Train needs, unpacked onto
# PYTHONPATH), lake/ (a lake written by jobs/etl.py: samples + feature spec) and lake_path (the
# absolute path the lake was written at: its Delta manifests name absolute file paths).
# Building site.tar.xz here (x86-64, for the device's Python 3.12):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d whl ray==2.55.1 \
#     jsonschema jsonschema-specifications referencing rpds-py pydantic==2.12.5 \
#     pydantic-core==2.41.5 annotated-types typing-inspection tensorboardX pyarrow-hotfix
#   unzip every wheel into site/; drop ray/jars, ray/dashboard/client/build, ray/rllib, ray/serve
#   and *.map; strip ray/_raylet.so and the raylet/gcs_server binaries; tar -cJf site.tar.xz
#   -C site .  (about 25 MB; the carried tree is limited to 64 MiB)
# The loader is pyarrow: Petastorm 0.13.1 needs pyarrow < 13, which has no Python 3.12 wheel.
# Steps: (1) the real job, jobs/train.py --use-gpu (NCCL process group, bf16 autocast) on
# rnn_mtl; (2) bench_train.py on the GPU for every model; (3) the same on 2 CPU workers (gloo)
# of the same machine, as the baseline. Logs and JSON go to $OUT (default: data/bench/gpu).
set -euo pipefail
GPU_DIR=${GPU_DIR:-.gpu}
OUT=${OUT:-data/bench/gpu}
EPOCHS=${EPOCHS:-3}
STEPS=${STEPS:-60}
mkdir -p "$OUT"
export RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true

if [[ -f $GPU_DIR/site.tar.xz ]]; then
    mkdir -p /tmp/isrec-site
    tar -xJf "$GPU_DIR/site.tar.xz" -C /tmp/isrec-site
    export PYTHONPATH=/tmp/isrec-site:$PWD
fi
LAKE=$(cat "$GPU_DIR/lake_path")
if [[ ! -d $LAKE ]]; then
    mkdir -p "$(dirname "$LAKE")"
    cp -a "$GPU_DIR/lake" "$LAKE"
    # the copy may reorder mtimes; the reader refuses manifests older than the Delta commit
    find "$LAKE" -path '*_symlink_format_manifest*' -name manifest -exec touch {} +
fi
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c 'import ray, torch, pyarrow, numpy; print("ray", ray.__version__, "torch", torch.__version__,
"cuda", torch.version.cuda, "pyarrow", pyarrow.__version__, "numpy", numpy.__version__)' \
    | tee -a "$OUT/gpu.txt"

echo "== 1. jobs/train.py --use-gpu (rnn_mtl, 1 GPU worker, NCCL, bf16)"
$PY jobs/train.py --lake "$LAKE" --model rnn_mtl --num-workers 1 --use-gpu --no-track \
    --loader pyarrow --epochs "$EPOCHS" --batch-size 1024 --storage-path /tmp/isrec-rr \
    --log-every 0 2> "$OUT/train_gpu.log" | tail -1 | tee "$OUT/train_gpu.json"
grep -E "nccl|NCCL|backend|epoch" "$OUT/train_gpu.log" | head -20 || true

echo "== 2. bench_train.py, GPU"
$PY tests/benchmarks/bench_train.py --lake "$LAKE" --num-workers 1 --use-gpu --loader pyarrow \
    --epochs 2 --steps "$STEPS" --batch-size 4096 --out "$OUT/bench_train_gpu.json" 2>> "$OUT/bench.log"

echo "== 3. bench_train.py, 2 CPU workers (gloo), same machine"
$PY tests/benchmarks/bench_train.py --lake "$LAKE" --num-workers 2 --loader pyarrow \
    --epochs 2 --steps "$STEPS" --batch-size 4096 --out "$OUT/bench_train_cpu.json" 2>> "$OUT/bench.log"
