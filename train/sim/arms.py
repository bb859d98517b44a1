"""One arm of the simulation: its policy, its own raw logs, lake, model and behavior history.

Each day's logs are written as a taobao_ad folder under ``days/`` (etl/world ``write_day``) and
merged into ``raw/``, the ETL's input: the day's impressions and behaviors appended, the day's
catalog and profiles replacing the last. Appends go to temporary copies renamed at the end, so
a crash leaves the previous day's merged input whole.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from etl.world import DayLogs, TaobaoWorld, write_day
from train.policy import Policy, make_policy
from train.sim.ranker import PastEvents

APPENDED = ("raw_sample.csv", "behavior_log.csv")
REPLACED = ("ad_feature.csv", "user_profile.csv")


TRAINS_ON = "@"  # ``incentive:0.5@greedy``: serve with incentive, train on greedy's data


def arm_name(spec: str) -> str:
    """A path- and registry-safe name: ``incentive:0.5`` -> ``incentive-0.5``,
    ``incentive:0.5@greedy`` -> ``incentive-0.5-on-greedy``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", spec.strip().replace(TRAINS_ON, "-on-"))


def split_spec(spec: str) -> tuple[str, str | None]:
    """(policy spec, the arm whose models it serves with, or None: its own)."""
    policy, _, source = spec.partition(TRAINS_ON)
    return policy.strip(), (source.strip() or None) if TRAINS_ON in spec else None


@dataclass
class Arm:
    """``spec`` is a policy (train.policy.make_policy) or ``POLICY@ARM``: that policy served
    with the models ``ARM`` trains on its own logs, so that arm's data, not this one's, makes
    the model (the data effect of a policy is the difference to the arm serving POLICY with
    models of its own data)."""

    spec: str
    root: Path
    policy: Policy = field(init=False)
    past: PastEvents = field(default_factory=PastEvents)
    ad_impressions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    model: Any = None  # the model of the latest round (None before round 1)
    bundle: Any = None
    trained: tuple[Any, Any] | None = None  # (TrainConfig, FeatureSpec) of the latest model
    trains_on: str | None = field(init=False, default=None)  # the spec of the arm it borrows from

    def __post_init__(self) -> None:
        policy, self.trains_on = split_spec(self.spec)
        self.policy = make_policy(policy)

    def borrow(self, source: Arm) -> None:
        """Serve the next day with ``source``'s model of this round (the data-effect arm)."""
        self.model, self.bundle, self.trained = source.model, source.bundle, source.trained

    def copy_round_one(self, source: Arm) -> None:
        """Round 1 of an arm that trains on its own logs: every such arm has the same round-0
        logs and training seed, so it takes a copy of ``source``'s lake and its model instead
        of an identical ETL and training; from round 2 on, its own days make its own."""
        shutil.rmtree(self.lake, ignore_errors=True)
        shutil.copytree(source.lake, self.lake)
        self.borrow(source)

    @property
    def name(self) -> str:
        return arm_name(self.spec)

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    def add_day(self, world: TaobaoWorld, day: DayLogs) -> None:
        """Write the day, merge it into the ETL input, extend the histories and ad counts."""
        folder = self.root / "days" / f"day_{day.day + 100:03d}"
        write_day(world, day, folder)
        merge_day(folder, self.raw)
        self.past.extend(day.logs.behaviors)
        counts = np.bincount(day.logs.impressions["ad"], minlength=day.n_ads)
        grown = np.zeros(max(counts.size, self.ad_impressions.size), np.int64)
        grown[: self.ad_impressions.size] += self.ad_impressions
        grown[: counts.size] += counts
        self.ad_impressions = grown


def merge_day(day_folder: Path, raw: Path) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for name in APPENDED:
        target, tmp = raw / name, raw / f".{name}.part"
        lines = (day_folder / name).read_bytes().split(b"\n", 1)
        if target.exists():
            shutil.copyfile(target, tmp)
            with tmp.open("ab") as out:
                out.write(lines[1] if len(lines) > 1 else b"")
        else:
            shutil.copyfile(day_folder / name, tmp)
        os.replace(tmp, target)
    for name in REPLACED:
        shutil.copyfile(day_folder / name, raw / f".{name}.part")
        os.replace(raw / f".{name}.part", raw / name)
