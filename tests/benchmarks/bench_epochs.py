"""Why does valid AUC fall after the first epoch? Valid curves of training variants, in-process.

One process, one thread, no Ray: the worker's model, output priors and Adam over the lake's
train split (``--batch-size`` rows a step: the train job's 2 workers x 256 by default), valid
metrics ``--evals-per-epoch`` times an epoch. ``--variants`` lists trainings from the same
initial weights, ``;``-separated, each ``NAME:KEY=VALUE,...`` with keys

- any model hyperparameter (train/config.py), e.g. ``embedding_l2=0.01``, ``dropout=0.3``;
- ``lr`` (every parameter) and ``embedding_lr`` (the embedding tables only);
- ``drop``: fields (``+``-joined) set to the unknown id in every batch, e.g. ``user+ad``;
- ``reinit``: re-initialise everything but the embedding tables (and reset Adam) before each
  epoch after the first (the multi-epoch scheme of Liu et al. 2024, "MEDA").

Prints one table (valid CTR AUC and log loss per evaluation) and writes JSON. Not run by CI.

    python tests/benchmarks/bench_epochs.py --lake LAKE --model rnn_mtl --epochs 4 \\
        --variants "base:;l2:embedding_l2=0.01;no_ids:drop=user+ad"
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch
from benchmark_report import Report

from etl.cli import parse
from etl.delta_log import snapshot_splits
from etl.features import UNKNOWN_ID
from etl.spec import FeatureSpec
from train.data import label_priors, make_loader
from train.metrics import evaluate
from train.models import build_model
from train.train_config import TrainConfig

_DEFAULTS = TrainConfig()
RUN_KEYS = ("lr", "embedding_lr", "drop", "reinit")  # variant keys that are not model params


@dataclass
class BenchEpochsConfig:
    lake: str = field(default="", metadata={"help": "lake written by jobs/etl.py"})
    model: str = "rnn_mtl"
    epochs: int = 4
    evals_per_epoch: int = field(default=1, metadata={"help": "valid evaluations an epoch"})
    batch_size: int = field(default=2 * _DEFAULTS.batch_size, metadata={"help": "rows a step"})
    seed: int = 0
    variants: str = field(
        default="base:", metadata={"help": "NAME:KEY=VALUE,... variants, ';'-separated"}
    )
    out: str = "data/bench/bench_epochs.json"


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, settings = text.partition(":")
    pairs = [s.partition("=") for s in settings.split(",") if s]
    return name, {k: v for k, _, v in pairs}


class Study:
    """One variant's training: model, optimizer and the batches it sees."""

    def __init__(self, bench: BenchEpochsConfig, spec: FeatureSpec, files, settings) -> None:
        self.bench, self.spec, self.files, self.settings = bench, spec, files, settings
        params = {k: v for k, v in settings.items() if k not in RUN_KEYS}
        torch.manual_seed(bench.seed)
        self.model = build_model(bench.model, spec, params)
        self.priors = label_priors(files["train"])
        self.model.set_priors(self.priors)
        self.drop = [f for f in settings.get("drop", "").split("+") if f]
        self.optimizer = self.new_optimizer()

    def new_optimizer(self) -> torch.optim.Optimizer:
        lr = float(self.settings.get("lr", _DEFAULTS.lr))
        tables = [p for n, p in self.model.named_parameters() if ".tables." in n]
        rest = [p for n, p in self.model.named_parameters() if ".tables." not in n]
        embedding_lr = float(self.settings.get("embedding_lr", lr))
        return torch.optim.Adam([{"params": tables, "lr": embedding_lr}, {"params": rest}], lr=lr)

    def batches(self, split: str, epoch: int = 0):
        size = self.bench.batch_size if split == "train" else 8192
        loader = make_loader(
            self.spec, self.files[split], "pyarrow", size, seed=self.bench.seed, epoch=epoch,
            shuffle=split == "train",
        )  # fmt: skip
        for batch in loader:
            for name in self.drop:
                batch[name] = torch.full_like(batch[name], UNKNOWN_ID)
            yield batch

    def reinit_dense(self) -> None:
        for module in self.model.modules():
            if hasattr(module, "tables") or module is self.model:
                continue  # FeatureEmbedding.reset_parameters would reset the tables too
            if hasattr(module, "reset_parameters") and not isinstance(module, torch.nn.Embedding):
                module.reset_parameters()
        self.model.set_priors(self.priors)
        self.optimizer = self.new_optimizer()

    def step(self, batch) -> float:
        self.model.train()
        out = {k: v.float() for k, v in self.model(batch).items()}
        loss = self.model.loss(out, batch)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def valid(self) -> dict[str, float]:
        self.model.eval()
        keys = ("pctr", "pcvr", "pctcvr", "click", "conversion", "user")
        parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        for batch in self.batches("valid"):
            out = self.model(batch) | {k: batch[k] for k in ("click", "conversion", "user")}
            for k in keys:
                parts[k].append(out[k].numpy())
        rows = {k: np.concatenate(v) for k, v in parts.items()}
        metrics = evaluate(rows, rows, rows["user"])
        return {k: metrics[k] for k in ("ctr_auc", "ctcvr_auc", "logloss")}


def run_variant(bench: BenchEpochsConfig, spec, files, settings) -> list[dict[str, float]]:
    study = Study(bench, spec, files, settings)
    steps = sum(1 for _ in make_loader(spec, files["train"], "pyarrow", bench.batch_size))
    every = max(steps // bench.evals_per_epoch, 1)
    curve = []
    for epoch in range(bench.epochs):
        if epoch and "reinit" in settings:
            study.reinit_dense()
        for step, batch in enumerate(study.batches("train", epoch), start=1):
            study.step(batch)
            if step % every == 0 and steps - step >= every // 2 or step == steps:
                curve.append({"epoch": round(epoch + step / steps, 2), **study.valid()})
    return curve


def table(curves: dict[str, list[dict[str, float]]]) -> str:
    points = [row["epoch"] for row in next(iter(curves.values()))]
    lines = ["| variant | " + " | ".join(f"epoch {p:g}" for p in points) + " | best (epoch) |"]
    lines.append("|" + " --- |" * (len(points) + 2))
    for name, curve in curves.items():
        best = max(curve, key=lambda r: r["ctr_auc"])
        cells = [f"{r['ctr_auc']:.4f} / {r['logloss']:.4f}" for r in curve]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {best['ctr_auc']:.4f} ({best['epoch']:g}) |"
        )
    return "valid CTR AUC / valid log loss (CTR + CTCVR)\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    bench = parse(BenchEpochsConfig, argv, description=__doc__.split("\n")[0])
    torch.set_num_threads(1)
    spec = FeatureSpec.load(bench.lake)
    files = snapshot_splits(bench.lake, spec)
    variants = dict(parse_variant(v) for v in bench.variants.split(";") if v)
    report, curves = Report(bench), {}
    for name, settings in variants.items():
        curves[name] = run_variant(bench, spec, files, settings)
        print(name, json.dumps(curves[name]), flush=True)
    print()
    print(table(curves))
    report.write(bench.out, variants=variants, curves=curves)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
