"""Where the project lives on disk, and its default data folder (demo worlds, lakes, MLflow)."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"
