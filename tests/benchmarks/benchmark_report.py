"""The JSON report a benchmark writes: its options, the machine and its load, then its figures."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any


class Report:
    """Started when the benchmark starts; ``write`` adds the machine, load and wall seconds."""

    def __init__(self, args: Any) -> None:
        self.args = asdict(args)
        self.started, self.load_start = time.perf_counter(), os.getloadavg()

    def write(self, out: str, **figures: Any) -> None:
        report = {
            "args": self.args,
            "machine": platform.platform(),
            "loadavg_start": self.load_start,
            "loadavg_end": os.getloadavg(),
            "total_seconds": round(time.perf_counter() - self.started, 1),
            **figures,
        }
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2))
        print(f"wrote {out}")
