"""Experiment design: which design d makes the next experiment most informative about θ?

The criterion is the expected information gain, the mutual information between the
parameters and the outcome under design d,

    EIG(d) = E_{p(θ) p(x|θ,d)} [ log p(x|θ,d) − log p(x|d) ],

estimated at many candidate designs at once by `eig`, which returns an `EIGResult`
(values, Monte-Carlo standard errors, lower/upper estimates, the best design, a plot).

* `nmc`: nested Monte Carlo and the PCE lower bound from one likelihood matrix, over a
  generic batched log-likelihood (`nested_monte_carlo`, `LikelihoodModel`), and the
  generic core over any per-outer-sample terms (`contrastive_monte_carlo`);
* `contrastive`: InfoNCE and NWJ lower bounds on a ratio surrogate;
* `barber_agakov`: the Barber–Agakov lower bound on a posterior surrogate (NPE);
* `fisher`: the Fisher-information criterion ½ log det(I + n Σθ F(d)) from SALLY;
* `sources`: what a source is (a simulator with a likelihood, or a design-conditioned
  NLE, ratio, posterior or score surrogate) and how it is adapted;
* `methods`: the method table behind `eig`;
* `result`: `EIGResult`;
* `search`: the best design in a continuous box (`search`), batches (`greedy_batch`);
* `loop`: `ExperimentLoop`, the sequential design loop (suggest, observe, update);
* `sequential_bounds`: sPCE and sNMC, lower and upper bounds on the total EIG of a
  sequential policy's rollouts (`sequential_bounds`, `SequentialBounds`).

See docs/design.md.
"""

from .loop import ExperimentLoop, Round
from .methods import ALIASES, DEFAULT_METHOD, METHODS, eig
from .nmc import LikelihoodModel, NestedEstimate, nested_monte_carlo, nested_terms
from .result import EIGResult
from .search import JointExperiments, greedy_batch, search
from .sequential_bounds import SequentialBounds, history_log_likelihood, sequential_bounds

__all__ = [
    "ALIASES",
    "DEFAULT_METHOD",
    "EIGResult",
    "ExperimentLoop",
    "JointExperiments",
    "LikelihoodModel",
    "METHODS",
    "NestedEstimate",
    "Round",
    "SequentialBounds",
    "eig",
    "greedy_batch",
    "history_log_likelihood",
    "nested_monte_carlo",
    "nested_terms",
    "search",
    "sequential_bounds",
]
