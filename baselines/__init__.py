"""Decoder-only peers YOCO is measured against."""

from baselines.transformer import Transformer, from_preset
from baselines.transformer_swa import TransformerSWA

__all__ = ["Transformer", "TransformerSWA", "from_preset"]
