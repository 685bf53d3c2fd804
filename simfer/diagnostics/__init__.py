"""Diagnostics of a learnt posterior, each working on any `simfer.inference.Posterior`.

* `sbc`: simulation-based calibration (rank statistics and their uniformity test);
* `expected_coverage`: coverage of the highest-posterior-density regions;
* `tarp`: coverage of random balls (TARP), from samples alone;
* `posterior_predictive_check`: predictive p-values of data statistics;
* `c2st`: the classifier two-sample test between two samples.
"""

from .c2st import c2st
from .calibration import (
    CoverageCurve,
    SBCResult,
    TARPResult,
    expected_coverage,
    per_observation_log_prob,
    posterior_samples,
    sbc,
    tarp,
)
from .predictive import PredictiveCheck, posterior_predictive_check

__all__ = [
    "CoverageCurve",
    "PredictiveCheck",
    "SBCResult",
    "TARPResult",
    "c2st",
    "expected_coverage",
    "per_observation_log_prob",
    "posterior_predictive_check",
    "posterior_samples",
    "sbc",
    "tarp",
]
