"""Asset checks: each dataset asset's contract, visible (and, for training data, blocking) in the UI."""

from checks.datasets import ALL_CHECKS

__all__ = ["ALL_CHECKS"]
