"""The stages of a config-driven run: simulate, train, posterior, diagnose, design.

One function per stage (``stage_simulate`` …) takes a checked `simfer.config.Config` and
returns its results and output files; `run_stage` runs one, writes its ``summary.md`` and
``summary.json`` to ``<out>/<stage>/`` and skips it when it is up to date: when the config
sections it depends on (and the seed), its input files and the code it runs are unchanged
since its summary was written, and its outputs exist.  The ``simfer`` command
(`simfer.cli`) is a thin layer over `run_stage`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import Config, ConfigError

__all__ = ["STAGE_FUNCTIONS", "StagePlan", "run_stage"]


# -- up-to-date bookkeeping ---------------------------------------------------------------------
def _file_record(path: Path) -> dict[str, Any]:
    """What identifies a file's contents: size, modification time and SHA-256."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}


def _same_file(path: Path, record: dict[str, Any]) -> bool:
    """Whether ``path`` still holds what ``record`` describes (size and mtime first; the
    hash only when they differ, so an untouched large store is not read again)."""
    if not path.is_file():
        return False
    stat = path.stat()
    if stat.st_size == record.get("size") and stat.st_mtime_ns == record.get("mtime_ns"):
        return True
    return stat.st_size == record.get("size") and _file_record(path)["sha256"] == record.get(
        "sha256"
    )


@dataclass
class StagePlan:
    """What a stage reads and what its result depends on: the digest of its config
    sections and its input files."""

    name: str
    digest: str
    inputs: list[Path]

    def summary_path(self, config: Config) -> Path:
        return config.stage_folder(self.name) / "summary.json"

    def up_to_date(self, config: Config) -> bool:
        """True when the stage's summary records this digest, the same input files, and
        every output it lists still exists."""
        path = self.summary_path(config)
        if not path.is_file():
            return False
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        if summary.get("config_digest") != self.digest:
            return False
        recorded = summary.get("inputs", {})
        if sorted(recorded) != sorted(str(p) for p in self.inputs):
            return False
        if not all(_same_file(Path(p), r) for p, r in recorded.items()):
            return False
        return all(Path(p).exists() for p in summary.get("outputs", []))


def _plan(config: Config, stage: str) -> StagePlan:
    """The digest and inputs of ``stage`` for ``config``."""
    seed = config.stage_seed(stage)
    simulation = config.code_files("simulator", "prior")
    if stage == "simulate":
        digest = config.digest("simulator", "prior", "simulate", seed=seed)
        points = config.get("simulate", "theta")
        points = [config.input_file("simulate", "theta")] if points is not None else []
        return StagePlan(stage, digest, [*points, *simulation])
    if stage == "train":
        digest = config.digest("train", "prior", seed=seed)
        code = config.code_files("prior", "embedding")
        return StagePlan(stage, digest, [config.training_data(), *code])
    uses_model = stage != "design" or _design_source(config) == "model"
    model = [config.model_path(), *config.code_files("prior", "embedding")] if uses_model else []
    if stage == "posterior":
        x_obs = config.input_file("posterior", "x_obs")
        digest = config.digest("prior", "posterior", seed=seed)
        return StagePlan(stage, digest, [*model, x_obs])
    if stage == "diagnose":
        digest = config.digest("simulator", "prior", "diagnose", seed=seed)
        return StagePlan(stage, digest, list(dict.fromkeys([*model, *simulation])))
    digest = config.digest("simulator", "prior", "design", seed=seed)
    return StagePlan(stage, digest, list(dict.fromkeys([*model, *simulation])))


def _write_summary(
    config: Config, plan: StagePlan, results: dict[str, Any], outputs: list[Path], seconds: float
) -> None:
    """``summary.json`` (for machines and for the up-to-date check) and ``summary.md``."""
    folder = config.stage_folder(plan.name)
    folder.mkdir(parents=True, exist_ok=True)
    summary = {
        "stage": plan.name,
        "config": str(config.path.resolve()),
        "simfer_version": __version__,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(seconds, 3),
        "seed": config.stage_seed(plan.name),
        "device": config.device,
        "config_digest": plan.digest,
        "inputs": {str(p): _file_record(p) for p in plan.inputs},
        "outputs": [str(p) for p in outputs],
        "results": results,
    }
    text = json.dumps(summary, indent=2, default=_jsonable)
    (folder / "summary.json").write_text(text + "\n")
    lines = [
        f"# simfer {plan.name}",
        "",
        f"Config `{config.path}`, simfer {__version__}, seed {summary['seed']}, device "
        f"{config.device}, {seconds:.1f} s.",
        "",
        "## Results",
        "",
        *(f"- **{key}**: {_markdown_value(value)}" for key, value in results.items()),
        "",
        "## Files",
        "",
        *(f"- `{path}`" for path in outputs),
        "",
    ]
    (folder / "summary.md").write_text("\n".join(lines))


def _jsonable(value: Any) -> Any:
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor | np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def _markdown_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} = {_markdown_value(v)}" for k, v in value.items())
    if isinstance(value, list) and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
    return str(value)


# -- shared pieces of the stages ------------------------------------------------------------------
def _save_figure(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def _load_model(config: Config) -> Any:
    """The model the train stage wrote, on the config's device."""
    path = config.model_path()
    if not path.is_file():
        raise ConfigError(
            f"{config.path}: [train] out: no model file '{path}' yet; run "
            f"'simfer train {config.path}' first"
        )
    cls = config.estimator_class()
    embedding = config.embedding()
    if embedding is not None:
        return cls.load(path, config.device, embedding=embedding)
    return cls.load(path, config.device)


def _design_value(config: Config, section: str, model: Any) -> Any:
    """``[section] design`` for a model trained with designs (an error naming the key when
    it is missing), else None."""
    design = config.get(section, "design")
    if getattr(model, "design_dim", 0) and design is None:
        raise config.error(
            section, "design", f"missing: the model conditions on a design [{model.design_dim}]"
        )
    return design


def _load_npy(config: Config, section: str, key: str) -> Any:
    """The array in the .npy file ``[section] key`` (never unpickles objects)."""
    import numpy as np

    path = config.input_file(section, key)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        message = f"not a readable .npy array ({' '.join(str(error).split())})"
        raise config.error(section, key, message) from None


def _mean_and_spread(samples: Any) -> dict[str, list[float]]:
    import torch

    samples = samples.double()
    q = torch.quantile(samples, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64), dim=0)
    return {
        "mean": samples.mean(0).tolist(),
        "std": samples.std(0).tolist(),
        "q05": q[0].tolist(),
        "median": q[1].tolist(),
        "q95": q[2].tolist(),
    }


# -- the stages -----------------------------------------------------------------------------------
def stage_simulate(
    config: Config, shard: tuple[int, int] | None = None
) -> tuple[dict[str, Any], list[Path]]:
    """``[simulate]``: `simfer.simulate` into the HDF5 store (resumable); with ``shard``
    only shard i of N's chunks, into its own store."""
    from .runner import simulate

    simulator, prior = config.simulator(), config.prior()
    path = config.store_path(shard)
    _refuse_stale_store(config, path)
    design = config.get("simulate", "design")
    if isinstance(design, dict):
        from .prior import BoxUniform

        design = BoxUniform(design["low"], design["high"])
    workers = config.get("simulate", "workers")
    options: dict[str, Any] = {
        "gold": config.get("simulate", "gold"),
        "theta_ref": config.get("simulate", "theta_ref"),
        "reference_fraction": config.get("simulate", "reference_fraction"),
        "design": design,
        "path": path,
        "executor": "serial" if workers == 0 else "processes",
        "n_workers": workers or None,
        "chunk_size": config.get("simulate", "chunk_size"),
        "seed": config.stage_seed("simulate"),
        "device": config.get("simulate", "device"),
    }
    if shard is not None:
        options["shard"] = shard
    if config.get("simulate", "compression") is not None:
        options["compression"] = config.get("simulate", "compression")
    if config.get("simulate", "theta") is not None:
        options["theta"] = _load_npy(config, "simulate", "theta")
    data = simulate(simulator, prior, config.get("simulate", "n"), **options)
    results = {
        "simulator": simulator.name,
        "store": str(path),
        "rows": len(data),
        "invalid_rows": data.n_invalid,
        "gold": bool(options["gold"]),
        "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
    }
    return results, [path]


def _refuse_stale_store(config: Config, path: Path) -> None:
    """A store made before the simulator's own code changed would be resumed as if it were
    current (its fingerprint describes the simulator, not its code): refuse."""
    summary = config.stage_folder("simulate") / "summary.json"
    if not path.exists() or not summary.is_file():
        return
    try:
        recorded = json.loads(summary.read_text()).get("inputs", {})
    except (OSError, json.JSONDecodeError):
        return
    for file in config.code_files("simulator", "prior"):
        record = recorded.get(str(file))
        if record is not None and not _same_file(file, record):
            raise ConfigError(
                f"{config.path}: [simulator] target: '{file}' changed since the store "
                f"'{path}' was simulated; move the store aside (or set another [simulate] "
                f"path) to simulate with the new code"
            )


def stage_train(config: Config) -> tuple[dict[str, Any], list[Path]]:
    """``[train]``: fit the estimator on the store and save it; plot its losses.  The fit
    takes the file's path: a simfer store too large for memory (``max_memory``) streams
    from disk, any other table is read whole."""
    data_path = config.training_data()
    if not data_path.is_file():
        raise ConfigError(
            f"{config.path}: [simulate] path: no store '{data_path}' yet; run "
            f"'simfer simulate {config.path}' first"
        )
    settings = config.estimator_settings()
    cls = config.estimator_class()
    embedding = config.embedding()
    if embedding is not None:
        settings["embedding"] = embedding
    try:
        estimator = cls(**settings, seed=config.stage_seed("train"), device=config.device)
    except (TypeError, ValueError) as error:
        raise config.error("train", None, " ".join(str(error).split())) from None
    estimator.fit(data_path, config.prior())
    model = config.model_path()
    estimator.save(model)
    history = estimator.history
    figure = _loss_figure(history)
    plot = _save_figure(figure, config.stage_folder("train") / "loss.png")
    results = {
        "estimator": type(estimator).__name__,
        "hyperparameters": estimator.hyperparameters(),
        "training_rows": estimator.dims.n_train,
        "epochs": len(history.train_loss),
        "best_epoch": history.best_epoch,
        "best_validation_loss": history.best_validation_loss,
        "model": str(model),
    }
    return results, [model, plot]


def _loss_figure(history: Any) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.8, 3.4), layout="constrained")
    ax = figure.add_subplot()
    epochs = range(1, len(history.train_loss) + 1)
    ax.plot(epochs, [sum(v) / len(v) for v in history.train_loss], label="training")
    ax.plot(epochs, [sum(v) / len(v) for v in history.validation_loss], label="validation")
    smoothed = getattr(history, "smoothed_validation_loss", None)
    if smoothed and smoothed != history.validation_loss:  # early stopping followed this one
        mean = [sum(v) / len(v) for v in smoothed]
        ax.plot(epochs, mean, linestyle="--", label="validation, moving average")
    for best in set(history.best_epoch):  # the weights returned (per member)
        ax.axvline(best + 1, color="0.6", linestyle=":", linewidth=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (mean over members)")
    ax.legend(frameon=False)
    return figure


def stage_posterior(config: Config) -> tuple[dict[str, Any], list[Path]]:
    """``[posterior]``: sample p(θ | x_obs) with the trained model; samples as .npz and a
    corner plot."""
    import numpy as np
    import torch

    from .plotting import corner

    model = _load_model(config)
    prior = config.prior()
    x_obs = torch.as_tensor(_load_npy(config, "posterior", "x_obs"))
    design = _design_value(config, "posterior", model)
    posterior = model.posterior(prior, x_obs, design=design)
    options = {
        key: config.get("posterior", key)
        for key in ("method", "n_chains", "warmup", "thin", "max_seconds")
        if config.get("posterior", key) is not None
    }
    n = config.get("posterior", "samples")
    samples = posterior.sample(n, seed=config.stage_seed("posterior"), **options).detach().cpu()
    out = config.output_file("posterior", "out")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, samples=samples.numpy(), x_obs=x_obs.cpu().numpy())
    truth = config.get("posterior", "theta_true")
    plot = _save_figure(
        corner(samples, truth=truth), config.stage_folder("posterior") / "corner.png"
    )
    diagnostics = {
        k: v for k, v in posterior.diagnostics.items() if isinstance(v, int | float | str | list)
    }
    results = {
        "estimator": type(model).__name__,
        "observations": posterior.n_observations,
        "samples": int(samples.shape[0]),
        **_mean_and_spread(samples),
        "sampler": diagnostics,
    }
    return results, [out, plot]


def stage_diagnose(config: Config) -> tuple[dict[str, Any], list[Path]]:
    """``[diagnose]``: SBC, HPD coverage and TARP of the trained model's posterior on fresh
    prior-predictive pairs (simulated with seed + 1, so never the training rows)."""
    from . import diagnostics, plotting
    from .runner import simulate

    model = _load_model(config)
    simulator, prior = config.simulator(), config.prior()
    design = _design_value(config, "diagnose", model)
    checks = config.get("diagnose", "checks")
    if design is not None and "coverage" in checks:
        raise config.error(
            "diagnose",
            "checks",
            "'coverage' ranks by the density without a design; for a model trained with "
            "designs use 'sbc' and 'tarp'",
        )
    seed = config.stage_seed("diagnose")
    pairs = simulate(
        simulator,
        prior,
        config.get("diagnose", "n"),
        design=design,
        seed=seed + 1,
        executor="serial",
        device=config.get("simulate", "device"),
        progress=False,
    ).valid_only()
    theta, x = pairs.theta, pairs.x
    posterior = model.posterior(prior, x[0], design=design)
    options = {k: config.get("diagnose", k) for k in ("warmup", "thin", "max_seconds")}
    options = {k: v for k, v in options.items() if v is not None}
    if design is not None:
        options["design"] = design
    samples = diagnostics.posterior_samples(
        posterior, x, config.get("diagnose", "samples"), seed=seed, **options
    )
    folder = config.stage_folder("diagnose")
    results: dict[str, Any] = {"pairs": len(pairs), "samples_per_pair": int(samples.shape[1])}
    outputs: list[Path] = []
    curves = []
    if "sbc" in checks:
        result = diagnostics.sbc(None, theta, samples=samples, seed=seed)
        results["sbc"] = {
            "p_values": result.p_values.tolist(),
            "passed": result.passed(),
            "test": result.test,
        }
        outputs.append(_save_figure(plotting.sbc_ranks(result), folder / "sbc.png"))
    if "coverage" in checks:
        curve = diagnostics.expected_coverage(posterior, theta, x, samples=samples, seed=seed)
        curves.append(curve)
        results["coverage"] = {
            "max_error": curve.max_error(),
            "tolerance_99": curve.dkw_tolerance(0.01),
            "ks_p_value": curve.ks_p_value(),
        }
    if "tarp" in checks:
        curve = diagnostics.tarp(None, theta, samples=samples, seed=seed)
        curves.append(curve)
        results["tarp"] = {
            "atc": curve.atc,
            "atc_tolerance_99": curve.atc_tolerance(0.01),
            "ks_p_value": curve.ks_p_value(),
        }
    if curves:
        outputs.append(_save_figure(plotting.coverage(*curves), folder / "coverage.png"))
    return results, outputs


def _design_source(config: Config) -> str:
    """``[design] source``: given, else the simulator when it has a likelihood and no
    [train] section, else the trained model."""
    source = config.get("design", "source")
    if source is not None:
        return source
    return "model" if config.has("train") else "simulator"


def stage_design(config: Config) -> tuple[dict[str, Any], list[Path]]:
    """``[design]``: the EIG over candidate designs (or a zooming grid search over a box),
    by `simfer.design.eig` / `simfer.design.search`; the curve as a PNG and JSON."""
    import torch

    from . import design as design_stage
    from .plotting import eig_curve

    simulator, prior = config.simulator(), config.prior()
    source_kind = _design_source(config)
    if source_kind == "model":
        source = _load_model(config)
        if not source.design_dim:
            raise config.error(
                "design",
                "source",
                "the trained model takes no design; simulate with [simulate] design = "
                "{low = [...], high = [...]} and train again, or use source = 'simulator'",
            )
    else:
        source = simulator
        if not simulator.has_likelihood or not simulator.design_dim:
            raise config.error(
                "design",
                "source",
                f"the simulator {simulator.name} needs an exact likelihood and a design to be "
                f"the source; train a design-conditioned model and use source = 'model'",
            )
    options: dict[str, Any] = {
        "method": config.get("design", "method"),
        "n_outer": config.get("design", "n_outer"),
        "n_inner": config.get("design", "n_inner"),
        "seed": config.stage_seed("design"),
        "device": config.device,
        "progress": False,
    }
    if source_kind == "model":
        options["simulator"] = simulator
    try:
        if config.get("design", "designs") is not None:
            designs = torch.as_tensor(config.get("design", "designs"), dtype=torch.float32)
            result = design_stage.eig(source, prior, designs, **options)
        elif config.get("design", "search"):
            result = design_stage.search(
                source,
                prior,
                config.get("design", "low"),
                config.get("design", "high"),
                n_grid=config.get("design", "n_grid"),
                n_zoom=config.get("design", "n_zoom", 3),
                shrink=config.get("design", "shrink", 0.25),
                **options,
            )
        else:
            result = design_stage.eig(source, prior, _grid(config), **options)
    except ValueError as error:
        raise config.error("design", None, " ".join(str(error).split())) from None
    folder = config.stage_folder("design")
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "eig.json"
    table.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    outputs = [table]
    if result.designs.shape[1] <= 2:
        outputs.append(_save_figure(eig_curve(result), folder / "eig.png"))
    best = result.best_index
    results = {
        "source": source_kind,
        "method": result.method,
        "candidates": int(result.designs.shape[0]),
        "best_design": result.best().tolist(),
        "best_eig": float(result.eig[best]),
        "best_stderr": float(result.stderr[best]),
        "notes": list(result.notes),
    }
    return results, outputs


def _grid(config: Config) -> Any:
    """The candidate designs of ``[design] low/high/n_grid``: a regular grid over the box."""
    import itertools

    import torch

    low, high = config.get("design", "low"), config.get("design", "high")
    n = config.get("design", "n_grid")
    axes = [torch.linspace(a, b, n) for a, b in zip(low, high, strict=True)]
    return torch.tensor(list(itertools.product(*[a.tolist() for a in axes])))


STAGE_FUNCTIONS: dict[str, Callable[[Config], tuple[dict[str, Any], list[Path]]]] = {
    "simulate": stage_simulate,
    "train": stage_train,
    "posterior": stage_posterior,
    "diagnose": stage_diagnose,
    "design": stage_design,
}


def run_stage(config: Config, stage: str, *, skip_if_current: bool = False, **options) -> bool:
    """Run ``stage`` and write its summary; returns False when it was skipped as current."""
    if stage not in config.sections:
        raise config.error(stage, None, "missing: this config has no such section")
    config.simulator(), config.prior()  # a bad target or prior fails before any work
    plan = _plan(config, stage)
    if skip_if_current and plan.up_to_date(config):
        click.echo(f"{stage}: up to date ({plan.summary_path(config)})", err=True)
        return False
    click.echo(f"{stage}: running", err=True)
    started = time.perf_counter()
    results, outputs = STAGE_FUNCTIONS[stage](config, **options)
    seconds = time.perf_counter() - started
    if options.get("shard") is not None:  # a shard's summary sits beside its own store
        i, n = options["shard"]
        plan = StagePlan(f"simulate/shard{i}-of-{n}", plan.digest, plan.inputs)
    _write_summary(config, plan, results, outputs, seconds)
    click.echo(f"{stage}: done in {seconds:.1f} s ({plan.summary_path(config)})", err=True)
    return True
