"""Kernels with their plain PyTorch references: retention, attention, rotary."""

from yoco.ops.retention import gated_retention

__all__ = ["gated_retention"]
