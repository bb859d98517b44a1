"""Generate a synthetic Taobao world in the raw formats of Tianchi dataset 56 (or Ali-CCP).

    python jobs/generate.py --out data/raw/taobao_ad --users 5000 --days 8 --seed 0
    python jobs/generate.py --out data/raw/ali_ccp_world --format ali_ccp --users 5000

Writes raw_sample.csv, behavior_log.csv, ad_feature.csv, user_profile.csv, truth.csv and
world.json to --out; with ``--format ali_ccp`` sample_skeleton_{train,val,test}.csv,
common_features_{train,val,test}.csv, truth_ali_ccp.csv and world.json instead
(etl/world/ali_ccp_writer.py). Options: etl/world/generate_config.py (``--help``). Invalid
arguments give a one-line error and exit code 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

# the repo root goes first: jobs/etl.py would otherwise shadow the etl package
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from etl import cli  # noqa: E402
from etl.errors import run_cli  # noqa: E402
from etl.world import write_world  # noqa: E402
from etl.world.ali_ccp_writer import write_ali_ccp_world  # noqa: E402
from etl.world.generate_config import GenerateConfig  # noqa: E402

PROG = "generate"


def _check_out(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    probe = out / ".generate_write_probe"
    probe.write_bytes(b"")
    probe.unlink()


def main(argv: list[str] | None = None) -> int:
    cfg = cli.parse(GenerateConfig, argv, prog=PROG, description=__doc__.split("\n\n")[0])
    try:
        _check_out(Path(cfg.out))
    except OSError as exc:
        cli.Parser(prog=PROG).error(f"cannot write to --out {cfg.out}: {exc.strerror or exc}")
    logging.basicConfig(
        level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run_cli(lambda: _write(cfg))


def _write(cfg: GenerateConfig) -> int:
    write = write_ali_ccp_world if cfg.format == "ali_ccp" else write_world
    write(cfg.world(), cfg.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
