"""Peer libraries on exported rows: runs inside the peer virtual environment (see setup in
tests/benchmarks/peers.py), imports neither the project nor Spark, Ray or MLflow.

Reads EXPORT/export.json and EXPORT/{train,valid,test}.npz (written by peers.py from the
Delta snapshot), trains each requested peer model for ``epochs`` epochs with its library's own
training loop, and after every epoch writes the valid and test predictions
(OUT/<model>/epoch<k>_<split>.npz: pctr, pcvr, pctcvr in export row order) and the timings
(OUT/<model>/timing.json). peers.py scores them with the project's metric code and applies the
project's early-stopping rule.

- deepctr_deepfm, deepctr_xdeepfm, deepctr_din: DeepCTR-Torch models as single-task nets, like
  the project's baselines: a CTR net fit on all rows (click) and a CVR net fit on clicked rows
  (conversion), each with DeepCTR's ``fit``; pctcvr = pctr * pcvr.
- rechub_esmm: torch-rechub ESMM with its MTLTrainer (loss on CTR and CTCVR over all rows).
- rechub_mmoe: torch-rechub MMOE with its MTLTrainer; the CVR task's loss is masked to clicked
  rows (the project's convention; MTLTrainer's own BCE would train it on all rows).

Dense fields get the project's sign(x) * log1p(|x|) when the config says so. torch-rechub's
ESMM embeds sparse features only, so there each dense field becomes 16 quantile buckets (edges
from the train rows).

    python run_peers.py --export DIR --out DIR --config CONFIG.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SPLITS = ("train", "valid", "test")
DENSE_BUCKETS = 16
SPEED_STEPS = 20  # steps of the model-only throughput probe (in-memory batches, no loader)


def _offline_deepctr():
    """Import DeepCTR-Torch without its import-time version check, which sends a request to
    a package registry from a thread (this benchmark makes no network calls)."""
    import requests

    requests.get = lambda *a, **k: types.SimpleNamespace(status_code=0, text="{}")
    import deepctr_torch

    return deepctr_torch


def load(export: Path) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    meta = json.loads((export / "export.json").read_text())
    data = {s: dict(np.load(export / f"{s}.npz")) for s in SPLITS}
    return meta, data


def model_inputs(meta: dict, rows: dict[str, np.ndarray], log1p: bool) -> dict[str, np.ndarray]:
    """Feature columns as the peers take them: int64 ids, (N, L) sequences, float dense."""
    x = {}
    for f in meta["fields"]:
        values = rows[f["name"]]
        if f["kind"] == "dense":
            v = values.astype(np.float32)
            x[f["name"]] = np.sign(v) * np.log1p(np.abs(v)) if log1p else v
        else:
            x[f["name"]] = values.astype(np.int64)
    x[meta["length_field"]] = rows[meta["length_field"]].astype(np.int64)
    return x


def vocab_size(meta: dict, f: dict) -> int:
    return max(meta["vocab_sizes"][f["vocab"]], 2)


# --- DeepCTR-Torch ------------------------------------------------------------------------------
def deepctr_columns(meta: dict, dim: int, din: bool, share: bool) -> tuple[list, list, dict]:
    """(feature columns, DIN history list, input aliases). DIN pairs a sequence with the sparse
    field of its vocabulary (the name match preferred, as the project's DIN does); DeepCTR finds
    the pair by name, so such a sequence is fed as ``hist_<candidate>`` (an alias), first and in
    the candidates' order. ``share``: fields of one vocabulary share a table (DeepCTR's xDeepFM
    cannot: its CIN counts tables, not fields)."""
    inputs = _offline_deepctr().inputs

    def table(f: dict) -> str:
        return f["vocab"] if share else f["name"]

    sparse = [f for f in meta["fields"] if f["kind"] == "sparse"]
    seqs = [dict(f) for f in meta["fields"] if f["kind"] == "sequence"]
    history, aliases = [], {}
    for s in seqs if din else []:
        same = [f["name"] for f in sparse if f["vocab"] == s["vocab"]]
        bare = s["name"].removeprefix("hist_")
        cand = bare if bare in same else (same[0] if same else None)
        if cand is not None and cand not in history:
            history.append(cand)
            aliases["hist_" + cand] = s["name"]
            s["name"] = "hist_" + cand
    rank = {"hist_" + name: i for i, name in enumerate(history)}
    seqs.sort(key=lambda s: rank.get(s["name"], len(rank)))
    cols = [
        inputs.SparseFeat(f["name"], vocab_size(meta, f), dim, embedding_name=table(f))
        for f in sparse
    ]
    cols += [inputs.DenseFeat(f["name"], 1) for f in meta["fields"] if f["kind"] == "dense"]
    cols += [
        inputs.VarLenSparseFeat(
            inputs.SparseFeat(s["name"], vocab_size(meta, s), dim, embedding_name=table(s)),
            meta["max_len"],
            "mean",
            meta["length_field"],
        )
        for s in seqs
    ]
    return cols, history, aliases


def deepctr_net(name: str, meta: dict, p: dict, seed: int):
    models = _offline_deepctr().models
    cols, history, aliases = deepctr_columns(
        meta, p["embedding_dim"], name == "din", name != "xdeepfm"
    )
    common = {"l2_reg_embedding": 0.0, "seed": seed, "device": "cpu"}  # init: DeepCTR's own
    common |= {"dnn_dropout": p["dropout"], "dnn_hidden_units": tuple(p["dnn_hidden"])}
    if name == "deepfm":
        net = models.DeepFM(cols, cols, l2_reg_linear=0.0, **common)
    elif name == "xdeepfm":
        net = models.xDeepFM(
            cols,
            cols,
            cin_layer_size=tuple(p["cin_layers"]),
            cin_split_half=p["cin_split_half"],
            l2_reg_linear=0.0,
            **common,
        )
    else:
        if not history:
            raise ValueError("din: no sequence field hist_<f> matches a sparse field <f>")
        net = models.DIN(cols, history, att_hidden_size=tuple(p["attention_hidden"]), **common)
    net.compile(torch.optim.Adam(net.parameters(), lr=p["lr"]), "binary_crossentropy")
    net.input_aliases = aliases
    return net


class DeepCTRPair:
    """Two single-task DeepCTR nets: CTR on all rows, CVR on clicked rows."""

    def __init__(self, arch: str, meta: dict, p: dict, seed: int) -> None:
        self.p = p
        self.ctr = deepctr_net(arch, meta, p, seed)
        self.cvr = deepctr_net(arch, meta, p, seed + 1)

    def aliased(self, x: dict) -> dict:
        return x | {new: x[old] for new, old in self.ctr.input_aliases.items()}

    def train_epoch(self, x: dict, y: dict) -> None:
        x = self.aliased(x)
        clicked = y["click"] > 0.5
        bs = self.p["batch_size"]
        self.ctr.fit(x, y["click"], batch_size=bs, epochs=1, verbose=0)
        cvr_x = {k: v[clicked] for k, v in x.items()}
        self.cvr.fit(cvr_x, y["conversion"][clicked], batch_size=bs, epochs=1, verbose=0)

    def predict(self, x: dict) -> dict[str, np.ndarray]:
        bs, x = self.p["eval_batch_size"], self.aliased(x)
        pctr = self.ctr.predict(x, bs).ravel()
        pcvr = self.cvr.predict(x, bs).ravel()
        return {"pctr": pctr, "pcvr": pcvr, "pctcvr": pctr * pcvr}

    def speed_probe(self, x: dict, y: dict) -> float:
        """Samples/s of both nets on in-memory batches (DeepCTR's concatenated input)."""
        columns = _columns(self.ctr, self.aliased(x))
        xs = [torch.from_numpy(np.concatenate(columns, axis=-1)).float()]
        labels = {
            "click": torch.from_numpy(y["click"]),
            "conversion": torch.from_numpy(y["conversion"]),
        }

        def step(index: torch.Tensor) -> None:
            batch = xs[0][index]
            for net, label in ((self.ctr, "click"), (self.cvr, "conversion")):
                loss = F.binary_cross_entropy(net(batch).squeeze(-1), labels[label][index])
                net.optim.zero_grad()
                loss.backward()
                net.optim.step()

        return _probe(step, len(xs[0]), self.p["batch_size"])


def _columns(net, x: dict) -> list[np.ndarray]:
    return [x[name].reshape(len(x[name]), -1) for name in net.feature_index]


# --- torch-rechub -------------------------------------------------------------------------------
def rechub_features(meta: dict, dim: int, bucketize: bool):
    from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature
    from torch_rechub.basic.initializers import RandomNormal

    init = RandomNormal(0.0, 1e-4)  # torch-rechub's default initializer
    owners: dict[str, str] = {}
    feats = []
    for f in meta["fields"]:
        if f["kind"] == "dense":
            if bucketize:
                feats.append(SparseFeature(f["name"], DENSE_BUCKETS + 1, dim, initializer=init))
            else:
                feats.append(DenseFeature(f["name"]))
            continue
        shared = owners.setdefault(f["vocab"], f["name"])
        shared = None if shared == f["name"] else shared
        kwargs = {"shared_with": shared, "padding_idx": 0, "initializer": init}
        if f["kind"] == "sparse":
            feats.append(SparseFeature(f["name"], vocab_size(meta, f), dim, **kwargs))
        else:
            feats.append(SequenceFeature(f["name"], vocab_size(meta, f), dim, "mean", **kwargs))
    return feats


def bucket_edges(meta: dict, train_x: dict) -> dict[str, np.ndarray]:
    qs = np.linspace(0, 1, DENSE_BUCKETS + 1)[1:-1]
    dense = [f["name"] for f in meta["fields"] if f["kind"] == "dense"]
    return {name: np.unique(np.quantile(train_x[name], qs)) for name in dense}


def masked_bce(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """BCE over rows whose label is not -1 (CVR: clicked rows only)."""
    keep = label >= 0
    if not keep.any():
        return pred.sum() * 0.0
    return F.binary_cross_entropy(pred[keep], label[keep])


class RecHubMTL:
    def __init__(self, arch: str, meta: dict, p: dict, seed: int, train_x: dict) -> None:
        from torch_rechub.models.multi_task import ESMM, MMOE
        from torch_rechub.trainers import MTLTrainer

        torch.manual_seed(seed)
        self.arch, self.p = arch, p
        self.edges = bucket_edges(meta, train_x) if arch == "esmm" else {}
        mlp = {"dropout": p["dropout"], "activation": p["activation"]}
        feats = rechub_features(meta, p["embedding_dim"], bucketize=arch == "esmm")
        if arch == "esmm":
            user = [f for f in feats if f.name.startswith("hist_")] or feats[:1]
            item = [f for f in feats if f not in user]
            tower = {"dims": list(p["tower_hidden"]), **mlp}
            self.model = ESMM(user, item, tower, tower)
        else:
            expert = {"dims": list(p["expert_hidden"]), **mlp}
            tower = {"dims": list(p["tower_hidden"]), **mlp}
            kinds = ["classification", "classification"]
            self.model = MMOE(feats, kinds, p["num_experts"], expert, [tower, tower])
        optimizer = {"lr": p["lr"], "weight_decay": 0.0}
        self.trainer = MTLTrainer(self.model, kinds_of(arch), optimizer_params=optimizer)
        if arch == "mmoe":
            self.trainer.loss_fns[1] = masked_bce

    def inputs(self, x: dict) -> dict[str, np.ndarray]:
        x = dict(x)
        for name, edges in self.edges.items():
            x[name] = np.searchsorted(edges, x[name], side="right").astype(np.int64) + 1
        return x

    def labels(self, y: dict) -> np.ndarray:
        click, conv = y["click"], y["conversion"]
        if self.arch == "esmm":  # MTLTrainer's ESMM order: cvr (unused), ctr, ctcvr
            return np.stack([conv, click, conv], axis=1).astype(np.float32)
        cvr = np.where(click > 0.5, conv, -1.0)
        return np.stack([click, cvr], axis=1).astype(np.float32)

    def train_epoch(self, x: dict, y: dict) -> None:
        from torch.utils.data import DataLoader
        from torch_rechub.utils.data import TorchDataset

        dataset = TorchDataset(self.inputs(x), self.labels(y))
        self.trainer.train_one_epoch(DataLoader(dataset, self.p["batch_size"], shuffle=True))

    def predict(self, x: dict) -> dict[str, np.ndarray]:
        tensors = {k: torch.from_numpy(v) for k, v in self.inputs(x).items()}
        n, bs, out = len(next(iter(tensors.values()))), self.p["eval_batch_size"], []
        self.model.eval()
        with torch.no_grad():
            for i in range(0, n, bs):
                out.append(self.model({k: v[i : i + bs] for k, v in tensors.items()}).numpy())
        pred = np.concatenate(out).astype(np.float64)
        if self.arch == "esmm":
            return {"pctr": pred[:, 1], "pcvr": pred[:, 0], "pctcvr": pred[:, 2]}
        return {"pctr": pred[:, 0], "pcvr": pred[:, 1], "pctcvr": pred[:, 0] * pred[:, 1]}

    def speed_probe(self, x: dict, y: dict) -> float:
        tensors = {k: torch.from_numpy(v) for k, v in self.inputs(x).items()}
        labels = torch.from_numpy(self.labels(y))
        self.model.train()

        def step(index: torch.Tensor) -> None:
            pred = self.model({k: v[index] for k, v in tensors.items()})
            ys = labels[index]
            losses = [fn(pred[:, i], ys[:, i]) for i, fn in enumerate(self.trainer.loss_fns)]
            loss = sum(losses[1:]) if self.arch == "esmm" else sum(losses) / len(losses)
            self.trainer.optimizer.zero_grad()
            loss.backward()
            self.trainer.optimizer.step()

        return _probe(step, len(labels), self.p["batch_size"])


def kinds_of(arch: str) -> list[str]:
    return ["classification"] * (3 if arch == "esmm" else 2)


def _probe(step, rows: int, batch_size: int) -> float:
    """Samples/s of ``step`` over SPEED_STEPS random batches (after one warm-up step)."""
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, rows, (batch_size,), generator=gen) for _ in range(SPEED_STEPS + 1)]
    step(batches[0])
    started = time.perf_counter()
    for index in batches[1:]:
        step(index)
    return SPEED_STEPS * batch_size / (time.perf_counter() - started)


# --- driver -------------------------------------------------------------------------------------
PEERS = {
    "deepctr_deepfm": ("deepctr-torch", "deepfm"),
    "deepctr_xdeepfm": ("deepctr-torch", "xdeepfm"),
    "deepctr_din": ("deepctr-torch", "din"),
    "rechub_esmm": ("torch-rechub", "esmm"),
    "rechub_mmoe": ("torch-rechub", "mmoe"),
}


def build(name: str, meta: dict, p: dict, seed: int, train_x: dict):
    library, arch = PEERS[name]
    if library == "deepctr-torch":
        return DeepCTRPair(arch, meta, p, seed)
    return RecHubMTL(arch, meta, p, seed, train_x)


def run_peer(name: str, meta: dict, data: dict, p: dict, seed: int, out: Path) -> dict:
    torch.manual_seed(seed)
    np.random.seed(seed)
    xs = {s: model_inputs(meta, data[s], p["dense_log1p"]) for s in SPLITS}
    ys = {s: {k: data[s][k].astype(np.float32) for k in ("click", "conversion")} for s in SPLITS}
    started = time.perf_counter()
    probe_model = build(name, meta, p, seed, xs["train"])
    model_only = probe_model.speed_probe(xs["train"], ys["train"])
    peer = build(name, meta, p, seed, xs["train"])
    out.mkdir(parents=True, exist_ok=True)
    epochs = []
    for epoch in range(p["epochs"]):
        t0 = time.perf_counter()
        peer.train_epoch(xs["train"], ys["train"])
        train_s = time.perf_counter() - t0
        for split in ("valid", "test"):
            pred = peer.predict(xs[split])
            np.savez(out / f"epoch{epoch}_{split}.npz", **pred)
        epochs.append(
            {"epoch": epoch, "train_seconds": train_s, "train_rows": len(ys["train"]["click"])}
        )
        print(f"{name} seed {seed} epoch {epoch}: {train_s:.1f}s", flush=True)
    timing = {
        "library": PEERS[name][0],
        "version": importlib.metadata.version(PEERS[name][0]),
        "arch": PEERS[name][1],
        "seed": seed,
        "epochs": epochs,
        "model_only_samples_per_s": model_only,
        "wall_seconds": time.perf_counter() - started,
        "threads": torch.get_num_threads(),
    }
    (out / "timing.json").write_text(json.dumps(timing, indent=2))
    return timing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--config", required=True, type=Path)
    args = parser.parse_args(argv)
    cfg = json.loads(args.config.read_text())
    torch.set_num_threads(cfg["threads"])
    meta, data = load(args.export)
    for name in cfg["peers"]:
        if name not in PEERS:
            print(f"error: unknown peer {name!r}; known: {sorted(PEERS)}", file=sys.stderr)
            return 2
    for name in cfg["peers"]:
        for seed in cfg["seeds"]:
            run_peer(name, meta, data, cfg["params"][name], seed, args.out / name / f"seed{seed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
