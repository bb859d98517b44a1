"""Options of jobs/tune.py: every train option (train/train_config.py, the base of each trial)
plus the search's own (``TuneJobConfig``), one command line through etl/cli.py.

``--config FILE`` takes a JSON object of either's fields (e.g. a best config written by an
earlier search, with a ``space`` object); flags given override it. ``--space KEY=SPEC`` is
repeatable (train/tune_space.py: the form of SPEC and each model's default space).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from etl import cli
from train.train_config import TrainConfig

SCHEDULERS = ("asha", "fifo")


@dataclass
class TuneJobConfig:
    trials: int = field(default=8, metadata={"help": "trials sampled from the search space"})
    space: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "a search-space dimension over the model's default one: loguniform:LO:HI, "
            "uniform:LO:HI, randint:LO:HI, choice:A|B|C or a fixed value (train/tune_space.py)",
            "option": cli.KeyValues("--space", "space", "KEY=SPEC"),
        },
    )
    default_space: bool = field(
        default=True, metadata={"help": "start from the model's default space (off: --space only)"}
    )
    scheduler: str = field(
        default="asha",
        metadata={
            "help": "asha: stop poor trials early on the valid early-stop metric; fifo: none",
            "choices": SCHEDULERS,
        },
    )
    grace_period: int = field(
        default=1, metadata={"help": "epochs every trial runs before ASHA may stop it"}
    )
    reduction_factor: float = field(
        default=2.0, metadata={"help": "ASHA keeps the best 1/N of the trials at each rung"}
    )
    max_concurrent: int = field(
        default=0, metadata={"help": "trials at once (0: as many as the Ray cluster holds)"}
    )
    search_seed: int = field(default=0, metadata={"help": "seed of the random search"})
    best_config: str = field(
        default="",
        metadata={"help": "file for the best trial's config (default: data/tune/<name>/...)"},
    )

    def validate(self) -> None:
        if self.trials < 1:
            raise ValueError(f"--trials must be >= 1, got {self.trials}")
        if self.grace_period < 1:
            raise ValueError(f"--grace-period must be >= 1, got {self.grace_period}")
        if self.reduction_factor <= 1:
            raise ValueError(f"--reduction-factor must be > 1, got {self.reduction_factor}")
        if self.max_concurrent < 0:
            raise ValueError(f"--max-concurrent must be >= 0, got {self.max_concurrent}")


def parse_tune_config(argv: Sequence[str] | None = None) -> tuple[TrainConfig, TuneJobConfig]:
    """(base train config, search config) from jobs/tune.py's command line."""
    train, search = cli.parse_all(
        [TrainConfig, TuneJobConfig],
        argv,
        description="Search a model's and its optimizer's settings with Ray Tune",
        config_file=True,
    )
    return train, search
