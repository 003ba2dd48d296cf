"""Decoder-only peers YOCO is measured against."""

from baselines.transformer import Transformer, from_preset

__all__ = ["Transformer", "from_preset"]
