"""Shared core: knows no system. Metrics, splits, run folders, units of work, checkpoints, configs."""

from detectlab.core.errors import InputError

__all__ = ["InputError"]
