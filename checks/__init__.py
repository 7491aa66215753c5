"""Asset checks: each dataset asset's contract, visible (and, for training data, blocking) in the UI."""

from checks.compliance import COMPLIANCE_CHECKS
from checks.datasets import DATASET_CHECKS
from checks.expectations import SUITE_CHECKS
from checks.filtered import FILTERED_CHECKS
from checks.formatted import FORMATTED_CHECKS
from checks.licenses import LICENSE_CHECKS
from checks.synthetic import SYNTHETIC_CHECKS

ALL_CHECKS = [
    *DATASET_CHECKS,
    *LICENSE_CHECKS,
    *FILTERED_CHECKS,
    *SYNTHETIC_CHECKS,
    *SUITE_CHECKS,
    *FORMATTED_CHECKS,
    *COMPLIANCE_CHECKS,
]

__all__ = ["ALL_CHECKS"]
