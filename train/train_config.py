"""Training configuration: a dataclass with defaults and the one place defining the train CLI.

Every field is a ``--kebab-case`` option of jobs/train.py (through etl/cli.py, with
``--config FILE``); model hyperparameters go through repeatable ``--param KEY=VALUE`` (coerced
by train.config.resolve_config, e.g. ``--param tower_hidden=64,32``). Fields whose help is
``None`` are test hooks, hidden from --help. The quickstart trains with these defaults but
for fewer epochs and a shorter history (train/quickstart.py's QuickstartConfig says why).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from etl import cli
from etl.project import DATA_DIR
from train.metrics import EARLY_STOP_METRIC

DEFAULT_STORAGE = str(DATA_DIR / "ray_results")
LOADERS = ("petastorm", "pyarrow")


@dataclass
class TrainConfig:
    lake: str = field(
        default="", metadata={"help": "lake written by jobs/etl.py: folder or s3:// URI"}
    )
    model: str = field(default="rnn_mtl", metadata={"help": "model name (train.models)"})
    model_params: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "model hyperparameters (coerced by train.config.resolve_config)",
            "option": cli.KeyValues("--param", "model_params"),
        },
    )
    num_workers: int = field(default=2, metadata={"help": "Ray Train workers (DDP ranks)"})
    use_gpu: bool = field(default=False, metadata={"help": "one GPU per worker, NCCL, bf16"})
    cpus_per_worker: int = field(default=1, metadata={"help": "CPUs reserved per worker"})
    epochs: int = field(default=5, metadata={"help": "maximum epochs"})
    # 256 x 2 workers: ~94 steps an epoch on a 2,000-user world, ~940 on 20,000 (24 train rows a
    # user); at 1024 a small world gave ~23 steps an epoch (README "Training defaults")
    batch_size: int = field(default=256, metadata={"help": "rows per step and worker"})
    eval_batch_size: int = field(default=8192, metadata={"help": "rows per eval batch"})
    lr: float = field(default=3e-3, metadata={"help": "Adam learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})
    seed: int = field(default=0, metadata={"help": "first seed (weights, shuffle)"})
    seeds: int = field(default=1, metadata={"help": "runs with seeds seed..seed+N-1"})
    patience: int = field(
        default=2, metadata={"help": "stop after N epochs without a better valid metric (0: off)"}
    )
    early_stop_metric: str = field(
        default=EARLY_STOP_METRIC,
        metadata={"help": "valid metric of early stopping, in its direction (train.metrics)"},
    )
    loader: str = field(
        default="petastorm", metadata={"help": "data loader backend", "choices": LOADERS}
    )
    shuffle_buffer: int = field(default=100_000, metadata={"help": "rows in the shuffle buffer"})
    train_days: int = field(
        default=0,
        metadata={
            "help": "train on the latest N days of the train split only (0: all); with "
            "--init-from, N=1 is one pass over each day, as a daily retraining"
        },
    )
    max_steps_per_epoch: int = field(
        default=0, metadata={"help": "cap on steps per epoch (0: a full pass)"}
    )
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on GPU"})
    find_unused_parameters: bool = field(
        default=False, metadata={"help": "DDP find_unused_parameters"}
    )
    storage_path: str = field(
        default=DEFAULT_STORAGE,
        metadata={"help": "Ray Train storage (checkpoints, predictions): folder or s3:// URI"},
    )
    name: str = field(default="", metadata={"help": "run name (default: <model>-<time>)"})
    max_failures: int = field(
        default=2, metadata={"help": "worker-group restarts from the last checkpoint"}
    )
    keep_checkpoints: int = field(
        default=2, metadata={"help": "checkpoints kept (the best and the latest always)"}
    )
    ray_address: str = field(
        default="", metadata={"help": "Ray cluster to join (default: RAY_ADDRESS, else local)"}
    )
    ray_num_cpus: int = field(default=0, metadata={"help": "CPUs of a local Ray cluster (0: all)"})
    log_every: int = field(default=200, metadata={"help": "log a progress line every N steps"})
    experiment: str = field(default="isrec", metadata={"help": "MLflow experiment"})
    tracking_uri: str = field(
        default="",
        metadata={
            "help": "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else "
            "sqlite under data/mlflow)"
        },
    )
    track: bool = field(default=True, metadata={"help": "log the run(s) to MLflow"})
    register: bool = field(
        default=True, metadata={"help": "register the best seed as isrec-<model>@challenger"}
    )
    init_from: str = field(
        default="",
        metadata={
            "help": "warm start from an earlier model's weights: a checkpoint folder or a "
            "models:/ or runs:/ URI (ids must be stable: train/warm_start.py)"
        },
    )
    # test hooks: the last rank writes its PID to hook_pid_file and sleeps at "EPOCH:STEP"
    hook_pid_file: str = field(default="", metadata={"help": None})
    hook_at: str = field(default="", metadata={"help": None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """TrainConfig from jobs/train.py's command line (default: sys.argv[1:])."""
    return cli.parse(
        TrainConfig,
        argv,
        description="Train a model on a lake with Ray Train",
        config_file=True,
    )
