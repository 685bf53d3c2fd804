"""Ready simulators, each a `simfer.Simulator` with its physics or maths in its docstring.

* `GaltonBoard`: generalized Galton board, gold from its latent path, exact likelihood.
* `WeinbergAngle`: e+e- → μ+μ- forward-backward asymmetry, exact per-event likelihood.
* `LinearGaussianDesign`: when to sample a damped oscillation; x = X(d)θ + ε with the
  analytic expected information gain of every design d.
* `LocationFinding`: K hidden sources in the plane seen through an inverse-square sensor;
  the benchmark of sequential design (Deep Adaptive Design), exact likelihood.
* `ToyJets`: a toy parton shower; x is a variable-size set of 4-momenta, gold from its tree.
* The benchmarks of the field (as in sbibm): `GaussianLinear`, `TwoMoons`, `SLCP`,
  `GaussianMixture`, `LotkaVolterra`, `SIR`.
"""

from .benchmarks import SIR, SLCP, GaussianLinear, GaussianMixture, LotkaVolterra, TwoMoons
from .galton import GaltonBoard
from .linear_gaussian import LinearGaussianDesign
from .location_finding import LocationFinding
from .toyjets import ToyJets
from .weinberg import WeinbergAngle

__all__ = [
    "GaltonBoard",
    "GaussianLinear",
    "GaussianMixture",
    "LinearGaussianDesign",
    "LocationFinding",
    "LotkaVolterra",
    "SIR",
    "SLCP",
    "ToyJets",
    "TwoMoons",
    "WeinbergAngle",
]
