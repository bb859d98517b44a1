"""rnn_mtl's grouped eval forward (history side once per distinct GRU input row) gives the
plain forward's outputs on every switch combination, for random rows and for slates of several
requests (pure torch, seconds)."""

from __future__ import annotations

import pytest
import torch
from test_models import TINY, make_batch, make_spec
from test_slate_scoring import rows_of, slate

from train.layers import sequence_lengths
from train.layers.sequence import distinct_rows
from train.models import build_model

VARIANTS = [
    {},
    {"match_position": "attention"},
    {"match_flags": False},
    {"attention": False},
    {"packed": False},
    {"gru_layers": 2},
]


def spread(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights of unit scale: a fresh model's 1e-2 embeddings make every output nearly equal,
    which would hide a wrong row."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def both(model, batch: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    with torch.inference_mode():
        model.grouped_eval = False
        plain = model(batch)
        model.grouped_eval = True
        grouped = model(batch)
    return plain, grouped


def requests(seed: int, n: int = 4, k: int = 25) -> dict[str, torch.Tensor]:
    """``n`` slates of ``k`` candidates (different users and history lengths) in one batch."""
    spec = make_spec()
    batch = make_batch(spec, n=64, seed=seed)
    rows = torch.argsort(batch["hist_len"], descending=True)[: n - 1].tolist() + [0]  # 0: empty
    slates = [slate(batch, r, k) for r in rows]
    return {name: torch.cat([s[name] for s in slates]) for name in slates[0]}


@pytest.mark.parametrize(
    "params", VARIANTS, ids=lambda p: ",".join(map(str, p.items())) or "default"
)
def test_grouped_equals_plain(params: dict) -> None:
    spec = make_spec()
    model = build_model("rnn_mtl", spec, {**TINY, **params}).eval()
    spread(model)
    for batch in (make_batch(spec, n=128, seed=1), requests(seed=2)):
        plain, grouped = both(model, batch)
        assert plain.keys() == grouped.keys()
        for name in plain:
            torch.testing.assert_close(grouped[name], plain[name], rtol=1e-5, atol=1e-6)
        assert plain["ctr_logit"].std() > 1e-2  # rows differ, so a mixed-up row would show


def test_grouped_embeds_and_runs_the_history_once_per_distinct_row() -> None:
    spec = make_spec()
    model = build_model("rnn_mtl", spec, TINY).eval()
    batch = requests(seed=4)
    gru_rows: list[int] = []
    model.gru.gru.register_forward_hook(lambda m, i, o: gru_rows.append(rows_of(i[0])))
    btag_rows: list[int] = []  # hist_btag's table: read by the history side only
    model.embedding.tables["btag"].register_forward_hook(
        lambda m, i, o: btag_rows.append(len(i[0]))
    )
    both(model, batch)
    # plain: every row through the GRU; grouped: the distinct GRU input rows only
    assert gru_rows[0] == len(batch["cate"])
    flags = model.match(batch, torch.float32)
    key = model.gru_inputs_key(batch, flags, sequence_lengths(batch, spec))
    assert gru_rows[1] == len(distinct_rows(key)[0]) < len(batch["cate"]) // 2
    assert btag_rows == [len(batch["cate"]), gru_rows[1]]  # grouped: embeds distinct rows only
