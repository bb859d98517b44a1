"""The proposal's model: a GRU over the behavior sequence plus user/ad/context embeddings,
shared by a CTR tower, a CVR tower (ESMM entire-space loss) and an exploration tower that
predicts the log-rate of further item views in the session (Poisson loss).

The GRU input at each step concatenates the embeddings of every sequence field and, with
``match_flags``, one 0/1 flag per candidate field: does this step's value equal the candidate's
(``hist_cate[t] == cate``)? The candidate fields are the sparse fields sharing a vocab with a
sequence field (``cate`` for ``hist_cate``, name match preferred). Embedding dot products can
express such an identity match only after every id's embedding has been learned, which the
long tail of ids never gets; the flag gives the GRU "the user just looked at this category"
directly, and the recency of that look is what the GRU's order adds. Target attention uses the
candidate fields as query (else every non-sequence field).

Ablation switches (train/config.py RNNMTLConfig): ``gru=false`` drops the GRU (attention over
the step inputs only), ``match_flags=false`` drops the flags, ``explore_weight=0`` trains no
exploration loss; ``match_position=attention`` feeds the flags beside the GRU states into the
attention instead of into the GRU, so the GRU reads the history alone and serving can run it
once per request for all K candidates (tests/benchmarks/bench_quality.py --ablation)."""

from __future__ import annotations

import torch

from etl.spec import FeatureSpec, FieldSpec
from train.config import RNNMTLConfig
from train.layers import (
    MLP,
    FeatureEmbedding,
    GRUEncoder,
    TargetAttention,
    sequence_lengths,
    sequence_mask,
)
from train.layers.sequence import distinct_rows
from train.models.base import BaseModel, Logits

MATCH_POSITIONS = ("gru", "attention")


class RNNMTL(BaseModel):
    name = "rnn_mtl"
    entire_space = True
    has_exploration = True
    # eval: the history side once per distinct GRU input row (``grouped_logits``); False runs
    # the plain path (every row through the GRU), which tests/test_fast_forward.py compares
    grouped_eval = True

    def __init__(self, spec: FeatureSpec, cfg: RNNMTLConfig) -> None:
        super().__init__(spec, cfg)
        check_switches(spec, cfg)
        dim = cfg.embedding_dim
        self.embedding = FeatureEmbedding(spec, dim, cfg.dense_log1p)
        self.context_specs = [f for f in spec.fields if f.kind != "sequence"]
        self.context_fields = [f.name for f in self.context_specs]
        self.match_pairs = candidate_pairs(spec) if cfg.match_flags else []
        flags = len(self.match_pairs)
        self.flags_in_gru = cfg.match_position == "gru"
        step_dim = len(spec.sequence) * dim + (flags if self.flags_in_gru else 0)
        self.gru = (
            GRUEncoder(step_dim, cfg.gru_hidden, cfg.gru_layers, cfg.packed) if cfg.gru else None
        )
        key_dim = (cfg.gru_hidden if cfg.gru else step_dim) + (0 if self.flags_in_gru else flags)
        shared_in = (cfg.gru_hidden if cfg.gru else 0) + len(self.context_fields) * dim
        self.query_fields: list[str] = []
        if cfg.attention:
            self.query_fields = candidate_fields(spec) or self.context_fields
            self.attention = TargetAttention(
                len(self.query_fields) * dim, key_dim, cfg.attention_hidden
            )
            shared_in += key_dim
        mlp = cfg.mlp_options()
        self.shared = MLP(shared_in, cfg.shared_hidden, **mlp)
        self.towers = torch.nn.ModuleDict(
            {
                t: MLP(self.shared.output_dim, cfg.tower_hidden, output_dim=1, **mlp)
                for t in ("ctr", "cvr", "views")
            }
        )

    def logits(self, batch: dict[str, torch.Tensor]) -> Logits:
        if self.grouped_eval and self.gru is not None and not self.training:
            return self.grouped_logits(batch)
        embs = self.embedding(batch)
        steps = torch.cat([embs[f.name] for f in self.spec.sequence], dim=-1)  # (B, L, S*D)
        flags = self.match(batch, steps.dtype)
        if flags is not None and self.flags_in_gru:
            steps = torch.cat([steps, flags], dim=-1)
        parts = [embs[n] for n in self.context_fields]
        keys = steps
        if self.gru is not None:  # every row through the GRU (grouped_logits' reference)
            keys, last = self.gru(steps, sequence_lengths(batch, self.spec))
            parts.insert(0, last)
        if flags is not None and not self.flags_in_gru:
            keys = torch.cat([keys, flags], dim=-1)
        if self.query_fields:
            query = torch.cat([embs[n] for n in self.query_fields], dim=-1)
            parts.append(self.attention(query, keys, sequence_mask(batch, self.spec)))
        return self.heads(parts)

    def heads(self, parts: list[torch.Tensor]) -> Logits:
        h = self.shared(torch.cat(parts, dim=-1))
        return tuple(self.towers[t](h).squeeze(-1) for t in ("ctr", "cvr", "views"))

    def grouped_logits(self, batch: dict[str, torch.Tensor]) -> Logits:
        """``logits`` (eval, with a GRU) computed with the history side on one row per distinct
        GRU input (a slate's K candidates share the user's history and mostly its flags): the
        sequence embeddings and the GRU run on those rows, the attention reads their states by
        index, and only the candidate side is per row. The same operations on fewer rows
        (``index_select``: a row copy, ~10x faster on the CPU than ``x[index]``'s gather)."""
        spec = self.spec
        flags = self.match(batch, self.output_bias.dtype)
        lengths = sequence_lengths(batch, spec)
        first, inverse = distinct_rows(self.gru_inputs_key(batch, flags, lengths))
        rows = {f.name: batch[f.name].index_select(0, first) for f in spec.sequence}
        steps = torch.cat([self.embedding.embed_field(f, rows) for f in spec.sequence], dim=-1)
        if flags is not None and self.flags_in_gru:
            steps = torch.cat([steps, flags.index_select(0, first)], dim=-1)
        states, last = self.gru(steps, lengths.index_select(0, first))
        embs = {f.name: self.embedding.embed_field(f, batch) for f in self.context_specs}
        parts = [last.index_select(0, inverse), *(embs[n] for n in self.context_fields)]
        if self.query_fields:
            keys, index = states, inverse
            if flags is not None and not self.flags_in_gru:  # the flags differ within a group
                keys, index = torch.cat([states.index_select(0, inverse), flags], dim=-1), None
            query = torch.cat([embs[n] for n in self.query_fields], dim=-1)
            mask = sequence_mask(batch, spec)
            parts.append(self.attention(query, keys, mask, key_index=index))
        return self.heads(parts)

    def gru_inputs_key(
        self, batch: dict[str, torch.Tensor], flags: torch.Tensor | None, lengths: torch.Tensor
    ) -> torch.Tensor:
        """(B, K) ints that determine the GRU's input rows: the history ids, the lengths and the
        flags when they are GRU inputs. Scoring a slate runs the GRU once per distinct row."""
        parts = [batch[f.name].long() for f in self.spec.sequence] + [lengths.long()[:, None]]
        if flags is not None and self.flags_in_gru:
            parts.append(flags.flatten(1).long())
        return torch.cat(parts, dim=1)

    def match(self, batch: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor | None:
        """(B, L, pairs) 0/1: does history step t hold the candidate's id (padding never)?"""
        if not self.match_pairs:
            return None
        hits = [
            (batch[seq] == batch[cand].unsqueeze(1)) & (batch[seq] > 0)
            for seq, cand in self.match_pairs
        ]
        return torch.stack(hits, dim=-1).to(dtype)


def check_switches(spec: FeatureSpec, cfg: RNNMTLConfig) -> None:
    """ValueError (one line) for a spec or a combination of switches the model cannot run."""
    if not spec.sequence:
        raise ValueError("rnn_mtl: the feature spec has no sequence fields to run the GRU on")
    if cfg.match_position not in MATCH_POSITIONS:
        raise ValueError(f"rnn_mtl: match_position must be one of {MATCH_POSITIONS}")
    if not cfg.gru and not cfg.attention:
        raise ValueError("rnn_mtl: gru=false needs attention=true (nothing reads the history)")
    if cfg.match_position == "attention" and not cfg.attention:
        raise ValueError("rnn_mtl: match_position=attention needs attention=true")
    if cfg.attention and not [f for f in spec.fields if f.kind != "sequence"]:
        raise ValueError("rnn_mtl: attention needs non-sequence fields; set attention=false")


def candidate_pairs(spec: FeatureSpec) -> list[tuple[str, str]]:
    """(sequence field, sparse field of the same vocab) pairs, the name match preferred."""
    pairs: list[tuple[str, str]] = []
    for seq in spec.sequence:
        same: list[FieldSpec] = [f for f in spec.sparse if f.vocab == seq.vocab]
        if same:
            bare = seq.name.removeprefix("hist_")
            pairs.append((seq.name, next((f for f in same if f.name == bare), same[0]).name))
    return pairs


def candidate_fields(spec: FeatureSpec) -> list[str]:
    """The candidate side of ``candidate_pairs``, each field once."""
    return list(dict.fromkeys(cand for _, cand in candidate_pairs(spec)))
