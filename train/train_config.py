"""Training configuration: a dataclass with defaults and the one place defining the train CLI.

Every field is a ``--kebab-case`` option of jobs/train.py; model hyperparameters go through
repeatable ``--param KEY=VALUE`` (coerced by train.config.resolve_config, e.g.
``--param tower_hidden=64,32``). Fields whose help is ``None`` are test hooks, hidden from --help.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STORAGE = str(PROJECT_ROOT / "data" / "ray_results")
LOADERS = ("petastorm", "pyarrow")


@dataclass
class TrainConfig:
    lake: str = field(
        default="", metadata={"help": "lake written by jobs/etl.py: folder or s3:// URI"}
    )
    model: str = field(default="rnn_mtl", metadata={"help": "model name (train.models)"})
    model_params: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "model hyperparameters (--param KEY=VALUE)"}
    )
    num_workers: int = field(default=2, metadata={"help": "Ray Train workers (DDP ranks)"})
    use_gpu: bool = field(default=False, metadata={"help": "one GPU per worker, NCCL, bf16"})
    cpus_per_worker: int = field(default=1, metadata={"help": "CPUs reserved per worker"})
    epochs: int = field(default=5, metadata={"help": "maximum epochs"})
    batch_size: int = field(default=1024, metadata={"help": "rows per step and worker"})
    eval_batch_size: int = field(default=8192, metadata={"help": "rows per eval batch"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})
    seed: int = field(default=0, metadata={"help": "first seed (weights, shuffle)"})
    seeds: int = field(default=1, metadata={"help": "runs with seeds seed..seed+N-1"})
    patience: int = field(
        default=2, metadata={"help": "stop after N epochs without a better valid metric (0: off)"}
    )
    early_stop_metric: str = field(
        default="ctcvr_auc", metadata={"help": "valid metric to maximize (train.metrics name)"}
    )
    loader: str = field(
        default="petastorm", metadata={"help": "data loader backend", "choices": LOADERS}
    )
    shuffle_buffer: int = field(default=100_000, metadata={"help": "rows in the shuffle buffer"})
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
    # test hooks: the last rank writes its PID to hook_pid_file and sleeps at "EPOCH:STEP"
    hook_pid_file: str = field(default="", metadata={"help": None})
    hook_at: str = field(default="", metadata={"help": None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Expose every TrainConfig field as a --kebab-case option (model_params as --param)."""
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text or argparse.SUPPRESS}
        if f.name == "model_params":
            parser.add_argument(
                "--param",
                dest="model_params",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help=f"{help_text}; repeatable",
            )
            continue
        if f.type in ("bool", bool):
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["default"] = f.default
        else:
            kwargs["type"] = {"int": int, "float": float}.get(str(f.type), str)
            kwargs["default"] = f.default if f.default is not MISSING else None
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kwargs)
    parser.add_argument(
        "--config", dest="config_file", help="JSON file of TrainConfig fields (flags override)"
    )


def parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"--param expects KEY=VALUE, got {item!r}")
        params[key.strip()] = value.strip()
    return params


def from_args(args: argparse.Namespace, argv: list[str] | None = None) -> TrainConfig:
    """Config from parsed args; with --config, the file's values apply unless a flag is given."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    values["model_params"] = parse_params(values["model_params"] or [])
    if getattr(args, "config_file", None):
        given = _flags_given(argv or [])
        from_file = json.loads(Path(args.config_file).read_text())
        unknown = sorted(set(from_file) - set(values))
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown config keys in {args.config_file}: {unknown}"
            )
        for key, value in from_file.items():
            if key not in given:
                values[key] = value
        if "model_params" in from_file and "model_params" in given:
            values["model_params"] = {**from_file["model_params"], **values["model_params"]}
    return TrainConfig(**values)


def _flags_given(argv: list[str]) -> set[str]:
    names = set()
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            names.add("model_params" if name == "param" else name.removeprefix("no_"))
    return names


def build_parser(
    description: str = "Train a model on a lake with Ray Train",
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    add_arguments(parser)
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return from_args(args, argv)
    except (argparse.ArgumentTypeError, OSError, json.JSONDecodeError) as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
