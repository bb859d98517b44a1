"""Models, layers and losses on a tiny synthetic FeatureSpec (pure torch, CPU, seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from etl.spec import FeatureSpec, FieldSpec
from train.config import resolve_config
from train.layers import GRUEncoder
from train.losses import ctcvr_bce, entire_space_loss
from train.models import MODEL_NAMES, build_model

MAX_LEN = 8
N_ROWS = 512
TINY = {"embedding_dim": 8, "dropout": 0.0}  # small and deterministic for tests
OUTPUT_KEYS = {"ctr_logit", "cvr_logit", "pctr", "pcvr", "pctcvr", "expected_views"}


def make_spec(with_sequences: bool = True) -> FeatureSpec:
    fields = [
        FieldSpec("user", "sparse", "user", 40),
        FieldSpec("item", "sparse", "item", 60),
        FieldSpec("cate", "sparse", "cate", 10),
        FieldSpec("brand", "sparse", "brand", 16),
        FieldSpec("pid", "sparse", "pid", 4),
        FieldSpec("price", "dense"),
    ]
    if with_sequences:
        fields += [
            FieldSpec("hist_item", "sequence", "item", 60),
            FieldSpec("hist_cate", "sequence", "cate", 10),
            FieldSpec("hist_btag", "sequence", "btag", 6),
        ]
    return FeatureSpec(source="test", max_len=MAX_LEN, fields=fields)


def make_batch(spec: FeatureSpec, n: int = N_ROWS, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random rows whose click depends on whether the candidate's category equals the MOST
    RECENT history category (order matters), conversion on the brand, views on the category."""
    rng = np.random.default_rng(seed)
    sizes = {f.name: f.vocab_size for f in spec.fields}
    batch = {f.name: rng.integers(2, sizes[f.name], n) for f in spec.sparse}
    batch["price"] = rng.lognormal(3.0, 1.0, n)
    lengths = rng.integers(0, MAX_LEN + 1, n)
    lengths[:8] = 0  # some rows have no history at all
    valid = np.arange(MAX_LEN)[None, :] < lengths[:, None]
    for f in spec.sequence:
        batch[f.name] = np.where(valid, rng.integers(2, f.vocab_size, (n, MAX_LEN)), 0)
    cate = batch["cate"]
    if spec.sequence:
        batch["hist_len"] = lengths
        last = batch["hist_cate"][np.arange(n), np.maximum(lengths - 1, 0)]
        batch["cate"] = cate = np.where(rng.random(n) < 0.4, last, cate)  # many matches
        match = (lengths > 0) & (last == cate)
    else:
        match = np.zeros(n, dtype=bool)
    click_logit = 3.0 * match + 0.3 * (cate % 3) - 1.0
    click = rng.random(n) < 1.0 / (1.0 + np.exp(-click_logit))
    buy = rng.random(n) < np.where(batch["brand"] % 2 == 0, 0.8, 0.1)
    views = rng.poisson(np.where(click, 0.5 + cate % 4, 0.2))
    batch.update(click=click, conversion=click & buy, n_future_views=views)
    batch["impression_id"] = np.arange(n) + 10**12  # keys: never features
    batch["user_key"] = rng.integers(0, 10**9, n)
    out = {}
    for k, v in batch.items():
        is_float = k == "price" or k in spec.labels
        out[k] = torch.as_tensor(v, dtype=torch.float32 if is_float else torch.long)
    return out


def subset(batch: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in batch.items()}


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return make_spec()


@pytest.fixture(scope="module")
def batch(spec: FeatureSpec) -> dict[str, torch.Tensor]:
    return make_batch(spec)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only contend on a shared 2-core box (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_contract(name: str, spec: FeatureSpec, batch: dict[str, torch.Tensor]) -> None:
    model = build_model(name, spec, TINY).eval()
    with torch.no_grad():
        out = model(batch)
    assert set(out) >= OUTPUT_KEYS
    for key in OUTPUT_KEYS:
        assert out[key].shape == (N_ROWS,), key
        assert torch.isfinite(out[key]).all(), key
    for key in ("pctr", "pcvr", "pctcvr"):
        assert ((out[key] >= 0) & (out[key] <= 1)).all()
    assert torch.equal(out["pctcvr"], out["pctr"] * out["pcvr"])
    assert (out["expected_views"] >= 0).all()
    assert model.has_exploration == (name == "rnn_mtl")
    if not model.has_exploration:
        assert torch.equal(out["expected_views"], torch.zeros(N_ROWS))
    assert model.name == name
    assert json.loads(json.dumps(model.config))["embedding_dim"] == 8
    losses = model.loss(out, batch)
    assert losses["loss"].dim() == 0 and torch.isfinite(losses["loss"])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_training_reduces_loss(
    name: str, spec: FeatureSpec, batch: dict[str, torch.Tensor]
) -> None:
    model = build_model(name, spec, TINY)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def full_loss() -> float:
        model.eval()
        with torch.no_grad():
            value = model.loss(model(batch), batch)["loss"].item()
        model.train()
        return value

    before = full_loss()
    gen = torch.Generator().manual_seed(1)
    for _ in range(60):
        part = subset(batch, torch.randint(0, N_ROWS, (128,), generator=gen))
        loss = model.loss(model(part), part)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = full_loss()
    assert after < 0.75 * before, (before, after)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_empty_history_rows(name: str, spec: FeatureSpec, batch: dict[str, torch.Tensor]) -> None:
    empty = dict(batch)
    empty["hist_len"] = torch.zeros(N_ROWS, dtype=torch.long)
    for f in spec.sequence:
        empty[f.name] = torch.zeros_like(batch[f.name])
    model = build_model(name, spec, TINY)
    out = model(empty)
    assert all(torch.isfinite(out[k]).all() for k in OUTPUT_KEYS)
    model.loss(out, empty)["loss"].backward()
    for p in model.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", ["deepfm", "xdeepfm", "mmoe"])
def test_cvr_trained_on_clicked_rows_only(
    name: str, spec: FeatureSpec, batch: dict[str, torch.Tensor]
) -> None:
    """No clicked row -> the CVR part gets exactly zero gradient (the loss is masked)."""
    no_clicks = dict(batch, click=torch.zeros(N_ROWS), conversion=torch.zeros(N_ROWS))
    model = build_model(name, spec, TINY)
    model.loss(model(no_clicks), no_clicks)["loss"].backward()
    cvr_part = model.cvr_net if name != "mmoe" else model.towers["cvr"]
    ctr_part = model.ctr_net if name != "mmoe" else model.towers["ctr"]
    for p in cvr_part.parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ctr_part.parameters())


def test_entire_space_trains_cvr_on_all_rows(
    spec: FeatureSpec, batch: dict[str, torch.Tensor]
) -> None:
    """ESMM: unclicked rows still reach the CVR tower through pCTCVR."""
    no_clicks = dict(batch, click=torch.zeros(N_ROWS), conversion=torch.zeros(N_ROWS))
    model = build_model("esmm", spec, TINY)
    model.loss(model(no_clicks), no_clicks)["loss"].backward()
    assert any(p.grad.abs().sum() > 0 for p in model.cvr_tower.parameters())


def reverse_history(spec: FeatureSpec, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reverse the valid prefix of every history (padding stays on the right)."""
    lengths = batch["hist_len"]
    steps = torch.arange(MAX_LEN).unsqueeze(0)
    idx = torch.where(steps < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - steps, steps)
    out = dict(batch)
    for f in spec.sequence:
        out[f.name] = batch[f.name].gather(1, idx)
    return out


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_only_rnn_sees_order(name: str, spec: FeatureSpec, batch: dict[str, torch.Tensor]) -> None:
    model = build_model(name, spec, TINY).eval()
    with torch.no_grad():
        a = model(batch)["pctcvr"]
        b = model(reverse_history(spec, batch))["pctcvr"]
    if name == "rnn_mtl":
        assert not torch.allclose(a, b, atol=1e-6)
    else:
        torch.testing.assert_close(a, b)


def test_keys_are_not_features(spec: FeatureSpec, batch: dict[str, torch.Tensor]) -> None:
    model = build_model("rnn_mtl", spec, TINY).eval()
    other = dict(batch, impression_id=batch["impression_id"] + 7, user_key=batch["user_key"] * 3)
    with torch.no_grad():
        assert torch.equal(model(batch)["pctcvr"], model(other)["pctcvr"])


def test_gru_packed_equals_masked() -> None:
    torch.manual_seed(0)
    packed = GRUEncoder(5, 7, packed=True)
    masked = GRUEncoder(5, 7, packed=False)
    masked.load_state_dict(packed.state_dict())
    x = torch.randn(6, MAX_LEN, 5)
    lengths = torch.tensor([0, 1, 3, 8, 5, 2])
    for a, b in zip(packed(x, lengths), masked(x, lengths), strict=True):
        torch.testing.assert_close(a, b)
    assert torch.equal(packed(x, lengths)[1][0], torch.zeros(7))  # empty history -> zeros


def test_shared_vocab_shares_one_table(spec: FeatureSpec) -> None:
    model = build_model("esmm", spec, TINY)
    assert set(model.embedding.tables) == {"user", "item", "cate", "brand", "pid", "btag"}
    assert model.embedding.tables["item"].num_embeddings == 60


@pytest.mark.parametrize("name", ["deepfm", "xdeepfm", "mmoe", "esmm"])
def test_models_work_without_sequences(name: str) -> None:
    flat = make_spec(with_sequences=False)
    batch = make_batch(flat, n=32)
    assert "hist_len" not in batch
    out = build_model(name, flat, TINY)(batch)
    assert out["pctcvr"].shape == (32,)


def test_build_model_errors(spec: FeatureSpec) -> None:
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nope", spec)
    with pytest.raises(ValueError, match="no sequence fields"):
        build_model("rnn_mtl", make_spec(with_sequences=False))
    with pytest.raises(ValueError, match="no sequence fields"):
        build_model("din", make_spec(with_sequences=False))
    with pytest.raises(ValueError, match="gru=false needs attention"):
        build_model("rnn_mtl", spec, {"gru": False, "attention": False})
    with pytest.raises(ValueError, match="match_position must be"):
        build_model("rnn_mtl", spec, {"match_position": "tower"})
    with pytest.raises(ValueError, match="unknown params"):
        build_model("esmm", spec, {"gru_hidden": 8})
    with pytest.raises(ValueError, match="bad value"):
        build_model("mmoe", spec, {"num_experts": "many"})


def test_config_overrides() -> None:
    cfg = resolve_config("rnn_mtl", {"tower_hidden": "32,16", "attention": "false", "dropout": 0})
    assert cfg.tower_hidden == (32, 16) and cfg.attention is False and cfg.dropout == 0.0
    assert resolve_config("rnn_mtl").to_dict()["tower_hidden"] == [64]
    assert resolve_config("mmoe", {"expert_hidden": [32]}).expert_hidden == (32,)
    for name in MODEL_NAMES:  # the logged config rebuilds the same architecture (pyfunc)
        model = build_model(name, make_spec(), {"embedding_dim": 4})
        again = build_model(name, make_spec(), json.loads(json.dumps(model.config)))
        again.load_state_dict(model.state_dict())


RNN_VARIANTS = [
    {"packed": False},
    {"attention": False},
    {"gru_layers": 2},
    {"gru": False},
    {"match_flags": False},
    {"match_position": "attention"},
    {"explore_weight": 0.0},
]


@pytest.mark.parametrize("params", RNN_VARIANTS)
def test_rnn_mtl_variants(params: dict, spec: FeatureSpec, batch: dict[str, torch.Tensor]) -> None:
    model = build_model("rnn_mtl", spec, {**TINY, **params})
    out = model(batch)
    model.loss(out, batch)["loss"].backward()
    assert set(model.loss(out, batch)) == {"loss", "ctr_loss", "ctcvr_loss", "views_loss"}
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, unused  # DDP (find_unused_parameters=False) needs every one used


def test_rnn_mtl_match_flags_beside_the_gru(spec: FeatureSpec, batch: dict[str, torch.Tensor]):
    """match_position=attention: the GRU reads the history alone, so its states are the same
    for every candidate of a request (serving can run it once); the flags still count."""
    model = build_model("rnn_mtl", spec, {**TINY, "match_position": "attention"}).eval()
    plain = build_model("rnn_mtl", spec, {**TINY, "match_flags": False})
    assert model.gru.gru.input_size == plain.gru.gru.input_size
    assert model.attention.query_proj.out_features == model.cfg.gru_hidden + 2
    other = dict(batch, item=batch["item"].roll(1), cate=batch["cate"].roll(1))
    seen = []
    model.gru.register_forward_hook(lambda m, i, o: seen.append(o[0]))
    with torch.no_grad():
        a, b = model(batch)["pctr"], model(other)["pctr"]
    torch.testing.assert_close(seen[0], seen[1])
    assert not torch.allclose(a, b)


def test_priors_set_the_base_rates(spec: FeatureSpec, batch: dict[str, torch.Tensor]) -> None:
    """A fresh model predicts about the train split's rates, not 0.5 (BaseModel.set_priors)."""
    for name in MODEL_NAMES:
        model = build_model(name, spec, TINY).eval()
        model.set_priors({"ctr": 0.05, "cvr": 0.1, "views": 3.0})
        with torch.no_grad():
            out = model(batch)
        assert out["pctr"].mean().item() == pytest.approx(0.05, rel=0.2), name
        assert out["pcvr"].mean().item() == pytest.approx(0.1, rel=0.2), name
        if model.has_exploration:
            assert out["expected_views"].mean().item() == pytest.approx(3.0, rel=0.2)


def _views_grad_norm(spec: FeatureSpec, batch: dict[str, torch.Tensor], factor: float) -> float:
    """Norm of the weighted views loss's gradient on rnn_mtl's shared layers, counts x factor."""
    torch.manual_seed(0)
    model = build_model("rnn_mtl", spec, TINY)
    scaled = dict(batch, n_future_views=batch["n_future_views"] * factor)
    model.set_priors({"ctr": 0.3, "cvr": 0.5, "views": scaled["n_future_views"].mean().item()})
    parts = model.loss(model(scaled), scaled)
    (parts["loss"] - parts["ctr_loss"] - parts["ctcvr_loss"]).backward()
    return torch.cat([p.grad.flatten() for p in model.shared.parameters()]).norm().item()


def test_views_loss_weight_is_scale_free(spec: FeatureSpec, batch: dict[str, torch.Tensor]):
    """explore_weight means the same whatever the world's views per impression: the Poisson
    gradient (rate - count) grows with the counts, the divisor (the train mean) undoes it.
    Unscaled, 10x the counts gave ~10x the views gradient on the layers CTR shares."""
    ratio = _views_grad_norm(spec, batch, 10.0) / _views_grad_norm(spec, batch, 1.0)
    assert 0.5 < ratio < 2.0, ratio


def test_ctcvr_loss_is_stable_and_exact() -> None:
    ctr = torch.tensor([-3.0, 0.0, 2.0, 40.0, 200.0, -200.0], requires_grad=True)
    cvr = torch.tensor([1.0, -1.0, 0.5, 40.0, 200.0, -200.0], requires_grad=True)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    loss = ctcvr_bce(ctr, cvr, y)
    loss.backward()
    assert (
        torch.isfinite(loss) and torch.isfinite(ctr.grad).all() and torch.isfinite(cvr.grad).all()
    )
    p = (torch.sigmoid(ctr[:3]) * torch.sigmoid(cvr[:3])).detach()
    naive = torch.nn.functional.binary_cross_entropy(p, y[:3])
    torch.testing.assert_close(ctcvr_bce(ctr[:3].detach(), cvr[:3].detach(), y[:3]), naive)
    parts = entire_space_loss(ctr.detach(), cvr.detach(), y, y)
    assert set(parts) == {"ctr_loss", "ctcvr_loss"}


def test_accepts_other_int_and_float_dtypes(
    spec: FeatureSpec, batch: dict[str, torch.Tensor]
) -> None:
    """Readers may hand int32 ids and float64 dense values: same outputs as long/float32."""
    cast = {k: v.int() if v.dtype == torch.long else v.double() for k, v in batch.items()}
    model = build_model("rnn_mtl", spec, TINY).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(cast)["pctcvr"], model(batch)["pctcvr"])


def test_poisson_loss_is_the_exact_nll() -> None:
    from scipy.stats import poisson

    from train.losses import poisson_loss

    log_rate = torch.tensor([-1.0, 0.0, 0.7, 2.0])
    counts = torch.tensor([0.0, 3.0, 1.0, 9.0])
    expected = -poisson.logpmf(counts.numpy(), np.exp(log_rate.numpy())).mean()
    assert poisson_loss(log_rate, counts).item() == pytest.approx(expected, rel=1e-5)


def test_rnn_mtl_match_flags_pair_history_with_candidate(spec: FeatureSpec) -> None:
    from train.models.rnn_mtl import candidate_pairs

    assert candidate_pairs(spec) == [("hist_item", "item"), ("hist_cate", "cate")]
    with_flags = build_model("rnn_mtl", spec, TINY)
    without = build_model("rnn_mtl", spec, {**TINY, "match_flags": False})
    assert with_flags.gru.gru.input_size == without.gru.gru.input_size + 2


def test_rnn_mtl_match_flags_learn_identity_match_on_unseen_ids() -> None:
    """Click = "the candidate's category is the last one viewed", over 5000 categories, so
    most test categories never occur in training: only the match flag can carry the rule."""
    from sklearn.metrics import roc_auc_score

    spec = FeatureSpec(
        source="test",
        max_len=MAX_LEN,
        fields=[
            FieldSpec("cate", "sparse", "cate", 5000),
            FieldSpec("hist_cate", "sequence", "cate", 5000),
        ],
    )
    rng = np.random.default_rng(0)

    def rows(n: int, lo: int, hi: int) -> dict[str, torch.Tensor]:
        hist = rng.integers(lo, hi, (n, MAX_LEN))
        match = rng.random(n) < 0.3
        cate = np.where(match, hist[:, -1], rng.integers(lo, hi, n))
        click = rng.random(n) < np.where(cate == hist[:, -1], 0.8, 0.1)
        out = {"cate": cate, "hist_cate": hist, "hist_len": np.full(n, MAX_LEN)}
        out = {k: torch.as_tensor(v, dtype=torch.long) for k, v in out.items()}
        zeros = torch.zeros(n)
        return out | {
            "click": torch.as_tensor(click).float(),
            "conversion": zeros,
            "n_future_views": zeros,
        }

    train, test = rows(4096, 2, 2500), rows(2048, 2500, 5000)  # disjoint categories
    aucs = {}
    for flags in (True, False):
        torch.manual_seed(0)
        model = build_model("rnn_mtl", spec, {**TINY, "match_flags": flags})
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(3):
            for idx in torch.randperm(4096).split(256):
                loss = model.loss(model(subset(train, idx)), subset(train, idx))["loss"]
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            aucs[flags] = roc_auc_score(test["click"], model.eval()(test)["pctr"])
    assert aucs[True] > 0.8 > aucs[False] + 0.1, aucs


def tiny_world(spec: FeatureSpec, n: int, seed: int) -> dict[str, torch.Tensor]:
    """Rows whose click rests on the candidate alone (its category: 3 of 10 are "hot"), a
    signal every model must find, plus the history match that only some can use."""
    batch = make_batch(spec, n=n, seed=seed)
    rng = np.random.default_rng(seed + 100)
    hot = (batch["cate"] % 10 < 3).numpy()
    logit = -3.0 + 2.5 * hot + 1.0 * (batch["cate"] == batch["hist_cate"][:, 0]).numpy()
    click = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    batch["click"] = torch.as_tensor(click, dtype=torch.float32)
    batch["conversion"] = batch["click"] * (batch["brand"] % 2 == 0)
    return batch


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_default_config_finds_the_signal(name: str, spec: FeatureSpec) -> None:
    """Every model's DEFAULT config (train/config.py) with the train job's default optimizer
    (train/train_config.py: lr, per-worker batch) and the base-rate priors ranks held-out rows
    of a tiny world above 0.6 CTR AUC after two epochs (a ~6% CTR, as in the generated worlds)."""
    from sklearn.metrics import roc_auc_score

    from train.train_config import TrainConfig

    job = TrainConfig()
    train, test = tiny_world(spec, 8192, 0), tiny_world(spec, 4096, 1)
    model = build_model(name, spec)
    click = train["click"]
    model.set_priors(
        {
            "ctr": click.mean().item(),
            "cvr": (train["conversion"].sum() / click.sum()).item(),
            "views": train["n_future_views"].mean().item(),
        }
    )
    opt = torch.optim.Adam(model.parameters(), lr=job.lr)
    for _ in range(2):
        model.train()
        for idx in torch.randperm(len(click)).split(job.batch_size):
            loss = model.loss(model(subset(train, idx)), subset(train, idx))["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        auc = roc_auc_score(test["click"].numpy(), model.eval()(test)["pctr"].numpy())
    assert auc > 0.6, auc


@pytest.mark.parametrize("name", ["deepfm", "rnn_mtl"])
def test_embedding_l2_shrinks_only_the_rows_a_batch_uses(
    name: str, spec: FeatureSpec, batch: dict[str, torch.Tensor]
) -> None:
    model = build_model(name, spec, {"embedding_l2": 0.5}).eval()  # eval: no dropout noise
    plain = build_model(name, spec, {}).eval()
    plain.load_state_dict(model.state_dict())
    rows = subset(batch, torch.arange(8, 16))
    parts, base = model.loss(model(rows), rows), plain.loss(plain(rows), rows)
    expected = 0.0  # every table of every embedding module, each distinct looked-up row once
    for owner in (m for m in model.modules() if hasattr(m, "tables")):
        for vocab, table in owner.tables.items():
            used = torch.cat([rows[f.name].reshape(-1) for f in spec.fields if f.vocab == vocab])
            expected += float(table.weight[torch.unique(used)].detach().pow(2).sum())
    assert float(parts["embedding_l2"]) == pytest.approx(expected, rel=1e-5)
    assert "embedding_l2" not in base
    assert float(parts["loss"]) == pytest.approx(float(base["loss"]) + 0.5 * expected, rel=1e-5)

    model.embedding_l2(rows).backward()
    table = (model if name == "rnn_mtl" else model.ctr_net).embedding.tables["item"]
    touched = set(torch.nonzero(table.weight.grad.abs().sum(1)).flatten().tolist())
    looked_up = set(torch.cat([rows["item"], rows["hist_item"].reshape(-1)]).tolist())
    assert touched and touched == looked_up - {0}  # padding row 0 is fixed at zero
