"""From a trained surrogate to posteriors, limits and chain diagnostics.

`Posterior` (one interface for every estimator: ``est.posterior(prior, x_obs)`` builds it
from the estimator's `EventTerm`, see `simfer.inference.term`), its samplers
(`slice_sample`, `rejection_sample`, `pyro_mcmc`), chain diagnostics
(`split_r_hat`, `effective_sample_size`) and likelihood-ratio limits (`simfer.inference.limits`).
"""

from .chains import effective_sample_size, split_r_hat
from .limits import LikelihoodScan, expected_scans, likelihood_scan
from .mcmc import pyro_mcmc
from .posterior import Posterior, posterior_from_likelihood
from .rejection import rejection_sample
from .slice import SliceResult, slice_sample
from .term import EventLogLikelihood, EventTerm, SupportsPosterior

__all__ = [
    "EventLogLikelihood",
    "EventTerm",
    "SupportsPosterior",
    "LikelihoodScan",
    "Posterior",
    "SliceResult",
    "effective_sample_size",
    "expected_scans",
    "likelihood_scan",
    "posterior_from_likelihood",
    "pyro_mcmc",
    "rejection_sample",
    "slice_sample",
    "split_r_hat",
]
