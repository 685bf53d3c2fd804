"""The ``simfer`` command.

* ``simfer demo [--out DIR]``: the main job end to end on a built-in simulator:
  simulate the Galton board with gold into an HDF5 store (resumable), check the
  gold against the board's exact likelihood (`simfer.diagnostics.check_gold`), train
  CARL and ALICES on the same simulations and compare their log r̂ with the exact one;
  plots and a summary.
* ``simfer inspect PATH``: what a simulation store holds.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import SimferError
from .store import SimulationStore, load_simulations

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.out, n=args.n, seed=args.seed, workers=args.workers, epochs=args.epochs)


def _inspect(args: argparse.Namespace) -> int:
    fingerprint = SimulationStore.read_fingerprint(args.path)
    data = load_simulations(args.path)
    print(f"{args.path}: {data}")
    if data.is_set:
        print(f"x: {data.x}")
    print(json.dumps(fingerprint, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simfer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="simulate the Galton board with gold and check it")
    demo.add_argument("--out", default="demo_output", help="folder for the store, plot, summary")
    demo.add_argument("--n", type=int, default=20_000, help="number of simulations")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--workers", type=int, default=2, help="worker processes (0: serial)")
    demo.add_argument("--epochs", type=int, default=60, help="training epochs at most")
    demo.set_defaults(handler=_demo)
    inspect = commands.add_parser("inspect", help="summarise a simulation store")
    inspect.add_argument("path")
    inspect.set_defaults(handler=_inspect)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except SimferError as error:
        print(f"simfer: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
