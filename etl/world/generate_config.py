"""Options of jobs/generate.py: the output folder and the WorldConfig knobs the CLI exposes.

Defaults are WorldConfig's own (read from it, never restated); ``world()`` is the WorldConfig
the job writes. The other WorldConfig fields keep their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from etl.cli import carry_over
from etl.world.model import WorldConfig

_WORLD = WorldConfig()
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("taobao_ad", "ali_ccp")  # Tianchi 56 (write_world) or raw Ali-CCP (ali_ccp_writer)


@dataclass
class GenerateConfig:
    out: str = field(
        default="", metadata={"help": "output directory (created if missing)", "required": True}
    )
    users: int = field(default=_WORLD.users, metadata={"help": "number of users"})
    days: int = field(default=_WORLD.days, metadata={"help": "impression days from 2017-05-06"})
    history_days: int = field(
        default=_WORLD.history_days,
        metadata={"help": "behavior-only days before the first impression day"},
    )
    seed: int = field(default=_WORLD.seed, metadata={"help": "world seed"})
    chunk_users: int = field(
        default=_WORLD.chunk_users,
        metadata={"help": "users simulated per chunk (part of the seed)"},
    )
    ads: int | None = field(
        default=_WORLD.ads, metadata={"help": "number of ads (default: 2.5 x users)"}
    )
    items: int | None = field(
        default=_WORLD.items, metadata={"help": "catalog items, ads included (default: 3 x ads)"}
    )
    cates: int | None = field(
        default=_WORLD.cates, metadata={"help": "categories (default: 5 x sqrt(ads))"}
    )
    brands: int | None = field(
        default=_WORLD.brands, metadata={"help": "brands (default: ads / 2)"}
    )
    page_ad_rate: float = field(
        default=_WORLD.page_ad_rate, metadata={"help": "share of pages that show an ad"}
    )
    format: str = field(
        default="taobao_ad",
        metadata={
            "help": "raw format of the logs: taobao_ad (Tianchi 56 CSVs) or ali_ccp "
            "(sample_skeleton/common_features, split by day: last day test, the one before valid)",
            "choices": FORMATS,
        },
    )
    log_level: str = field(default="INFO", metadata={"help": "logging", "choices": LOG_LEVELS})

    def world(self) -> WorldConfig:
        """The WorldConfig of these options (every other field at its default)."""
        return carry_over(self, WorldConfig)

    def validate(self) -> None:
        """Raise ValueError with a one-line message on the first invalid option."""
        self.world().validate()
        if not 0.0 < self.page_ad_rate <= 1.0:
            raise ValueError(f"page_ad_rate must be in (0, 1], got {self.page_ad_rate}")
        if self.format == "ali_ccp" and self.days < 3:
            raise ValueError(
                f"--format ali_ccp needs --days >= 3 (train, valid, test), got {self.days}"
            )
