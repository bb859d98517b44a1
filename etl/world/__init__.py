"""Synthetic Taobao world: numpy only, no Spark, no torch.

``TaobaoWorld`` holds the generated catalog and users and the behavior models (closed loop:
``respond``); ``write_world`` streams its logs to disk in the Tianchi dataset-56 raw formats.
"""

from etl.world.model import BTAGS, PIDS, T0, Response, TaobaoWorld, WorldConfig
from etl.world.writer import HEADERS, write_world

__all__ = [
    "BTAGS",
    "HEADERS",
    "PIDS",
    "T0",
    "Response",
    "TaobaoWorld",
    "WorldConfig",
    "write_world",
]
