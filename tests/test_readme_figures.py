"""README figures against the committed benchmark JSON they cite (tests/benchmarks/*.json).

Each entry of CHECKS is a README passage (a regex, one group per figure), the JSON that backs
it and, per group, where in the JSON the figure is (a dotted key path, or a function of the
JSON for a derived figure). A figure must equal the JSON's value rounded as the README prints
it ("26.4" -> one decimal, "1,647" -> none), so a rerun benchmark whose figures were not copied
into the README, or a README figure edited by hand, fails here. A passage that is no longer in
the README fails too: change the entry together with the text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BENCH = "tests/benchmarks"
NUM = r"(-?[\d,]*\.?\d+)"  # a printed figure: 0.7891, 26.4, 1,647; "#" in a pattern
Key = str | tuple[str, ...] | Callable[[dict], float]  # tuple: path parts with dots

PEERS = (  # name as printed in the README's peers list -> rows.<name> in peers.json
    "rnn_mtl", "esmm", "din", "mmoe", "deepfm", "xdeepfm", "rechub_esmm", "deepctr_din",
    "deepctr_deepfm", "deepctr_xdeepfm", "rechub_mmoe",
)  # fmt: skip
QUALITY_MODELS = (  # the rows of the oracle-gap and ablation table
    "deepfm", "xdeepfm", "mmoe", "esmm", "din", "rnn_mtl", "rnn_mtl-attention_only",
    "rnn_mtl-no_match_flags", "rnn_mtl-flags_after_gru", "rnn_mtl-no_exploration",
)  # fmt: skip
AUCS = ("ctr_auc", "cvr_auc", "ctcvr_auc")
SIM_STAGES = ("etl", "training", "evaluation", "policy")  # bench_simulate's table columns


def gap(model: str, metric: str) -> Callable[[dict], float]:
    """Oracle minus the model's mean over seeds (metrics.<model>.<metric> = [mean, 95% hw])."""
    return lambda j: j["metrics"]["oracle"][metric] - j["metrics"][model][metric][0]


def quality_row(model: str) -> tuple[str, str, list[Key]]:
    """A row of the oracle-gap table: 4 metrics, 3 gaps to the oracle, epochs, train seconds
    (one seed: its run's epochs and seconds)."""
    cells = r"\s*\|\s*".join([r"\**" + NUM + r"\**"] * 9)
    keys: list[Key] = [f"metrics.{model}.{m}.0" for m in (*AUCS, "ctr_gauc")]
    keys += [gap(model, m) for m in AUCS]
    keys += [f"runs.{model}.0.epochs_run", f"runs.{model}.0.train_seconds"]
    return rf"\|\s*\**{re.escape(model)}\**\s*\|\s*{cells}\s*\|", "bench_quality.json", keys


CHECKS: list[tuple[str, str, list[Key]]] = [
    (
        r"in-process p50/p99\s+#/# ms, served #/# ms, forward pass # ms p50, batch # encoded "
        r"samples\s+rows/s \(forward pass alone #/s: the GRU over each row's # steps on "
        r"average\) and #\s+candidate scorings/s for # raw requests",
        "bench_serving.json",
        [
            "in_process.predict.p50_ms",
            "in_process.predict.p99_ms",
            "served.post.p50_ms",
            "served.post.p99_ms",
            "in_process.forward.p50_ms",
            "in_process.batch.predict.per_s_median",
            "in_process.batch.forward.per_s_median",
            "in_process.batch.mean_hist_len",
            "in_process.batch_requests.per_s_median",
            "in_process.batch_requests.requests",
        ],
    ),
    (
        r"load # at the start\):\s+# responses 5xx, all # valid ones 200 and\s+all # "
        r"malformed ones 400; # requests/s; p50/p99 #/# ms valid, #/# ms malformed",
        "bench_serving_load.json",
        [
            "load.before_load.0",
            "server_errors_5xx",
            "statuses.200",
            "statuses.400",
            "requests_per_s",
            "valid.p50_ms",
            "valid.p99_ms",
            "malformed.p50_ms",
            "malformed.p99_ms",
        ],
    ),
    (
        r"\|\s*oracle\s*\|\s*#\s*\|\s*#\s*\|\s*#\s*\|\s*#\s*\|",
        "bench_quality.json",
        [f"metrics.oracle.{m}" for m in (*AUCS, "ctr_gauc")],
    ),
    *(quality_row(model) for model in QUALITY_MODELS),
    (
        r"# test rows \(# test clicks, # test conversions\)",
        "bench_quality.json",
        ["metrics.oracle.n_rows", "metrics.oracle.n_clicks", "metrics.oracle.n_conversions"],
    ),
    (  # the figure subtracted from it (the oracle without the user bias) has no JSON
        r"so # - [\d.]+ = [\d.]+ of the CTR gap",
        "bench_quality.json",
        ["metrics.oracle.ctr_auc"],
    ),
    (
        r"\| 3000 \| rnn_mtl \| # \| # \| # \(#\) \| epoch # \| # \| # \| # \|",
        "bench_convergence.json",
        [
            "runs.0.history.0.valid_ctr_auc",
            "runs.0.summary.epoch2",
            "runs.0.summary.plateau",
            "runs.0.summary.plateau_epoch",
            "runs.0.summary.default_epoch",
            "runs.0.summary.default_auc",
            "runs.0.summary.default_gap",
            "runs.0.summary.epoch2_gap",
        ],
    ),
    (
        r"\(# after epoch 1, # after epoch 10\)",
        "bench_convergence.json",
        ["runs.0.history.0.valid_logloss", "runs.0.history.9.valid_logloss"],
    ),
    (
        r"# users, # behaviors, # impressions; 2026-12-02 21:00-21:07 UTC, load # at the "
        r"start, # at the end, the benchmark alone\): `run_etl` # s in # Spark jobs, peak # MiB",
        "bench_etl_10m.json",
        [
            "world.users",
            "world.behaviors",
            "world.impressions",
            "loadavg_start.0",
            "loadavg_end.0",
            lambda j: _spark_stage(j, "run_etl total")["seconds"],
            lambda j: _spark_stage(j, "run_etl total")["spark_jobs"],
            lambda j: _spark(j)["memory"]["peak_total_mib"],
        ],
    ),
    (
        r"parse \+ counts #, bronze \+ quarantine writes\s+#, sessionize \+ events #, "
        r"impressions pass #, samples write #, end to end\s+#",
        "bench_etl_10m.json",
        [
            lambda j, s=stage: _spark_stage(j, s)["rows_per_s_per_core"]
            for stage in (
                "parse + counts",
                "bronze + quarantine writes",
                "sessionize + write events",
                "impressions pass + write",
                "samples write",
                "run_etl total",
            )
        ],
    ),
    (
        r"Spark/DuckDB wall ratios #x on\s+sessionization and #x on histories \(the 3x target met",
        "bench_etl_10m.json",
        ["spark_over_duckdb.sessionization.wall_ratio", "spark_over_duckdb.history.wall_ratio"],
    ),
    (
        r"the ETL \(# s\) and\s+deepfm's training",
        "bench_quality.json",
        ["etl_seconds"],
    ),
    (
        r"one seed, load average # at the start, # at the end: `tests/benchmarks/peers.json`",
        "peers.json",
        ["load_average_start.0", "load_average_end.0"],
    ),
    (
        r"2,000-user world, # / # / # rows",
        "peers.json",
        ["export.rows.train", "export.rows.valid", "export.rows.test"],
    ),
    *(
        (
            rf"\b{name}\s+{NUM} / {NUM}[,;.]",
            "peers.json",
            [f"rows.{name}.metrics.ctcvr_auc", f"rows.{name}.metrics.cvr_auc"],
        )
        for name in PEERS
    ),
    (
        r"# behavior rows and # impressions took # s on 2 cores \(# s of CPU",
        "bench_generate.json",
        ["behavior_rows", "impression_rows", "seconds", "cpu_seconds"],
    ),
    (
        r"took # s \(world # s, ETL # s, training # s, oracle # s; load # at the "
        r"start, # at the end",
        "quickstart.json",
        [
            "total_seconds",
            "seconds.world",
            "seconds.etl",
            lambda j: sum(v for k, v in j["seconds"].items() if k.startswith("train ")),
            "seconds.oracle",
            "load_1min.start",
            "load_1min.end",
        ],
    ),
]
CHECKS += [
    (
        rf"\| {n} \| # \| # \| # \| # \| # \| yes \|",
        "bench_simulate.json",
        [f"runs.{n - 1}.wall_s", *(f"runs.{n - 1}.stages.{s}" for s in SIM_STAGES)],
    )
    for n in (1, 2)
]
EPOCH_ROWS = {  # the README's label of a bench_epochs variant -> its name in the JSON
    "base (the defaults)": "base",
    "`embedding_l2=1e-3`": "embedding_l2=1e-3",
    "`embedding_l2=1e-2`": "embedding_l2=1e-2",
    "user, ad, campaign, customer, brand set to unknown": "no id fields",
    "`dropout=0.3`": "dropout=0.3",
    "lr 1e-3": "lr=1e-3",
    "embedding lr 3e-4": "embedding lr=3e-4",
    "MLP and GRU re-initialised each epoch": "reinit",
}
EPOCH_POINTS = (0.5, 1.0, 2.0, 3.0, 4.0)  # the table's columns among the curve's evaluations


def epoch_row(label: str, variant: str) -> tuple[str, str, list[Key]]:
    """A row of the epoch-curve table: valid CTR AUC at EPOCH_POINTS, the best and its epoch."""

    def at(epoch: float) -> Key:
        return lambda j: next(r for r in j["curves"][variant] if r["epoch"] == epoch)["ctr_auc"]

    def best(j: dict) -> dict:
        return max(j["curves"][variant], key=lambda r: r["ctr_auc"])

    cells = r" \| ".join(["#"] * len(EPOCH_POINTS))
    keys = [at(e) for e in EPOCH_POINTS]
    keys += [lambda j: best(j)["ctr_auc"], lambda j: best(j)["epoch"]]
    return rf"\| {re.escape(label)} \| {cells} \| # \(#\) \|", "bench_epochs.json", keys


CHECKS += [epoch_row(label, variant) for label, variant in EPOCH_ROWS.items()]
CHECKS += [
    (
        rf"{model} #, #, #",
        f"bench_epochs_12k_{model}.json",
        [f"curves.base.{i}.ctr_auc" for i in range(3)],
    )
    for model in ("rnn_mtl", "deepfm")
]
CHECKS.append(
    (
        r"at `--concurrent 1` took # s \(ETL # s, training # s; 2026-12-04\s+19:47-19:55 UTC, "
        r"load average # before, # after",
        "bench_simulate_latest_day.json",
        [
            "runs.0.wall_s",
            "runs.0.stages.etl",
            "runs.0.stages.training",
            "load_average.before.0",
            "load_average.after.0",
        ],
    )
)
CHECKS += [
    (
        rf"\| {arm} \| # ± # \| # \| # \| # ± # \|",
        "simulate_default.json",
        [
            f"arms.{arm}.rounds.5.{key}"
            for key in (
                "cum_purchases", "cum_purchases_ci95", "impressions", "further_views",
                "ctr_auc", "ctr_auc_ci95",
            )
        ],
    )
    for arm in ("greedy", "incentive", "uniform")
]  # fmt: skip
CHECKS.append(
    (
        r"Stages \(seconds\): ETL #,\s+training #, policy #, evaluation #\.",
        "simulate_default.json",
        [f"stages.{s}" for s in ("etl", "training", "policy", "evaluation")],
    )
)


def overhead_mean(code: str, interval: str, key: str) -> Key:
    """bench_train_overhead's mean over repeats of one code version's poll interval."""
    return lambda j: sum(r[key] for r in j[code]["runs"][interval]) / len(j[code]["runs"][interval])


CHECKS += [
    (
        rf"\| \**{label}\** \| {re.escape(interval)} \| # \| # \| # \|",
        "bench_train_overhead.json",
        [overhead_mean(code, interval, k) for k in ("fit_s", "epochs_s", "overhead_s")],
    )
    for code, label, interval in (
        ("before", "before", "2"),
        ("before", "before", "0.25"),
        ("after", "after", "2"),
        ("after", r"after \(the defaults now\)", "0.25"),
    )
]
CHECKS.append(
    (
        r"box \(load average # at the start, # at the end; JSON\s+"
        r"`tests/benchmarks/bench_train_overhead.json`",
        "bench_train_overhead.json",
        ["before.loadavg_start.0", "after.loadavg_end.0"],
    )
)
CHECKS.append(
    (
        r"day took # s against # s with it, and the full run over 4 days # s against # s",
        "bench_etl_incremental_codegen.json",
        [
            "whole_stage_codegen_off.incremental_one_day_s",
            "default.incremental_one_day_s",
            "whole_stage_codegen_off.full_run_all_days_s",
            "default.full_run_all_days_s",
        ],
    )
)
SHARE_ARMS = ("greedy", "incentive", "incentive@greedy", "softmax")


def vs_greedy(share: str, arm: str) -> Key:
    """The arm's cumulative purchases minus greedy's, in the share's final round."""
    return lambda j: (
        j["final_round"][share][arm]["cum_purchases"]
        - j["final_round"][share]["greedy"]["cum_purchases"]
    )


FINAL_KEYS = (
    "cum_purchases", "cum_purchases_ci95", "cum_further_views", "cum_further_views_ci95",
    "ctr_auc", "ctr_auc_ci95",
)  # fmt: skip
CHECKS += [
    (
        rf"\| {share} \| {re.escape(arm)} \| # ± # \| # ± # \| # ± # \| \+?# \|",
        "bench_new_ad_share.json",
        [*(("final_round", share, arm, k) for k in FINAL_KEYS), vs_greedy(share, arm)],
    )
    for share in ("0.0", "0.05")
    for arm in SHARE_ARMS
]
CHECKS += [
    (
        rf"\| {share} \| {re.escape(arm)} \| " + r" \| ".join([r"\+?# / #"] * 3) + r" \|",
        "bench_new_ad_share.json",
        [
            ("ope_accuracy", share, arm, est, k)
            for est in ("ips", "snips", "dr")
            for k in ("bias", "rmse")
        ],
    )
    for share in ("0.0", "0.05")
    for arm in SHARE_ARMS[:3]
]
CHECKS.append(
    (
        r"nothing else running, # s for the share 0\s+and # s for 0\.05",
        "bench_new_ad_share.json",
        [("runs", "0.0", "wall_s"), ("runs", "0.05", "wall_s")],
    )
)
RETRAINING = {  # the README's flags of a retraining row -> its run's JSON
    "`--warm-train-days 0`": "all_days",
    "`--warm-train-days 0 --epochs 1`": "all_days_1_epoch",
    "`--no-warm-start`": "from_scratch",
    "`--warm-train-days 1`": "latest_day",
}


def retraining_row(flags: str, run: str) -> tuple[str, str, list[Key]]:
    """A row of the loop's retraining table: greedy's CTR AUC in rounds 1-5, purchases 1-5."""
    keys: list[Key] = [f"arms.greedy.rounds.{r}.ctr_auc" for r in range(1, 6)]
    keys.append(lambda j: sum(row["purchases"] for row in j["arms"]["greedy"]["rounds"][1:]))
    cells = ", ".join(["#"] * 5)
    return rf"\({re.escape(flags)}\)\** \| {cells} \| # \|", f"simulate_retraining/{run}.json", keys


CHECKS += [retraining_row(flags, run) for flags, run in RETRAINING.items()]
WORDS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "two": 2, "three": 3, "four": 4}


def _spark(j: dict) -> dict:
    return next(r for r in j["results"] if r["engine"] == "spark")


def _spark_stage(j: dict, stage: str) -> dict:
    return next(s for s in _spark(j)["stages"] if s["stage"] == stage)


def lookup(data: Any, key: Key) -> float:
    if callable(key):
        return float(key(data))
    for part in key if isinstance(key, tuple) else key.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return float(data)


def as_printed(value: float, printed: str) -> str:
    """``value`` rounded and written the way ``printed`` is (its decimals; no commas)."""
    if printed in WORDS:
        return printed if WORDS[printed] == round(value) else f"{round(value)}"
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return f"{value:.{decimals}f}"


def readme_text() -> str:
    return README.read_text()


def test_every_cited_benchmark_json_exists_and_parses() -> None:
    cited = set(re.findall(r"tests/benchmarks/([\w.-]+\.json)", readme_text()))
    assert cited, "the README cites no benchmark JSON"
    for name in sorted(cited | {json_name for _, json_name, _ in CHECKS}):
        json.loads((ROOT / BENCH / name).read_text())  # fails when missing or malformed


IDS = [f"{json_name.removesuffix('.json')}-{i}" for i, (_, json_name, _) in enumerate(CHECKS)]


@pytest.mark.parametrize(("pattern", "json_name", "keys"), CHECKS, ids=IDS)
def test_readme_figure_matches_its_json(pattern: str, json_name: str, keys: list[Key]) -> None:
    text = re.sub(r"\s+", " ", readme_text())
    found = re.findall(pattern.replace(r"\s+", " ").replace("#", NUM), text)
    assert len(found) == 1, f"README passage not found once ({len(found)}): {pattern}"
    printed = found[0] if isinstance(found[0], tuple) else (found[0],)
    assert len(printed) == len(keys), pattern
    data = json.loads((ROOT / BENCH / json_name).read_text())
    for figure, key in zip(printed, keys, strict=True):
        figure = figure.replace(",", "")
        expected = as_printed(lookup(data, key), figure)
        assert figure == expected, f"README says {figure}, {json_name} {key}: {expected}"


def test_readme_differences_add_up() -> None:
    """Every "a - b = c" the README prints is right to the last printed digit."""
    found = re.findall(r"(\d+\.\d+) - (\d+\.\d+) = (\d+\.\d+)", readme_text())
    assert found
    for a, b, c in found:
        assert as_printed(float(a) - float(b), c) == c, f"{a} - {b} = {c}"


def test_as_printed_rounds_like_the_readme() -> None:
    assert as_printed(26.370427, "26.4") == "26.4"
    assert as_printed(1646.85, "1647") == "1647"
    assert as_printed(0.7891164, "0.7891") == "0.7891" != as_printed(0.78951, "0.7891")
    assert as_printed(2, "second") == "second" and as_printed(1, "second") == "1"
