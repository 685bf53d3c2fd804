"""Ready simulators, each a `simfer.Simulator` with its physics or maths in its docstring.

* `GaltonBoard`: generalized Galton board, gold from its latent path, exact likelihood.
* `WeinbergAngle`: e+e- → μ+μ- forward-backward asymmetry, exact per-event likelihood.
* The benchmarks of the field (as in sbibm): `GaussianLinear`, `TwoMoons`, `SLCP`,
  `GaussianMixture`, `LotkaVolterra`, `SIR`.
"""

from .galton import GaltonBoard

__all__ = ["GaltonBoard"]
