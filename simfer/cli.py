"""The ``simfer`` command: the journey of the library driven by one TOML file.

``simfer simulate|train|posterior|diagnose|design CONFIG`` runs one stage; ``simfer run
CONFIG`` runs every stage the file describes, in order, skipping those whose outputs are
up to date.  ``simfer simulate CONFIG --shard i/N`` and ``simfer merge`` split a
simulation run over independent jobs (a SLURM or PBS array).  ``simfer demo`` and
``simfer inspect`` need no config.  The config file is `simfer.config`; each stage writes
its files, ``summary.md`` and ``summary.json`` to ``<out>/<stage>/`` (docs/cli.md).

The stages themselves, their summaries and the up-to-date check are `simfer.stages`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import Config, ConfigError, MissingFileError, load_config
from .errors import SimferError
from .stages import run_stage

__all__ = ["cli", "main"]


# -- the commands ---------------------------------------------------------------------------------
class _Group(click.Group):
    """Prints simfer's errors as one line on stderr (exit code 2), without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SimferError as error:
            click.echo(f"simfer: {' '.join(str(error).split())}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt as error:
            message = str(error) or "interrupted"
            click.echo(f"simfer: {message}", err=True)
            ctx.exit(130)


_config_argument = click.argument(
    "config", type=click.Path(dir_okay=False, path_type=Path), metavar="CONFIG"
)


def _overrides(function: Callable) -> Callable:
    """The options every config-driven command takes."""
    function = click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        help="Output folder (overrides the file's out).",
    )(function)
    function = click.option("--seed", type=int, help="Seed of every stage (overrides the file).")(
        function
    )
    function = click.option(
        "--device", help="Device to compute on, e.g. cpu or cuda (overrides the file)."
    )(function)
    return function


def _load(config: Path, out: Path | None, seed: int | None, device: str | None) -> Config:
    return load_config(config, out=out, seed=seed, device=device)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="simfer", message="%(prog)s %(version)s")
def cli() -> None:
    """simfer: simulation-based inference from the command line.

    Each command reads one TOML config file (see docs/cli.md) and writes its results,
    plots and a summary to the output folder.
    """


def _stage_command(stage: str, short: str, help_text: str) -> None:
    @cli.command(stage, short_help=short, help=help_text)
    @_config_argument
    @_overrides
    def command(config: Path, out: Path | None, seed: int | None, device: str | None) -> int:
        run_stage(_load(config, out, seed, device), stage)
        return 0


@cli.command("simulate", short_help="Simulate into the store (one shard with --shard).")
@_config_argument
@_overrides
@click.option(
    "--shard",
    metavar="I/N",
    help="Simulate only shard I of N (0 <= I < N) into its own store; combine the shards "
    "with simfer merge.",
)
def simulate_command(
    config: Path, out: Path | None, seed: int | None, device: str | None, shard: str | None
) -> int:
    """Simulate the [simulate] rows into the HDF5 store (resumable: run it again after a
    crash and only the missing rows are simulated)."""
    run_stage(_load(config, out, seed, device), "simulate", shard=_parse_shard(shard))
    return 0


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        message = f"'{text}' is not of the form I/N, e.g. 0/4"
        raise click.BadParameter(message, param_hint="--shard") from None
    if not (n >= 1 and 0 <= i < n):
        raise click.BadParameter(f"need 0 <= I < N, got {i}/{n}", param_hint="--shard")
    return i, n


_stage_command(
    "train",
    "Train the estimator and save the model.",
    "Train the [train] estimator on the simulations and save the model, with a plot of "
    "its training and validation losses.",
)
_stage_command(
    "posterior",
    "Sample the posterior of the observations.",
    "Sample the posterior of the observations in [posterior] x_obs with the trained model; "
    "writes the samples (.npz) and a corner plot.",
)
_stage_command(
    "diagnose",
    "Calibration checks: SBC, coverage, TARP.",
    "Check the trained model's calibration on fresh simulations: SBC ranks, HPD coverage "
    "and TARP, with their plots.",
)
_stage_command(
    "design",
    "Expected information gain over candidate designs.",
    "Estimate the expected information gain of candidate designs (or search a box for the "
    "best one) and plot the EIG curve.",
)


@cli.command("run", short_help="Run every stage of the file, skipping those up to date.")
@_config_argument
@_overrides
@click.option("--force", is_flag=True, help="Run every stage, even those up to date.")
def run_command(
    config: Path, out: Path | None, seed: int | None, device: str | None, force: bool
) -> int:
    """Run every stage the file describes, in order: simulate, train, posterior,
    diagnose, design.  A stage whose config section and input files are unchanged since
    its last run, and whose outputs exist, is skipped."""
    loaded = _load(config, out, seed, device)
    if not loaded.stages():
        raise ConfigError(f"{config}: describes no stage (add [simulate], [train], …)")
    for stage in loaded.stages():
        run_stage(loaded, stage, skip_if_current=not force)
    return 0


@cli.command("merge", short_help="Merge shard stores into one store.")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("shards", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def merge_command(out: Path, shards: tuple[Path, ...]) -> int:
    """Merge the shard stores SHARDS of one run into the store OUT.  Shards of another
    run are refused; no row is duplicated or dropped."""
    from .store import merge_stores

    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        raise MissingFileError(f"no such file: {', '.join(missing)}")
    merged = merge_stores(shards, out)
    click.echo(f"merged {len(shards)} shards into {out} ({len(merged)} rows)")
    return 0


@cli.command("demo", short_help="The whole journey on the built-in Galton board.")
@click.option(
    "--out",
    default="demo_output",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the store, plots and summary.",
)
@click.option("--n", default=20_000, show_default=True, help="Number of simulations.")
@click.option("--seed", default=0, show_default=True, help="Seed of the run.")
@click.option("--workers", default=2, show_default=True, help="Worker processes (0: serial).")
@click.option("--epochs", default=60, show_default=True, help="Training epochs at most.")
def demo_command(out: Path, n: int, seed: int, workers: int, epochs: int) -> int:
    """Run the demo on the built-in Galton board: simulate with gold, check the gold
    against the exact likelihood, train and compare estimators."""
    from .demo import run_demo

    return run_demo(out, n=n, seed=seed, workers=workers, epochs=epochs)


@cli.command("inspect", short_help="Show what a table of simulations holds.")
@click.argument("path", type=click.Path(path_type=Path))
def inspect_command(path: Path) -> int:
    """Show what PATH holds: its rows and columns, and for a simfer store its fingerprint
    (the run it belongs to).  PATH is anything simfer.load_simulations reads: a store, an
    .npz file, a folder of .npy files, a plain HDF5 file or MadMiner samples."""
    from .store import FORMAT, SimulationStore, load_simulations

    if not path.exists():
        raise MissingFileError(f"no such file '{path}'")
    data = load_simulations(path)
    click.echo(f"{path}: {data}")
    if data.is_set:
        click.echo(f"x: {data.x}")
    if path.is_file() and path.suffix not in (".npy", ".npz"):
        import h5py

        with h5py.File(path, "r") as file:
            is_store = file.attrs.get("format") == FORMAT
        if is_store:
            click.echo(json.dumps(SimulationStore.read_fingerprint(path), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``simfer`` entry point: run the command line ``argv`` (default ``sys.argv[1:]``)
    and return its exit code (0 success, 1 a failed check, 2 a usage or input error)."""
    try:
        code = cli.main(args=argv, prog_name="simfer", standalone_mode=False)
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.Abort:
        click.echo("simfer: aborted", err=True)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
