"""Diagnostics of a simulator's gold, and of a learnt posterior (any
`simfer.inference.Posterior`).

* `check_gold`: is a simulator's joint log ratio and joint score unbiased? (`GoldCheck`);
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
from .gold import BinnedCheck, GoldCheck, MeanCheck, binned_mean_test, check_gold
from .predictive import PredictiveCheck, posterior_predictive_check

__all__ = [
    "BinnedCheck",
    "CoverageCurve",
    "GoldCheck",
    "MeanCheck",
    "PredictiveCheck",
    "SBCResult",
    "TARPResult",
    "binned_mean_test",
    "c2st",
    "check_gold",
    "expected_coverage",
    "per_observation_log_prob",
    "posterior_predictive_check",
    "posterior_samples",
    "sbc",
    "tarp",
]
