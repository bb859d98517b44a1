"""Generate a synthetic Taobao world in the raw formats of Tianchi dataset 56.

    python jobs/generate.py --out data/raw/taobao_ad --users 5000 --days 8 --seed 0

Writes raw_sample.csv, behavior_log.csv, ad_feature.csv, user_profile.csv, truth.csv and
world.json to --out. Invalid arguments give a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# the repo root goes first: jobs/etl.py would otherwise shadow the etl package
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etl.world import WorldConfig, write_world  # noqa: E402

DEFAULTS = WorldConfig()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--users", type=int, default=DEFAULTS.users, help="number of users")
    p.add_argument("--days", type=int, default=DEFAULTS.days, help="impression days from 05-06")
    p.add_argument(
        "--history-days",
        type=int,
        default=DEFAULTS.history_days,
        help="behavior-only days before the first impression day",
    )
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--chunk-users", type=int, default=DEFAULTS.chunk_users)
    p.add_argument("--ads", type=int, default=None, help="number of ads (default: 2.5 x users)")
    p.add_argument("--items", type=int, default=None, help="catalog items, ads included (3 x ads)")
    p.add_argument("--cates", type=int, default=None, help="categories (default: 5 x sqrt(ads))")
    p.add_argument("--brands", type=int, default=None, help="brands (default: ads / 2)")
    p.add_argument("--page-ad-rate", type=float, default=DEFAULTS.page_ad_rate)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _check_out(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    probe = out / ".generate_write_probe"
    probe.write_bytes(b"")
    probe.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = WorldConfig(
        seed=args.seed,
        users=args.users,
        days=args.days,
        history_days=args.history_days,
        chunk_users=args.chunk_users,
        ads=args.ads,
        items=args.items,
        cates=args.cates,
        brands=args.brands,
        page_ad_rate=args.page_ad_rate,
    )
    try:
        config.validate()
        if not 0.0 < args.page_ad_rate <= 1.0:
            raise ValueError(f"page_ad_rate must be in (0, 1], got {args.page_ad_rate}")
    except ValueError as exc:
        parser.error(str(exc))
    try:
        _check_out(Path(args.out))
    except OSError as exc:
        parser.error(f"cannot write to --out {args.out}: {exc.strerror or exc}")
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    write_world(config, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
