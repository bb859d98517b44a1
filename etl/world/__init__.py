"""Synthetic Taobao world: numpy only, no Spark, no torch.

``TaobaoWorld`` holds the generated catalog and users and the behavior models. ``write_world``
streams its logs to disk in the Tianchi dataset-56 raw formats; in the closed loop,
``simulate_day`` runs one day under a slate policy (``SlateRequest`` -> ``Decision``, the
logging policy by default) and ``write_day`` writes that day as a taobao_ad input folder.
"""

from etl.world.config import LoopConfig
from etl.world.day_writer import write_day
from etl.world.model import BTAGS, PIDS, T0, DayLogs, Response, TaobaoWorld, WorldConfig
from etl.world.slate import Decision, LoggingPolicy, SlatePolicy, SlateRequest, SlateTruth
from etl.world.writer import HEADERS, write_world

__all__ = [
    "BTAGS",
    "HEADERS",
    "PIDS",
    "T0",
    "DayLogs",
    "Decision",
    "LoggingPolicy",
    "LoopConfig",
    "Response",
    "SlatePolicy",
    "SlateRequest",
    "SlateTruth",
    "TaobaoWorld",
    "WorldConfig",
    "write_day",
    "write_world",
]
