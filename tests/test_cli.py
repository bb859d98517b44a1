"""Every job's options come from its config dataclass through etl/cli.py: --help shows each
default, a bad value is one line and exit code 2, --config FILE under explicit flags, --param."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

from etl import cli
from etl.config import EtlConfig, SparkOptions
from etl.score_config import ScoreConfig
from etl.world.generate_config import GenerateConfig
from train.promote_config import PromoteConfig
from train.quickstart import QuickstartConfig
from train.train_config import TrainConfig, parse_config

ROOT = Path(__file__).resolve().parent.parent
JOBS = {  # job -> (its config dataclasses, an option value it must refuse)
    "etl": ([EtlConfig, SparkOptions], ["--max-len", "long"]),
    "train": ([TrainConfig], ["--epochs", "many"]),
    "generate": ([GenerateConfig], ["--users", "many"]),
    "quickstart": ([QuickstartConfig], ["--batch-size", "big"]),
    "score": ([ScoreConfig], ["--samples-version", "latest"]),
    "promote": ([PromoteConfig], ["--min-delta", "tiny"]),
}
REQUIRED = {  # values for the required fields of each config
    EtlConfig: {"input": "raw", "output": "lake"},
    SparkOptions: {},
    TrainConfig: {},
    GenerateConfig: {"out": "world"},
    QuickstartConfig: {},
    ScoreConfig: {"model_uri": "models:/isrec-esmm@champion", "lake": "lake"},
    PromoteConfig: {"model_name": "isrec-esmm"},
}
PARTS = ("bench_etl_engines", "bench_etl_sampling")  # modules of bench_etl.py
BENCHMARKS = [
    p for p in sorted((ROOT / "tests" / "benchmarks").glob("bench_*.py")) if p.stem not in PARTS
]


def run_script(script: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "1000"}  # no wrapped help lines
    command = [sys.executable, str(script), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def run_job(job: str, *args: str) -> subprocess.CompletedProcess:
    return run_script(ROOT / "jobs" / f"{job}.py", *args)


def shown_default(value: object) -> str:
    return repr(value) if value == "" else str(value)


def assert_one_line_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0], done.stderr
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize("job", sorted(JOBS))
def test_help_shows_every_option_and_default(job: str) -> None:
    done = run_job(job, "--help")
    assert done.returncode == 0, done.stderr
    for config in JOBS[job][0]:
        for f in fields(config):
            text = f.metadata.get("help", "")
            flag = "--param" if f.name == "model_params" else cli.flag_of(f.name)
            if text is None:  # a test hook
                assert flag not in done.stdout
                continue
            shown = flag_help(done.stdout, flag)
            if f.name == "model_params":
                assert "(default: none)" in shown, shown
            elif not f.metadata.get("required") and "default:" not in (text or ""):
                assert f"(default: {shown_default(cli.default_of(f))})" in shown, shown


def flag_help(help_text: str, flag: str) -> str:
    """The lines --help shows for ``flag``: its own and its help below it, if any."""
    lines = help_text.split("options:", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] in ([flag], [flag + ","]))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("-")), None)
    return " ".join(lines[start:end])


def test_help_names_the_differing_quickstart_defaults() -> None:
    """The quickstart shares the train job's batch and lr; epochs and max_len differ, on
    purpose (QuickstartConfig's docstring), and --help shows both sides."""
    quick, train = run_job("quickstart", "--help").stdout, run_job("train", "--help").stdout
    etl = run_job("etl", "--help").stdout
    for flag in ("--batch-size", "--lr"):
        assert (
            flag_help(quick, flag).split("(default:")[1]
            == flag_help(train, flag).split("(default:")[1]
        )
    assert "(default: 3)" in flag_help(quick, "--epochs")
    assert "(default: 5)" in flag_help(train, "--epochs")
    assert "(default: 20)" in flag_help(quick, "--max-len")
    assert "(default: 50)" in flag_help(etl, "--max-len")
    assert "(default: 30.0)" in flag_help(etl, "--gap-minutes")


@pytest.mark.parametrize("job", sorted(JOBS))
def test_bad_value_is_one_line_and_exit_2(job: str) -> None:
    bad = JOBS[job][1]
    assert_one_line_error(run_job(job, *bad), f"{job}", bad[0], repr(bad[1]))


@pytest.mark.parametrize("config", list(REQUIRED), ids=lambda c: c.__name__)
def test_parse_round_trips_the_defaults(config: type) -> None:
    given = REQUIRED[config]
    argv = [x for name, value in given.items() for x in (cli.flag_of(name), value)]
    assert cli.parse(config, argv) == config(**given)


@pytest.mark.parametrize("config", list(REQUIRED), ids=lambda c: c.__name__)
def test_to_argv_round_trips_a_changed_config(config: type) -> None:
    changed = config(**REQUIRED[config])
    for f in fields(changed):  # flip every bool, bump every int
        value = getattr(changed, f.name)
        if isinstance(value, bool):
            setattr(changed, f.name, not value)
        elif isinstance(value, int):
            setattr(changed, f.name, value + 1)
    argv = [x for name, value in REQUIRED[config].items() for x in (cli.flag_of(name), value)]
    assert cli.parse(config, [*argv, *cli.to_argv(changed)]) == changed


def test_config_file_under_explicit_flags(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"epochs": 7, "lr": 1, "model": "esmm", "use_gpu": True}))
    cfg = parse_config(["--config", str(path), "--lr", "0.5", "--no-use-gpu"])
    assert (cfg.epochs, cfg.lr, cfg.model, cfg.use_gpu) == (7, 0.5, "esmm", False)
    assert cfg.batch_size == TrainConfig().batch_size  # neither in the file nor given
    assert isinstance(parse_config(["--config", str(path)]).lr, float)  # JSON 1 -> 1.0


def test_config_file_gives_required_fields(tmp_path: Path) -> None:
    path = tmp_path / "etl.json"
    path.write_text(json.dumps({"input": "raw", "output": "lake", "max_len": 20}))
    cfg = cli.parse(EtlConfig, ["--config", str(path), "--output", "other"], config_file=True)
    assert (cfg.input, cfg.output, cfg.max_len) == ("raw", "other", 20)


@pytest.mark.parametrize(
    "content, words",
    [
        ({"epochx": 1}, ["unknown keys", "epochx"]),
        ({"epochs": "many"}, ["epochs must be int"]),
        ({"loader": "nope"}, ["loader must be one of"]),
        ([1, 2], ["expected a JSON object"]),
    ],
)
def test_bad_config_file_is_one_line_and_exit_2(tmp_path: Path, content, words) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    assert_one_line_error(run_job("train", "--config", str(path)), "train.py", *words)


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(run_job("train", "--config", str(tmp_path / "no.json")), "no.json")


def test_train_param(tmp_path: Path, capsys) -> None:
    cfg = parse_config(["--param", "tower_hidden=8,4", "--param", "dropout = 0.1"])
    assert cfg.model_params == {"tower_hidden": "8,4", "dropout": "0.1"}
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model_params": {"dropout": "0.5", "heads": "2"}}))
    cfg = parse_config(["--config", str(path), "--param", "dropout=0.2"])
    assert cfg.model_params == {"dropout": "0.2", "heads": "2"}  # the flag wins per key
    with pytest.raises(SystemExit) as exc:
        parse_config(["--param", "tower_hidden"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--param expects KEY=VALUE" in err, err


def test_test_hooks_parse_but_stay_hidden() -> None:
    cfg = parse_config(["--hook-at", "0:3", "--hook-pid-file", "pid"])
    assert (cfg.hook_at, cfg.hook_pid_file) == ("0:3", "pid")


def test_validate_errors_are_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parse(GenerateConfig, ["--out", "w", "--page-ad-rate", "1.5"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "page_ad_rate must be in (0, 1]" in err, err


def test_optional_and_path_fields() -> None:
    @dataclass
    class Opts:
        limit: int | None = None
        folder: Path | None = field(default=None, metadata={"help": "where"})

    assert cli.parse(Opts, []) == Opts()
    assert cli.parse(Opts, ["--limit", "3", "--folder", "x"]) == Opts(3, Path("x"))


def test_unsupported_field_type_is_refused() -> None:
    @dataclass
    class Opts:
        pair: tuple[int, int] = (1, 2)

    with pytest.raises(TypeError, match="Opts.pair"):
        cli.build_parser(Opts)


def test_shared_field_names_are_refused() -> None:
    @dataclass
    class Other:
        master: str = ""

    with pytest.raises(ValueError, match="master"):
        cli.build_parser(SparkOptions, Other)


@pytest.mark.slow
@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.stem)
def test_benchmark_help(script: Path) -> None:
    done = run_script(script, "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(default: " in done.stdout
