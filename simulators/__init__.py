"""Ready simulators, each a `simfer.Simulator` with its physics or maths in its docstring.

* `GaltonBoard`: generalized Galton board, gold from its latent path, exact likelihood.
* `WeinbergAngle`: e+e- → μ+μ- forward-backward asymmetry, exact per-event likelihood.
* `ToyJets`: a toy parton shower; x is a variable-size set of 4-momenta, gold from its tree.
* The benchmarks of the field (as in sbibm): `GaussianLinear`, `TwoMoons`, `SLCP`,
  `GaussianMixture`, `LotkaVolterra`, `SIR`.
"""

from .benchmarks import SIR, SLCP, GaussianLinear, GaussianMixture, LotkaVolterra, TwoMoons
from .galton import GaltonBoard
from .toyjets import ToyJets
from .weinberg import WeinbergAngle

__all__ = [
    "GaltonBoard",
    "GaussianLinear",
    "GaussianMixture",
    "LotkaVolterra",
    "SIR",
    "SLCP",
    "ToyJets",
    "TwoMoons",
    "WeinbergAngle",
]
