"""The weak mixing angle from the muon angular distribution in e+e- → μ+μ-.

Physics
-------
At tree level e+e- → μ+μ- goes through s-channel photon and Z exchange.  With
θ the angle between the μ- and the incoming e-, and c = cos θ,

    dσ/dc ∝ A0 (1 + c²) + A1 c,
    A0 = 1 + 2 v² Re χ + (v² + a²)² |χ|²,
    A1 = 4 a² Re χ + 8 v² a² |χ|²,
    χ  = s / [4 sin²θ_W cos²θ_W (s − M_Z² + i M_Z Γ_Z)],
    v  = −½ + 2 sin²θ_W,   a = −½,

and the forward-backward asymmetry is A_FB = 3 A1 / (8 A0).  χ is evaluated in
real arithmetic (so autograd works in float32 and float64): with
k = 1 / (4 sin²θ_W cos²θ_W), Δ = s − M_Z² and D = Δ² + M_Z² Γ_Z²,

    Re χ = k s Δ / D,    |χ|² = k² s² / D.

The normalised per-event density on [−1, 1] is

    p(c | θ, s) = [A0 (1 + c²) + A1 c] / (8 A0 / 3)
                = (3/8) [α (1 + c)² + (1 − α) (1 − c)²],   α = ½ + (2/3) A_FB,

a mixture of the same-helicity (1 + c)² and opposite-helicity (1 − c)² terms,
whose weights are sums of squared amplitudes, so 0 ≤ α ≤ 1 for every θ.  Events
are drawn exactly from it: pick the (1 + c)² branch with probability α, draw
c = 2 u^(1/3) − 1 (the inverse of its CDF (1 + c)³ / 8), and flip the sign for the
other branch.  Moments: E[c] = A1 / (4 A0) = (2/3) A_FB and E[c²] = 2/5.

Parameters, design, observation
-------------------------------
* θ: ``sin2_theta_w`` (sin²θ_W, in (0, 1)), and optionally ``m_z`` and ``gamma_z``
  (M_Z and Γ_Z in GeV, positive), in the order given by ``parameters``.  Those
  not inferred are held at ``sin2_theta_w = 0.2312``, ``m_z = 91.1876``,
  ``gamma_z = 2.4952`` (PDG) unless other values are passed.
* design: the centre-of-mass energy √s in GeV (``design_dim = 1``).  The default
  is the Z pole, √s = M_Z = 91.1876 GeV, where LEP measured sin²θ_W from A_FB.
* x: ``[batch, n_events]``, cos θ of the μ- in each of ``n_events`` iid events;
  each row is one experiment.  Only the shape of the distribution is observed
  (not the rate), so M_Z and Γ_Z are constrained only through χ.

Check values (sin²θ_W = 0.2312, PDG M_Z and Γ_Z): A_FB(√s = 35 GeV) = −0.0907,
A_FB(M_Z) = 0.0167 (≈ (3/4) A_e², A_e = 2va/(v² + a²) = 0.150),
A_FB(130 GeV) = 0.701.

Gold: x is the whole path (there is no latent), so this is a
`simfer.TractableSimulator`: the joint log ratio and joint score are the exact ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import constraints

import simfer
from simfer.errors import ShapeError, SupportError

__all__ = ["WeinbergAngle", "M_Z", "GAMMA_Z", "SIN2_THETA_W", "PARAMETERS"]

M_Z = 91.1876  # GeV
GAMMA_Z = 2.4952  # GeV
SIN2_THETA_W = 0.2312
PARAMETERS = ("sin2_theta_w", "m_z", "gamma_z")

# Open support of each parameter, and the prior box of `WeinbergAngle.prior`.
_SUPPORT = {"sin2_theta_w": (0.0, 1.0), "m_z": (0.0, math.inf), "gamma_z": (0.0, math.inf)}
_PRIOR_BOX = {"sin2_theta_w": (0.15, 0.35), "m_z": (M_Z - 2.0, M_Z + 2.0), "gamma_z": (2.0, 3.0)}
_LOG_3_OVER_8 = math.log(3.0 / 8.0)


class _OpenBox(constraints.Constraint):
    """Each column i of a ``[batch, k]`` value in the open interval (lower_i, upper_i)."""

    event_dim = 1

    def __init__(self, names: Sequence[str], lower: Sequence[float], upper: Sequence[float]):
        self.names, self.lower, self.upper = tuple(names), tuple(lower), tuple(upper)
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        lower = torch.tensor(self.lower, dtype=value.dtype, device=value.device)
        upper = torch.tensor(self.upper, dtype=value.dtype, device=value.device)
        return ((value > lower) & (value < upper)).all(-1)

    def __repr__(self) -> str:
        return ", ".join(
            f"{n} in ({lo:g}, {hi:g})"
            for n, lo, hi in zip(self.names, self.lower, self.upper, strict=True)
        )


def _rows(value: Tensor) -> int:
    return value.shape[0] if value.ndim >= 2 else 1


class WeinbergAngle(simfer.TractableSimulator):
    """cos θ of the μ- in e+e- → μ+μ- (γ + Z, tree level); see the module docstring.

    Args:
        n_events: events per experiment (x is ``[batch, n_events]``).
        parameters: which of ``("sin2_theta_w", "m_z", "gamma_z")`` are θ, in order.
        sin2_theta_w: sin²θ_W when it is not in θ.
        m_z: the Z mass in GeV when it is not in θ.
        gamma_z: the Z width in GeV when it is not in θ.
        default_energy: √s in GeV used when no design is given (the Z pole).
    """

    def __init__(
        self,
        n_events: int = 100,
        parameters: Sequence[str] = ("sin2_theta_w",),
        *,
        sin2_theta_w: float = SIN2_THETA_W,
        m_z: float = M_Z,
        gamma_z: float = GAMMA_Z,
        default_energy: float = M_Z,
    ):
        if isinstance(parameters, str):
            parameters = (parameters,)
        parameters = tuple(parameters)
        unknown = [p for p in parameters if p not in PARAMETERS]
        if not parameters or unknown or len(set(parameters)) != len(parameters):
            raise ValueError(
                f"parameters must be distinct names from {PARAMETERS}, got {parameters}"
            )
        if not isinstance(n_events, int) or n_events < 1:
            raise ValueError(f"n_events must be a positive int, got {n_events!r}")
        if not default_energy > 0:
            raise ValueError(f"default_energy must be positive (GeV), got {default_energy}")
        self.parameters = parameters
        self.n_events = n_events
        self.fixed = {"sin2_theta_w": sin2_theta_w, "m_z": m_z, "gamma_z": gamma_z}
        for name, value in self.fixed.items():
            lower, upper = _SUPPORT[name]
            if not lower < value < upper:
                raise ValueError(f"{name} = {value} lies outside ({lower:g}, {upper:g})")
        lower, upper = zip(*(_SUPPORT[p] for p in parameters), strict=True)
        super().__init__(
            len(parameters),
            (n_events,),
            design_dim=1,
            default_design=[default_energy],
            theta_support=_OpenBox(parameters, lower, upper),
            name="weinberg_angle",
        )

    # -- physics ------------------------------------------------------------------------
    def _parameter(self, theta: Tensor, name: str) -> Tensor | float:
        """Column ``name`` of θ ``[batch]``, or its fixed value."""
        if name in self.parameters:
            return theta[:, self.parameters.index(name)]
        return self.fixed[name]

    def _coefficients(self, theta: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """A0, A1 ``[batch]`` at θ ``[batch, theta_dim]`` and s = √s² ``[batch]``."""
        sin2 = self._parameter(theta, "sin2_theta_w")
        m_z = self._parameter(theta, "m_z")
        gamma_z = self._parameter(theta, "gamma_z")
        k = 1.0 / (4.0 * sin2 * (1.0 - sin2))
        delta = s - m_z**2
        denominator = delta**2 + (m_z * gamma_z) ** 2
        re_chi = k * s * delta / denominator
        abs2_chi = (k * s) ** 2 / denominator
        v2, a2 = (2.0 * sin2 - 0.5) ** 2, 0.25
        a0 = 1.0 + 2.0 * v2 * re_chi + (v2 + a2) ** 2 * abs2_chi
        a1 = 4.0 * a2 * re_chi + 8.0 * v2 * a2 * abs2_chi
        return a0, a1

    def _s(self, design: Tensor | None, theta: Tensor) -> Tensor:
        """s = (√s)² ``[batch]`` from a ``[batch, 1]`` design, in θ's dtype."""
        if design is None:
            design = self.default_design
        energy = design.to(device=theta.device, dtype=theta.dtype).reshape(-1)
        if not bool((energy > 0).all()):
            raise SupportError(
                f"the design of '{self.name}' is the beam energy √s in GeV and must be "
                f"positive; got {energy[energy <= 0][:5].tolist()}"
            )
        return (energy**2).expand(theta.shape[0])

    def _forward_weight(self, theta: Tensor, s: Tensor) -> Tensor:
        """α = ½ + A1/(4 A0) ``[batch]``: the weight of the (1 + c)² branch."""
        a0, a1 = self._coefficients(theta, s)
        return 0.5 + a1 / (4.0 * a0)

    def _log_density(self, x: Tensor, theta: Tensor, s: Tensor) -> Tensor:
        """log p(c|θ,s) ``[batch, n]`` of x ``[batch, n]``; −inf outside [−1, 1]."""
        a0, a1 = self._coefficients(theta, s)
        b = (a1 / a0)[:, None]
        c = x.clamp(-1.0, 1.0)
        log_p = torch.log(1.0 + c**2 + b * c) + _LOG_3_OVER_8
        return torch.where(x.abs() <= 1.0, log_p, -math.inf)

    # -- validated public helpers ----------------------------------------------------
    def _prepare(
        self, theta: Any, design: Any, x: Any = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """θ ``[batch, theta_dim]``, s ``[batch]`` and x ``[batch, n_events]``, broadcasting
        one row of any of them (θ as ``[theta_dim]``, design as ``[1]``) to the batch."""
        theta = theta if isinstance(theta, Tensor) else torch.as_tensor(theta)
        theta = self.check_theta(theta[None] if theta.ndim == 1 else theta)
        design = self.default_design if design is None else design
        design = torch.as_tensor(design, device=theta.device)
        if x is not None:
            x = torch.as_tensor(x, device=theta.device)
            x = x[None] if x.ndim == 1 else x
            if x.ndim != 2 or x.shape[1] != self.n_events:
                raise ShapeError(
                    f"x must have shape [batch, n_events] = [batch, {self.n_events}], "
                    f"got {list(x.shape)}"
                )
        sizes = {_rows(theta), _rows(design)} | ({x.shape[0]} if x is not None else set())
        batch = max(sizes)
        if not sizes <= {1, batch}:
            raise ShapeError(f"θ, design and x have incompatible numbers of rows {sorted(sizes)}")
        theta = theta.expand(batch, -1)
        if design.ndim == 2 and design.shape[0] == 1:
            design = design[0]
        design = self.check_design(design, batch, theta.device)
        if x is not None:
            dtype = torch.promote_types(x.dtype, theta.dtype)
            x, theta = x.expand(batch, -1).to(dtype), theta.to(dtype)
        return theta, self._s(design, theta), x

    def coefficients(self, theta: Any, design: Any = None) -> tuple[Tensor, Tensor]:
        """A0 and A1, each ``[batch]``, at θ ``[batch, theta_dim]`` and √s ``[batch, 1]``."""
        theta, s, _ = self._prepare(theta, design)
        return self._coefficients(theta, s)

    def asymmetry(self, theta: Any, design: Any = None) -> Tensor:
        """The forward-backward asymmetry A_FB = 3 A1 / (8 A0) ``[batch]``."""
        a0, a1 = self.coefficients(theta, design)
        return 3.0 * a1 / (8.0 * a0)

    def cdf(self, x: Any, theta: Any, design: Any = None) -> Tensor:
        """P(cos θ ≤ x) ``[batch, n_events]`` for x ``[batch, n_events]``."""
        theta, s, x = self._prepare(theta, design, x)
        alpha = self._forward_weight(theta, s)[:, None]
        c = x.clamp(-1.0, 1.0)
        return alpha * (1.0 + c) ** 3 / 8.0 + (1.0 - alpha) * (1.0 - (1.0 - c) ** 3 / 8.0)

    def prior(self, device: str | torch.device | None = None) -> simfer.BoxUniform:
        """A uniform prior over θ: sin²θ_W in [0.15, 0.35], M_Z in [89.19, 93.19] GeV
        (PDG ± 2 GeV), Γ_Z in [2.0, 3.0] GeV; the columns in the order of ``parameters``."""
        low, high = zip(*(_PRIOR_BOX[p] for p in self.parameters), strict=True)
        return simfer.BoxUniform(low, high, device=device)

    # -- the Simulator hooks ----------------------------------------------------------------
    def sample(self, theta: Tensor, design: Tensor | None, generator: torch.Generator) -> Tensor:
        """Exact draws of cos θ ``[batch, n_events]`` at θ ``[batch, theta_dim]``."""
        alpha = self._forward_weight(theta, self._s(design, theta))[:, None]
        shape = (theta.shape[0], self.n_events)
        options = {"generator": generator, "device": theta.device, "dtype": theta.dtype}
        u, w = torch.rand(shape, **options), torch.rand(shape, **options)
        c = 2.0 * u.pow(1.0 / 3.0) - 1.0  # ~ (3/8) (1 + c)²
        return torch.where(w < alpha, c, -c)

    def log_likelihood(self, x: Any, theta: Any, design: Any = None) -> Tensor:
        """log p(x|θ) = Σ_events log p(c|θ,s) ``[batch]`` for x ``[batch, n_events]``."""
        theta, s, x = self._prepare(theta, design, x)
        return self._log_density(x, theta, s).sum(-1)

    def describe(self) -> dict[str, Any]:
        fixed = {k: v for k, v in self.fixed.items() if k not in self.parameters}
        return {
            **super().describe(),
            "parameters": list(self.parameters),
            "n_events": self.n_events,
            "fixed": fixed,
        }
