"""Sequence fields of wide sources (etl/wide_sequences.py): Ali-CCP's ``*_14`` user histories
become ``hist_<field>`` arrays, in the raw line's order, truncated to max_len, padded, encoded
with train-only vocabularies; ``hist_len`` is the longest truncated history of a row."""

from __future__ import annotations

from pathlib import Path

from etl.features import FIRST_ID, PAD_ID, UNKNOWN_ID
from etl.sources import load_source
from etl.sources.base import SourceConfig
from etl.vocab import build_vocab, vocab_sizes
from etl.wide_sequences import (
    encode_sequences,
    sequence_columns,
    sequence_fields,
    sequence_vocab_values,
)

DATA = Path(__file__).parent / "data"
ROWS = [  # impression_id, split, s_109_14, s_127_14
    (1, "train", ["a", "b", "a", "c", "z"], ["x"]),
    (2, "train", ["b", "a"], []),
    (3, "train", [], None),
    (4, "test", ["q", "a", "b"], ["x", "y"]),
]
SCHEMA = "impression_id long, split string, s_109_14 array<string>, s_127_14 array<string>"


def encoded(spark, max_len: int):
    wide = spark.createDataFrame(ROWS, SCHEMA)
    columns = sequence_columns(wide)
    train = wide.where("split = 'train'")
    vocab = build_vocab(sequence_vocab_values(train, columns, max_len))
    out = encode_sequences(wide, vocab, columns, max_len)
    return {r["impression_id"]: r for r in out.collect()}, vocab, columns, out


def test_histories_are_truncated_padded_and_encoded(spark):
    rows, vocab, columns, out = encoded(spark, 4)
    assert columns == ["s_109_14", "s_127_14"]
    assert dict(out.dtypes)["hist_109_14"] == "array<int>" and "s_109_14" not in out.columns
    ids = {
        (r["vocab"], r["raw"]): r["id"] for r in vocab.collect()
    }  # counted on train within the first 4 values: a 3, b 2, c 1 ("z" is cut off)
    a, b, c = (ids["hist_109_14", v] for v in "abc")
    assert (a, b, c) == (FIRST_ID, FIRST_ID + 1, FIRST_ID + 2)
    assert ("hist_109_14", "z") not in ids
    assert rows[1]["hist_109_14"] == [a, b, a, c]  # the raw order, the first max_len values
    assert rows[2]["hist_109_14"] == [b, a, PAD_ID, PAD_ID]
    assert rows[3]["hist_109_14"] == [PAD_ID] * 4 and rows[3]["hist_127_14"] == [PAD_ID] * 4
    assert rows[4]["hist_109_14"] == [UNKNOWN_ID, a, b, PAD_ID]  # q: unseen in train
    x = ids["hist_127_14", "x"]
    assert rows[4]["hist_127_14"] == [x, UNKNOWN_ID, PAD_ID, PAD_ID]
    assert {i: r["hist_len"] for i, r in rows.items()} == {1: 4, 2: 2, 3: 0, 4: 3}
    fields = sequence_fields(columns, vocab_sizes(vocab))
    assert [(f.name, f.kind, f.vocab, f.vocab_size) for f in fields] == [
        ("hist_109_14", "sequence", "hist_109_14", FIRST_ID + 3),
        ("hist_127_14", "sequence", "hist_127_14", FIRST_ID + 1),
    ]


def test_a_history_without_known_values_is_no_field(spark):
    wide = spark.createDataFrame([(1, "train", [], ["x"])], SCHEMA)
    columns = sequence_columns(wide)
    vocab = build_vocab(sequence_vocab_values(wide, columns, 3))
    fields = sequence_fields(columns, vocab_sizes(vocab))
    assert [f.name for f in fields] == ["hist_127_14"]
    row = encode_sequences(wide, vocab, columns, 3).collect()[0]
    assert row["hist_109_14"] == [PAD_ID] * 3 and row["hist_len"] == 1


def test_raw_ali_ccp_lines_give_their_histories_in_line_order(spark):
    data = load_source(spark, "ali_ccp", str(DATA / "ali_ccp_raw"), SourceConfig())
    wide = data.wide_samples
    columns = sequence_columns(wide)
    assert columns == ["s_109_14", "s_110_14", "s_127_14", "s_150_14"]
    train = wide.where("split = 'train'")
    vocab = build_vocab(sequence_vocab_values(train, columns, 2))
    ids = {r["raw"]: r["id"] for r in vocab.where("vocab = 'hist_109_14'").collect()}
    out = encode_sequences(wide, vocab, columns, 2)
    first = out.where("split = 'train' and f_205 = '301'").collect()[0]
    assert first["hist_109_14"] == [ids["1091"], ids["1092"]]  # 1093 is the third: cut off
    orphan = out.where("split = 'test' and f_205 = '307'").collect()[0]
    assert orphan["hist_len"] == 0 and orphan["hist_109_14"] == [PAD_ID, PAD_ID]
