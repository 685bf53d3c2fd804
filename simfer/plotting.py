"""Figures of posteriors, calibration and limits (matplotlib; no display needed).

Every function draws on the ``fig``/``ax`` it is given, or on a new figure, and returns the
`matplotlib.figure.Figure`: save it with ``fig.savefig(path)``.  Nothing here calls
``pyplot.show``, so the functions run under the Agg backend (CI, a cluster) as well.

* `corner`: a pair plot of samples ``[n, theta_dim]``, with a reference sample and the
  true θ overlaid;
* `sbc_ranks`: SBC rank histograms with the band a calibrated posterior stays in;
* `coverage`: expected coverage / TARP curves against the diagonal;
* `likelihood_contours`: a `LikelihoodScan`'s q with its Wilks thresholds;
* `eig_curve`: an `EIGResult`'s expected information gain over the designs (a heat map
  for two design variables), its ±2 standard-error band, bounds and best design.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from scipy import stats

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from .diagnostics import CoverageCurve, SBCResult
    from .inference import LikelihoodScan

__all__ = ["corner", "coverage", "eig_curve", "likelihood_contours", "sbc_ranks"]

SAMPLE_COLOUR = "#1f77b4"
REFERENCE_COLOUR = "#ff7f0e"
TRUTH_COLOUR = "#d62728"


def _array(value: Any, name: str) -> np.ndarray:
    value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    value = value.astype(np.float64)
    if value.ndim == 1:
        value = value[:, None]
    if value.ndim != 2:
        raise ValueError(f"{name} must be [n, theta_dim], got shape {list(value.shape)}")
    return value


def _figure_for(ax: Axes | None, fig: Figure | None, size: tuple[float, float]):
    if ax is not None:
        return ax.figure, ax
    fig = fig if fig is not None else Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _credible_levels(counts: np.ndarray, levels: Sequence[float]) -> list[float]:
    """Histogram heights h_c such that the bins above h_c hold a fraction c of the mass
    (the histogram's HPD regions), increasing, for `contour`."""
    flat = np.sort(counts.ravel())[::-1]
    mass = np.cumsum(flat) / max(flat.sum(), 1e-300)
    heights = [flat[min(np.searchsorted(mass, c), len(flat) - 1)] for c in levels]
    heights = sorted(set(float(h) for h in heights if h > 0))
    return heights


def corner(
    samples: Any,
    *,
    reference: Any = None,
    truth: Any = None,
    labels: Sequence[str] | None = None,
    bins: int = 40,
    limits: Sequence[tuple[float, float]] | None = None,
    levels: Sequence[float] = (0.68, 0.95),
    names: tuple[str, str] = ("samples", "reference"),
    fig: Figure | None = None,
) -> Figure:
    """Pair plot of ``samples`` ``[n, d]``: 1-d histograms on the diagonal, the 2-d
    histogram (shaded) and its highest-density contours at ``levels`` below it.
    ``reference`` ``[m, d]`` (e.g. the exact posterior) is overlaid in a second colour,
    ``truth`` ``[d]`` as lines and a marker.  ``limits``: one (low, high) per dimension
    (default: the range of everything drawn).  The figure holds d(d + 1)/2 axes."""
    samples = _array(samples, "samples")
    d = samples.shape[1]
    reference = None if reference is None else _array(reference, "reference")
    if reference is not None and reference.shape[1] != d:
        raise ValueError(f"reference has {reference.shape[1]} dimensions, samples {d}")
    truth = None if truth is None else _array(truth, "truth").reshape(-1)
    if truth is not None and truth.shape[0] != d:
        raise ValueError(f"truth has {truth.shape[0]} values for {d} dimensions")
    labels = list(labels) if labels is not None else [f"θ[{j}]" for j in range(d)]
    if len(labels) != d:
        raise ValueError(f"{len(labels)} labels for {d} dimensions")
    if limits is None:
        stacked = samples if reference is None else np.concatenate([samples, reference])
        if truth is not None:
            stacked = np.concatenate([stacked, truth[None]])
        low, high = stacked.min(0), stacked.max(0)
        pad = 0.05 * np.where(high > low, high - low, 1.0)
        limits = list(zip(low - pad, high + pad, strict=True))
    if len(limits) != d:
        raise ValueError(f"{len(limits)} limits for {d} dimensions")
    edges = [np.linspace(lo, hi, bins + 1) for lo, hi in limits]

    fig = fig if fig is not None else Figure(figsize=(2.4 * d + 1, 2.4 * d), layout="constrained")
    grid = fig.add_gridspec(d, d)
    axes: dict[tuple[int, int], Axes] = {}
    for i in range(d):
        for j in range(i + 1):
            ax = fig.add_subplot(grid[i, j])
            axes[i, j] = ax
            if i == j:
                shade = (*to_rgb(SAMPLE_COLOUR), 0.35)
                ax.hist(
                    samples[:, j],
                    bins=edges[j],
                    density=True,
                    histtype="stepfilled",
                    facecolor=shade,
                    edgecolor=SAMPLE_COLOUR,
                    label=names[0],
                )
                if reference is not None:
                    ax.hist(
                        reference[:, j],
                        bins=edges[j],
                        density=True,
                        histtype="step",
                        color=REFERENCE_COLOUR,
                        linewidth=1.5,
                        label=names[1],
                    )
                if truth is not None:
                    ax.axvline(truth[j], color=TRUTH_COLOUR, linewidth=1.2, label="truth")
                ax.set_yticks([])
            else:
                _pair(ax, samples[:, [j, i]], edges[j], edges[i], levels, SAMPLE_COLOUR, True)
                if reference is not None:
                    _pair(
                        ax,
                        reference[:, [j, i]],
                        edges[j],
                        edges[i],
                        levels,
                        REFERENCE_COLOUR,
                        False,
                    )
                if truth is not None:
                    ax.axvline(truth[j], color=TRUTH_COLOUR, linewidth=0.8)
                    ax.axhline(truth[i], color=TRUTH_COLOUR, linewidth=0.8)
                    ax.plot(truth[j], truth[i], "s", color=TRUTH_COLOUR, markersize=4)
                ax.set_ylim(limits[i])
                if j == 0:
                    ax.set_ylabel(labels[i])
                else:
                    ax.tick_params(labelleft=False)
            ax.set_xlim(limits[j])
            if i == d - 1:
                ax.set_xlabel(labels[j])
            else:
                ax.tick_params(labelbottom=False)
    if reference is not None or truth is not None:
        handles, names_ = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, names_, loc="upper right", frameon=False)
    return fig


def _pair(ax, xy, x_edges, y_edges, levels, colour, shade) -> None:
    counts, _, _ = np.histogram2d(xy[:, 0], xy[:, 1], bins=(x_edges, y_edges))
    if shade:
        ax.pcolormesh(x_edges, y_edges, counts.T, cmap="Blues", shading="flat", rasterized=True)
    heights = _credible_levels(counts, sorted(levels, reverse=True))
    if len(heights) >= 1 and counts.max() > 0:
        centres_x = 0.5 * (x_edges[1:] + x_edges[:-1])
        centres_y = 0.5 * (y_edges[1:] + y_edges[:-1])
        ax.contour(centres_x, centres_y, counts.T, levels=heights, colors=colour, linewidths=1.0)


def sbc_ranks(
    result: SBCResult,
    *,
    confidence: float = 0.99,
    columns: int | None = None,
    fig: Figure | None = None,
) -> Figure:
    """One histogram of SBC ranks per column of ``result`` (its χ² bins), with the central
    ``confidence`` interval of each bin's count under uniform ranks, Binomial(N, p_b)
    (shaded), and the p-value in each title.  One axes per column."""
    counts = result.histogram().numpy()
    k, bins = counts.shape
    n = int(result.ranks.shape[0])
    probability = result.bin_probabilities().numpy()
    low, high = stats.binom.interval(confidence, n, probability)
    columns = columns or min(k, 4)
    rows = -(-k // columns)
    fig = (
        fig
        if fig is not None
        else Figure(figsize=(3.2 * columns, 2.6 * rows), layout="constrained")
    )
    starts = -((-np.arange(bins) * (result.n_samples + 1)) // bins)  # first rank of each bin
    widths = np.diff(np.append(starts, result.n_samples + 1))
    for c in range(k):
        ax = fig.add_subplot(rows, columns, c + 1)
        ax.fill_between(
            np.append(starts, result.n_samples + 1),
            np.append(low, low[-1]),
            np.append(high, high[-1]),
            step="post",
            color="0.85",
            label=f"{confidence:.0%} band",
        )
        ax.bar(
            starts,
            counts[c],
            width=widths,
            align="edge",
            color=SAMPLE_COLOUR,
            alpha=0.7,
            edgecolor="white",
            label="ranks",
        )
        ax.step(
            np.append(starts, result.n_samples + 1),
            np.append(n * probability, n * probability[-1]),
            where="post",
            color="0.3",
            linewidth=1,
            label="expected",
        )
        ax.set_title(f"{result.names[c]}  (p = {float(result.p_values[c]):.2g})", fontsize=10)
        ax.set_xlim(0, result.n_samples + 1)
        ax.set_xlabel(f"rank among {result.n_samples} draws")
        if c % columns == 0:
            ax.set_ylabel("count")
    handles, names = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return fig


def coverage(
    *curves: CoverageCurve,
    labels: Sequence[str] | None = None,
    confidence: float = 0.99,
    ax: Axes | None = None,
    fig: Figure | None = None,
) -> Figure:
    """Empirical against nominal coverage of each curve (`expected_coverage`, `tarp`), the
    diagonal, and the pointwise central ``confidence`` band of a calibrated posterior's
    coverage, Binomial(N, c)/N (for the first curve's N).  Below the diagonal:
    over-confident; above: under-confident."""
    if not curves:
        raise ValueError("coverage() needs at least one curve")
    labels = list(labels) if labels is not None else [c.label for c in curves]
    fig, ax = _figure_for(ax, fig, (4.2, 4.0))
    levels = curves[0].levels.numpy()
    low, high = curves[0].band(confidence)
    ax.fill_between(
        levels,
        low.numpy(),
        high.numpy(),
        color="0.85",
        label=f"{confidence:.0%} band (N = {curves[0].n})",
    )
    ax.plot([0, 1], [0, 1], color="0.3", linestyle="--", linewidth=1, label="calibrated")
    for curve, label in zip(curves, labels, strict=True):
        ax.plot(curve.levels.numpy(), curve.coverage.numpy(), linewidth=1.8, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("credibility level")
    ax.set_ylabel("empirical coverage")
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    return fig


def likelihood_contours(
    scan: LikelihoodScan,
    levels: Sequence[float] = (0.68, 0.95),
    *,
    labels: Sequence[str] | None = None,
    truth: Any = None,
    ax: Axes | None = None,
    fig: Figure | None = None,
) -> Figure:
    """A `LikelihoodScan`: with one parameter of interest q(μ) and a horizontal line at
    the Wilks threshold F⁻¹_{χ²_1}(CL) of each level; with two, the contours q =
    F⁻¹_{χ²_2}(CL) (on any set of grid points, by triangulation) and the best fit.
    ``truth``: the true value(s) of the parameters of interest, marked."""
    k = len(scan.parameters)
    if k not in (1, 2):
        raise ValueError(f"likelihood_contours draws 1 or 2 parameters of interest, not {k}")
    names = list(labels) if labels is not None else [f"θ[{p}]" for p in scan.parameters]
    fig, ax = _figure_for(ax, fig, (4.5, 3.6) if k == 1 else (4.2, 4.0))
    grid = scan.grid.detach().cpu().double().numpy()
    q = scan.q.detach().cpu().double().numpy()
    truth = None if truth is None else np.asarray(torch.as_tensor(truth).cpu(), float).ravel()
    styles = ["-", "--", ":", "-."]
    if k == 1:
        order = np.argsort(grid[:, 0])
        ax.plot(grid[order, 0], q[order], color="k", linewidth=1.6, label="q")
        for i, level in enumerate(levels):
            ax.axhline(
                scan.threshold(level),
                color=SAMPLE_COLOUR,
                linestyle=styles[i % 4],
                linewidth=1,
                label=f"{level:.0%} CL (q = {scan.threshold(level):.2f})",
            )
        if truth is not None:
            ax.axvline(truth[0], color=TRUTH_COLOUR, linewidth=1, label="truth")
        ax.set_xlabel(names[0])
        ax.set_ylabel("q = −2 Δ log L")
        top = 3 * max(scan.threshold(level) for level in levels)
        ax.set_ylim(0, min(float(q.max()), top) * 1.05 if q.max() > 0 else 1)
    else:
        thresholds = [scan.threshold(level) for level in levels]
        order = np.argsort(thresholds)
        contour = ax.tricontour(
            grid[:, 0],
            grid[:, 1],
            q,
            levels=[thresholds[i] for i in order],
            colors=SAMPLE_COLOUR,
            linestyles=[styles[i % 4] for i in order],
        )
        ax.clabel(contour, fmt={thresholds[i]: f"{levels[i]:.0%}" for i in order}, fontsize=8)
        best = scan.theta_hat.detach().cpu().double().numpy()[list(scan.parameters)]
        ax.plot(best[0], best[1], "k+", markersize=9, label="best fit")
        if truth is not None:
            ax.plot(truth[0], truth[1], "s", color=TRUTH_COLOUR, markersize=5, label="truth")
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    ax.legend(fontsize=8, frameon=False)
    return fig


def eig_curve(
    result: Any,
    ax: Axes | None = None,
    *,
    reference: Any = None,
    label: str | None = None,
    xlabel: str | None = None,
    ylabel: str = "EIG [nats]",
    color: Any = None,
    fig: Figure | None = None,
) -> Figure:
    """The EIG of each candidate design in ``result`` (a `simfer.design.EIGResult`; not
    imported here, so that the design stage can import this module).

    One design variable: the estimate against the design with a ±2 standard-error band,
    the lower and upper estimates (when they differ from it) as dashed lines, an
    optional ``reference`` curve ``[k]`` (e.g. an analytic EIG) and the best design
    marked.  Two design variables: a heat map (on the grid when the designs form one,
    else coloured points) with the best design marked.  ``xlabel`` names the design
    (default "design"; for two variables pass "name 1, name 2"); ``color`` sets the
    curve's colour, so that several results can share one axis."""
    designs = result.designs.detach().cpu().double().numpy()
    eig = result.eig.detach().cpu().double().numpy()
    best = result.best_index
    dim = designs.shape[1]
    if dim not in (1, 2):
        raise ValueError(
            f"eig_curve draws one or two design variables, the result has {dim}; plot a "
            f"slice (an EIGResult over designs that vary in one or two of them)"
        )
    fig, ax = _figure_for(ax, fig, (4.8, 3.4) if dim == 1 else (4.6, 3.8))
    name = label or result.method.upper()
    colour = SAMPLE_COLOUR if color is None else color
    if dim == 1:
        order = np.argsort(designs[:, 0])
        d = designs[order, 0]
        stderr = result.stderr.detach().cpu().double().numpy()[order]
        ax.fill_between(
            d,
            eig[order] - 2 * stderr,
            eig[order] + 2 * stderr,
            color=colour,
            alpha=0.25,
            linewidth=0,
            label=f"{name} ±2 stderr",
        )
        ax.plot(d, eig[order], color=colour, linewidth=1.6, label=name)
        for bound, text, style in ((result.lower, "lower", "--"), (result.upper, "upper", ":")):
            if bound is None or torch.equal(bound.cpu(), result.eig.cpu()):
                continue
            values = bound.detach().cpu().double().numpy()[order]
            ax.plot(d, values, color=colour, linestyle=style, linewidth=0.8, label=f"{name} {text}")
        if reference is not None:
            values = np.asarray(torch.as_tensor(reference).detach().cpu(), float).ravel()
            if values.shape != eig.shape:
                raise ValueError(
                    f"reference must have one value per design, [{eig.size}], got "
                    f"{list(values.shape)}"
                )
            ax.plot(d, values[order], color="k", linewidth=1, label="reference")
        ax.axvline(designs[best, 0], color=TRUTH_COLOUR, linestyle=":", linewidth=1)
        ax.plot(
            designs[best, 0],
            eig[best],
            "*",
            color=TRUTH_COLOUR,
            markersize=11,
            label=f"{name}: best d = {designs[best, 0]:.4g}",
        )
        ax.set_xlabel(xlabel or "design")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8, frameon=False)
        return fig
    first, second = np.unique(designs[:, 0]), np.unique(designs[:, 1])
    on_grid = (
        first.size * second.size == eig.size and np.unique(designs, axis=0).shape[0] == eig.size
    )
    if on_grid:
        values = np.full((second.size, first.size), np.nan)
        values[np.searchsorted(second, designs[:, 1]), np.searchsorted(first, designs[:, 0])] = eig
        image = ax.pcolormesh(first, second, values, shading="nearest", cmap="viridis")
    else:
        image = ax.scatter(designs[:, 0], designs[:, 1], c=eig, cmap="viridis", s=30)
    fig.colorbar(image, ax=ax, label=ylabel)
    ax.plot(
        designs[best, 0],
        designs[best, 1],
        "*",
        color=TRUTH_COLOUR,
        markersize=13,
        markeredgecolor="white",
        label="best",
    )
    names = (xlabel or "design[0], design[1]").split(",")
    ax.set_xlabel(names[0].strip())
    ax.set_ylabel(names[1].strip() if len(names) > 1 else "design[1]")
    se = float(result.stderr[best])
    ax.set_title(
        f"{name}: best ({designs[best, 0]:.3g}, {designs[best, 1]:.3g}), "
        f"EIG {eig[best]:.3g} ± {se:.2g}",
        fontsize=9,
    )
    return fig
