"""Scoring a slate fast without changing a single output: the GRU runs once per distinct history
row (rnn_mtl's grouped eval), and the attention's first layer never builds its (B, L, 4K) input
(pure torch, seconds)."""

from __future__ import annotations

import pytest
import torch
from test_models import TINY, make_batch, make_spec
from torch import nn

from train.layers import GRUEncoder, TargetAttention
from train.layers.sequence import distinct_rows
from train.models import build_model


def reference_attention(
    att: TargetAttention, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, side=None
) -> torch.Tensor:
    """The textbook form: the score MLP over the concatenated [q, k, q - k, q * k, side]."""
    q = att.query_proj(query).unsqueeze(1).expand_as(keys)
    inputs = [q, keys, q - keys, q * keys] + ([] if side is None else [side])
    scores = att.score(torch.cat(inputs, dim=-1)).squeeze(-1)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=1) * mask.to(scores.dtype)
    return (weights.unsqueeze(-1) * keys).sum(dim=1)


@pytest.mark.parametrize("hidden", [(32,), (16, 8), ()])
@pytest.mark.parametrize("side_dim", [0, 3])
def test_attention_equals_the_concatenated_form(hidden: tuple[int, ...], side_dim: int) -> None:
    torch.manual_seed(0)
    att = TargetAttention(12, 10, hidden, side_dim=side_dim)
    query, keys = torch.randn(7, 12), torch.randn(7, 6, 10)
    mask = torch.rand(7, 6) < 0.7
    mask[0] = False  # a row without history
    side = torch.randn(7, 6, side_dim) if side_dim else None
    torch.testing.assert_close(
        att(query, keys, mask, side), reference_attention(att, query, keys, mask, side)
    )
    # and the gradients of the weights agree too (training uses the same forward)
    att(query, keys, mask, side).sum().backward()
    fast = [p.grad.clone() for p in att.parameters()]
    att.zero_grad()
    reference_attention(att, query, keys, mask, side).sum().backward()
    for a, b in zip(fast, (p.grad for p in att.parameters()), strict=True):
        torch.testing.assert_close(a, b)


def rows_of(gru_input) -> int:
    """Rows the GRU ran on: a padded batch or a packed sequence."""
    return len(gru_input) if isinstance(gru_input, torch.Tensor) else int(gru_input.batch_sizes[0])


@pytest.mark.parametrize("length", [8, 5])
def test_gru_on_rows_of_one_length_equals_the_packed_path(length: int) -> None:
    """A slate's rows share one length: the GRU runs unpacked over that prefix, same outputs."""
    torch.manual_seed(0)
    gru = GRUEncoder(5, 7, packed=True)
    x, lengths = torch.randn(4, 8, 5), torch.full((4,), length)
    fast = gru(x, lengths)
    mixed = gru(torch.cat([x, x[:1]]), torch.cat([lengths, torch.tensor([length - 1])]))
    reference = GRUEncoder(5, 7, packed=False)
    reference.load_state_dict(gru.state_dict())
    for a, b in zip(fast, reference(x, lengths), strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(fast[0], mixed[0][:4])  # and the packed path agrees
    assert torch.equal(fast[0][:, length:], torch.zeros(4, 8 - length, 7))


def test_distinct_rows_groups_equal_rows() -> None:
    key = torch.tensor([[1, 2], [3, 4], [1, 2], [1, 2], [5, 6]])
    first, inverse = distinct_rows(key)
    assert len(first) == 3
    assert torch.equal(key[first][inverse], key)
    assert inverse[0] == inverse[2] == inverse[3] != inverse[1]


@pytest.mark.parametrize("packed", [True, False])
def test_gru_on_distinct_rows_equals_every_row(packed: bool) -> None:
    """What rnn_mtl's grouped eval relies on: the GRU over one row per distinct (input, length),
    spread back by ``inverse``, gives every row's outputs (empty histories included)."""
    torch.manual_seed(0)
    gru = GRUEncoder(5, 7, packed=packed)
    base = torch.randn(3, 8, 5)
    pick = torch.tensor([0, 1, 0, 2, 2, 0, 1])
    x, lengths = base[pick], torch.tensor([4, 0, 3, 8, 8, 4, 0])[[0, 1, 0, 3, 3, 0, 1]]
    first, inverse = distinct_rows(torch.stack([pick, lengths], dim=1))
    runs = []
    gru.gru.register_forward_hook(lambda m, i, o: runs.append(rows_of(i[0])))
    grouped = gru(x.index_select(0, first), lengths.index_select(0, first))
    every = gru(x, lengths)
    for a, b in zip(grouped, every, strict=True):
        torch.testing.assert_close(a.index_select(0, inverse), b)
    assert runs == [3, 7]  # the three distinct rows, then all seven


def slate(batch: dict[str, torch.Tensor], row: int, k: int) -> dict[str, torch.Tensor]:
    """One request: row ``row``'s user and history with ``k`` candidates (k other rows' ads,
    some of them matching the history's categories)."""
    out = {name: value[row].repeat(k, *([1] * (value.dim() - 1))) for name, value in batch.items()}
    for name in ("item", "cate", "brand"):
        out[name] = batch[name][:k].clone()
    out["cate"][: k // 3] = batch["hist_cate"][row, 0]  # a third match the first history step
    return out


@pytest.mark.parametrize("match_position", ["gru", "attention"])
def test_slate_outputs_equal_one_candidate_at_a_time(match_position: str) -> None:
    spec = make_spec()
    batch = make_batch(spec, n=64, seed=3)
    row = int(torch.argmax(batch["hist_len"]))
    request = slate(batch, row, 30)
    model = build_model("rnn_mtl", spec, {**TINY, "match_position": match_position}).eval()
    rows_run = []
    model.gru.gru.register_forward_hook(lambda m, i, o: rows_run.append(rows_of(i[0])))
    with torch.no_grad():
        together = model(request)
        alone = [model({n: v[i : i + 1] for n, v in request.items()}) for i in range(30)]
    for name in ("pctr", "pcvr", "expected_views"):
        torch.testing.assert_close(together[name], torch.cat([a[name] for a in alone]))
    # flags in the GRU: one row per distinct flag pattern; beside it: one row for the slate
    assert rows_run[0] == (1 if match_position == "attention" else len(distinct_flags(request)))
    assert rows_run[0] < 30


def distinct_flags(request: dict[str, torch.Tensor]) -> set[bytes]:
    """The match-flag patterns of a slate's candidates (its rows share one history)."""
    flags = torch.stack(
        [
            (request[seq] == request[cand][:, None]) & (request[seq] > 0)
            for seq, cand in (("hist_item", "item"), ("hist_cate", "cate"))
        ],
        dim=-1,
    )
    return {row.numpy().tobytes() for row in flags}


def test_training_runs_every_row() -> None:
    """Training keeps the plain path: no grouping cost where rows rarely repeat."""
    spec = make_spec()
    batch = make_batch(spec, n=64, seed=3)
    request = slate(batch, int(torch.argmax(batch["hist_len"])), 20)
    model = build_model("rnn_mtl", spec, TINY).train()
    sizes = []
    model.gru.gru.register_forward_hook(lambda m, i, o: sizes.append(rows_of(i[0])))
    model(request)
    assert sizes == [20]
    assert isinstance(model.attention.score[0], nn.Linear)
