"""Options of the closed-loop simulation (jobs/simulate.py), one dataclass through etl/cli.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from etl.project import DATA_DIR


@dataclass
class SimulateConfig:
    """Round 0: ``initial_days`` impression days (after ``history_days`` behavior-only days)
    logged by the world's logging policy, the same for every arm. Each later round adds one
    day per arm under the arm's policy with the model trained on the arm's own data so far."""

    data_dir: str = field(
        default=str(DATA_DIR / "simulate"), metadata={"help": "logs, lakes and models per arm"}
    )
    policies: str = field(
        default="greedy,incentive,uniform",
        metadata={
            "help": "arms, comma-separated NAME[:PARAM] (train.policy.make_policy); "
            "NAME[:PARAM]@ARM serves that policy with the models ARM trains (the data effect)"
        },
    )
    rounds: int = field(default=5, metadata={"help": "rounds after round 0 (one day each)"})
    seeds: int = field(default=3, metadata={"help": "worlds (and trainings) seeded 0..N-1"})
    users: int = field(default=600, metadata={"help": "users of the world"})
    scale: int = field(default=1, metadata={"help": "multiply --users (10: the scale run)"})
    slate: int = field(default=30, metadata={"help": "candidates offered per ad slot"})
    new_ad_share: float = field(
        default=0.05, metadata={"help": "new ads entering the catalog each day, share of ads"}
    )
    initial_days: int = field(default=3, metadata={"help": "impression days of round 0"})
    history_days: int = field(default=2, metadata={"help": "behavior-only days before day 0"})
    model: str = field(default="rnn_mtl", metadata={"help": "model every arm trains"})
    epochs: int = field(default=2, metadata={"help": "epochs per round"})
    num_workers: int = field(default=1, metadata={"help": "Ray Train workers per training"})
    concurrent_trainings: int = field(
        default=1,  # 2 cores: 2 gave 588 s against 579 s (bench_simulate.json): CPU-bound
        metadata={
            "help": "arms' trainings at once, each overlapping the next arm's ETL "
            "(1: one after the other; more pays only with spare cores); more than Ray's "
            "CPUs hold wait for them"
        },
    )
    warm_start: bool = field(
        default=True,
        metadata={
            "help": "each round's training starts from the arm's previous model (the loop's "
            "incremental ETL keeps vocabulary ids; --no-warm-start: from scratch)"
        },
    )
    warm_train_days: int = field(
        default=1,  # 0 (all days) let greedy's CTR AUC fall from 0.747 to 0.708 over rounds 2-5
        metadata={
            "help": "a warm-started training reads only the latest N train days, the ones its "
            'model has not seen (0: all days; README "Retraining in the loop")'
        },
    )
    max_len: int = field(default=20, metadata={"help": "history length L (ETL)"})
    eval_users: int = field(
        default=1000,  # 200 gave 668 impressions, 37 clicks and no purchase (seed 0)
        metadata={
            "help": "held-out users (in no arm's logs) whose uniform-logged day measures "
            "every arm's model"
        },
    )
    ope_arm: str = field(
        default="",
        metadata={
            "help": "arm whose logs estimate every other arm's value off-policy "
            "(default: the first softmax arm, if any; 'none': no estimates)"
        },
    )
    experiment: str = field(default="isrec-simulate", metadata={"help": "MLflow experiment"})
    tracking_uri: str = field(
        default="", metadata={"help": "MLflow store (default: MLFLOW_TRACKING_URI, else sqlite)"}
    )

    def validate(self) -> None:
        from train.policy import make_policy

        counts = ("rounds", "seeds", "users", "scale", "slate", "epochs", "num_workers")
        for name in (*counts, "concurrent_trainings"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.initial_days < 2:
            raise ValueError("--initial-days must be >= 2 (one train and one valid day)")
        if self.history_days < 0 or self.warm_train_days < 0:
            raise ValueError("--history-days and --warm-train-days must be >= 0")
        if self.eval_users < 1 or self.max_len < 1:
            raise ValueError("--eval-users and --max-len must be >= 1")
        if not 0.0 <= self.new_ad_share <= 1.0:
            raise ValueError(f"--new-ad-share must be in [0, 1], got {self.new_ad_share}")
        arms = self.arm_specs()
        if not arms:
            raise ValueError("--policies names no policy")
        if len(set(arms)) != len(arms):
            raise ValueError(f"--policies names an arm twice: {','.join(arms)}")
        from train.sim.arms import split_spec

        if self.ope_arm not in ("", "none", *arms):
            raise ValueError(f"--ope-arm {self.ope_arm!r} is not one of --policies")

        for spec in arms:
            policy, source = split_spec(spec)
            make_policy(policy)  # ValueError with a one-line message for a bad spec
            if source is not None and (source not in arms or split_spec(source)[1] is not None):
                raise ValueError(
                    f"--policies: {spec!r} trains on {source!r}, which must be another arm "
                    "of --policies that trains on its own data"
                )

    def ope_arm_spec(self) -> str | None:
        """The arm whose logs the off-policy estimates come from, or None."""
        if self.ope_arm == "none":
            return None
        if self.ope_arm:
            return self.ope_arm
        return next((a for a in self.arm_specs() if a.split(":")[0] == "softmax"), None)

    def arm_specs(self) -> list[str]:
        return [p.strip() for p in self.policies.split(",") if p.strip()]

    @property
    def world_users(self) -> int:
        return self.users * self.scale
