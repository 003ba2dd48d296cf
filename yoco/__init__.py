"""YOCO (You Only Cache Once) and the pieces the baseline shares with it."""

from yoco import ops
from yoco.config import PRESETS, YOCOConfig
from yoco.model import YOCO, from_preset

__all__ = ["PRESETS", "YOCO", "YOCOConfig", "from_preset", "ops"]
