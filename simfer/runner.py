"""`simulate`: draw θ from the prior and run a simulator in chunks, over any executor.

The run is cut into chunks of ``chunk_size`` rows.  Chunk k's θ, its
reference-class rows and the simulator's random numbers are all derived from
``(seed, k)`` alone, so the same seed gives the same table whether the chunks
run in this process, in local worker processes or on a Dask cluster, in any
order; and a killed run resumes by simulating just the chunks its store lacks.

Each worker runs a whole chunk as one batched simulator call (per-call overhead
stays small).  Simulators travel to workers with cloudpickle, so one defined in a
notebook or in a user's ``__main__`` works.  A chunk whose batched call raises is
retried one row at a time: rows that still raise, and rows whose output holds NaN
or inf, are kept with ``valid = False`` and reported in one warning.  A simulator whose
x is a variable-size set per event gives a `simfer.data.RaggedSets` column, stored
ragged; a failed row's set is one element of NaN.

θ comes from the prior, or from explicit points (``theta=``: a grid, benchmark
points), row i at point i.  A run can also be cut into N shards (``shard=(i, N)``),
each simulating every N-th chunk into its own store, e.g. one per job of a SLURM array;
since a chunk's rows depend on ``(seed, k)`` alone, `simfer.merge_stores` puts them
together into exactly the unsharded run.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import secrets
import warnings
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Literal

import cloudpickle
import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution
from tqdm.auto import tqdm

from .data import RaggedSets, SimulationData
from .errors import GoldNotAvailableError, InvalidSimulationWarning, SimulatorError, SupportError
from .prior import as_prior, describe_prior
from .seeding import seeded
from .simulator import Simulator
from .store import SimulationStore, check_compression, shard_of_chunk

__all__ = ["simulate"]


@dataclass(frozen=True)
class _Chunk:
    """Everything a worker needs to simulate one chunk."""

    index: int
    first_row: int
    theta: Tensor
    design: Tensor | None
    at_reference: Tensor | None
    seed: int


@dataclass(frozen=True)
class _RunSpec:
    """What every chunk of a run shares."""

    simulator_bytes: bytes
    gold: bool
    theta_ref: Tensor | None
    device: str


def _chunk_seeds(seed: int, index: int, offset: int = 0) -> tuple[int, int]:
    """Two independent 63-bit seeds for the rows of chunk ``index`` from ``offset`` on:
    one for θ, one for the simulator."""
    key = (index,) if offset == 0 else (index, offset)
    sequence = np.random.SeedSequence(seed, spawn_key=key)
    theta_seed, sim_seed = sequence.generate_state(2, dtype=np.uint64)
    return int(theta_seed) >> 1, int(sim_seed) >> 1


def _reference_mask(first_row: int, m: int, fraction: float) -> Tensor:
    """Rows i with ⌊(i+1)f⌋ > ⌊if⌋: exactly a fraction f of any prefix, spread evenly."""
    rows = torch.arange(first_row, first_row + m, dtype=torch.float64)
    return torch.floor((rows + 1) * fraction) > torch.floor(rows * fraction)


def _run_chunk(run: _RunSpec, chunk: _Chunk) -> tuple[SimulationData | None, list[str]]:
    """Worker side: simulate one chunk; rows that raise become invalid rows.

    Returns the chunk's rows and the errors of the rows that raised, or None for the
    rows when every row raised (their shape is unknown until some simulation succeeds)."""
    simulator: Simulator = cloudpickle.loads(run.simulator_bytes)
    theta = chunk.theta.to(run.device)
    design = None if chunk.design is None else chunk.design.to(run.device)
    theta_ref = None if run.theta_ref is None else run.theta_ref.to(run.device)

    def one_call(rows: slice, seed: int) -> SimulationData:
        at_reference = None if chunk.at_reference is None else chunk.at_reference[rows]
        row_design = None if design is None else design[rows]
        result = simulator.simulate(
            theta[rows],
            row_design,
            gold=run.gold,
            theta_ref=theta_ref,
            seed=seed,
            at_reference=at_reference,
        )
        if isinstance(result, SimulationData):
            return result.to("cpu")
        return SimulationData(theta=theta[rows], x=result, design=row_design).to("cpu")

    try:
        return one_call(slice(None), chunk.seed), []
    except SimulatorError as error:
        if len(theta) == 1:
            return None, [f"row {chunk.first_row}: {error}"]
    rows: list[SimulationData | None] = []
    errors: list[str] = []
    for i in range(len(theta)):
        try:
            rows.append(one_call(slice(i, i + 1), chunk.seed + 1 + i))
        except SimulatorError as error:
            errors.append(f"row {chunk.first_row + i}: {error}")
            rows.append(None)
    if len(errors) == len(theta):
        return None, errors
    template = next(r for r in rows if r is not None)
    filled = [
        r if r is not None else _failed_rows(template, chunk, [i]) for i, r in enumerate(rows)
    ]
    return SimulationData.concatenate(filled), errors


def _failed_rows(template: SimulationData, chunk: _Chunk, rows: list[int]) -> SimulationData:
    """Rows of ``chunk`` whose simulation raised, shaped like ``template``: the run's inputs
    (θ, design, θ_ref, reference flag) kept, every simulated column NaN, valid False."""
    columns: dict[str, Any] = {"theta": chunk.theta[rows]}
    for name, value in template.columns().items():
        if name == "design":
            columns[name] = chunk.design[rows]
        elif name == "from_reference":
            columns[name] = chunk.at_reference[rows]
        elif name == "theta_ref":
            columns[name] = value[:1].expand(len(rows), -1).clone()
        elif name == "valid":
            columns[name] = torch.zeros(len(rows), dtype=torch.bool)
        elif isinstance(value, RaggedSets):
            columns[name] = RaggedSets.nan_sets(len(rows), value.features, value.dtype)
        elif name != "theta":
            columns[name] = torch.full(
                (len(rows), *value.shape[1:]), float("nan"), dtype=value.dtype
            )
    return SimulationData(**columns)


def _limit_threads() -> None:
    torch.set_num_threads(1)


def _default_chunk_size(n: int) -> int:
    return int(min(4096, max(1, math.ceil(n / 32))))


def simulate(
    simulator: Simulator,
    prior: Distribution | None = None,
    n: int | None = None,
    *,
    theta: Tensor | np.ndarray | Sequence[Sequence[float]] | None = None,
    gold: bool = False,
    theta_ref: Sequence[float] | Tensor | None = None,
    reference_fraction: float = 0.5,
    design: Tensor | Sequence[float] | Distribution | None = None,
    path: str | os.PathLike | None = None,
    executor: Executor | Literal["processes", "serial"] = "processes",
    n_workers: int | None = None,
    chunk_size: int | None = None,
    seed: int | None = None,
    shard: tuple[int, int] | None = None,
    compression: Literal["gzip", "lzf"] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> SimulationData:
    """Simulate ``n`` rows: θ ~ prior (or the given θ points), x ~ simulator(θ), with gold
    if asked.

    Args:
        simulator: any `simfer.Simulator`.
        prior: a distribution over θ with samples ``[n, theta_dim]`` (see `simfer.as_prior`).
            With ``theta`` it may be left out; if given, every point must lie in its support.
        n: number of simulator calls, reference-class rows included; with ``theta``, the
            number of points (the default).
        theta: explicit parameter points ``[n, theta_dim]`` (a grid, benchmark points)
            instead of prior draws: row i is simulated at point i (drawn at θ_ref instead if
            it is a reference row).  For many events per point, repeat the points
            (``points.repeat_interleave(k, 0)``).  The points are part of the run's
            fingerprint, so a store resumes only with the same points.
        gold: also record the joint log ratio and joint score(s).
        theta_ref: reference point θ_ref ``[theta_dim]``.  Then a ``reference_fraction`` of
            the rows draw x at θ_ref instead of θ (the reference class that CARL, ROLR and
            ALICE contrast with), and gold is evaluated at (θ, θ_ref) on every row.
        design: one design ``[design_dim]``, one per row ``[n, design_dim]``, or a
            distribution to draw a design per row from.
        path: an HDF5 store; every finished chunk is committed to it at once, and calling
            again with the same arguments resumes (or, with a larger ``n``, extends) the run.
        executor: ``"processes"`` (local worker processes), ``"serial"`` (this process), or
            any ``concurrent.futures.Executor``, e.g. a Dask client's ``get_executor()``.
        n_workers: worker processes for ``"processes"`` (default: the number of CPUs).
        chunk_size: rows per worker call (default ``ceil(n/32)``, at most 4096; a resumed
            run keeps its stored chunk size).  Together with ``seed`` it fixes the data.
        seed: makes the run reproducible; None draws one (stored with the run).
        shard: ``(i, N)``: simulate only shard i (0 ≤ i < N) of the run, the chunks k with
            k mod N = i, into its own store at ``path`` (resumable like any run).  Needs an
            explicit ``seed``; every shard of a run must get the same arguments but ``i``
            and its own ``path``.  `simfer.merge_stores` combines the shard stores into the
            store of the unsharded run, row for row.
        compression: ``"gzip"`` or ``"lzf"`` to compress a new store (recorded in the file;
            reading is transparent); None stores raw arrays.
        device: where workers simulate (θ is moved there).
        progress: show a progress bar counting finished simulations.

    Returns:
        A `SimulationData` with all ``n`` rows in order, failed ones flagged invalid (with
        ``shard``, the shard's rows only, in order).
    """
    if not isinstance(simulator, Simulator):
        raise TypeError(
            f"simulate() needs a simfer.Simulator, got {type(simulator).__name__}; wrap a "
            f"function with Simulator.from_function or a Pyro program with Simulator.from_pyro."
        )
    points = None
    if theta is not None:
        points = _explicit_points(simulator, prior, theta)
        if n is None:
            n = len(points)
        elif n != len(points):
            raise ValueError(
                f"n={n} but theta holds {len(points)} points: theta= simulates one row per "
                f"point; leave n out (or repeat the points for several events per point)"
            )
    elif prior is None:
        raise TypeError("simulate() needs a prior to draw θ from, or explicit points theta=")
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive number of simulations, got {n!r}")
    n = int(n)
    if prior is not None:
        prior = as_prior(prior, simulator.theta_dim)
    if gold and not simulator.has_gold:
        raise GoldNotAvailableError(simulator.no_gold_message())
    if theta_ref is not None:
        theta_ref = simulator.check_theta(theta_ref, batch=1, what="theta_ref")[0]
        if not 0.0 < reference_fraction < 1.0:
            raise ValueError(f"reference_fraction must lie in (0, 1), got {reference_fraction}")
    check_compression(compression)
    if compression is not None and path is None:
        raise ValueError("compression= applies to a store: pass path= too")
    if shard is not None:
        shard = _check_shard(shard, seed, path)

    if path is not None and os.path.exists(path):
        stored = SimulationStore.read_fingerprint(path)
        seed = stored.get("seed") if seed is None else seed
        chunk_size = stored.get("chunk_size") if chunk_size is None else chunk_size
    seed = secrets.randbits(62) if seed is None else int(seed)
    chunk_size = _default_chunk_size(n) if chunk_size is None else int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if shard is not None and shard[1] > math.ceil(n / chunk_size):
        raise ValueError(
            f"{shard[1]} shards, but the run has only {math.ceil(n / chunk_size)} chunks of "
            f"{chunk_size} rows: use at most that many shards, or a smaller chunk_size"
        )
    plan = _Plan(
        simulator,
        prior,
        n,
        seed,
        chunk_size,
        design,
        theta_ref,
        reference_fraction,
        points,
        shard,
    )
    store = None
    if path is not None:
        store = SimulationStore.open(path, plan.fingerprint(gold), compression)
    try:
        pieces = plan.missing_pieces(store.rows_per_chunk if store is not None else {})
        to_do = sum(m for *_, m in pieces)
        total = plan.n_rows
        bar = tqdm(
            total=total,
            initial=total - to_do,
            unit="sim",
            desc=simulator.name if shard is None else f"{simulator.name} {shard[0]}/{shard[1]}",
            disable=not progress,
        )
        run = _RunSpec(cloudpickle.dumps(simulator), gold, theta_ref, str(device))
        chunks = (plan.make_chunk(*piece) for piece in pieces)
        finished = _execute(chunks, run, executor, n_workers)
        parts: dict[int, SimulationData] = {}
        errors: list[str] = []
        for chunk, data in _with_failed_chunks_filled(finished, errors, simulator.name, to_do):
            if store is not None:
                store.append(chunk.index, chunk.first_row, data)
            else:
                parts[chunk.first_row] = data
            bar.update(len(data))
        bar.close()
        if store is not None:
            result = store.read().subset(slice(0, total))
        else:
            result = SimulationData.concatenate([parts[k] for k in sorted(parts)])
    except KeyboardInterrupt:
        if store is not None:
            raise KeyboardInterrupt(
                f"interrupted: {store.n_committed} simulations are safe in '{path}'; call "
                f"simulate() again with the same arguments to resume."
            ) from None
        raise
    finally:
        if store is not None:
            store.close()
    _report_invalid(result, errors, simulator.name)
    return result


def _explicit_points(simulator: Simulator, prior, theta) -> Tensor:
    """The ``theta=`` points as ``[n, theta_dim]``, checked against the simulator's and (if
    given) the prior's support."""
    points = simulator.check_theta(theta, what="theta").detach().cpu()
    if len(points) == 0:
        raise ValueError("theta= holds no points")
    if prior is not None:
        prior = as_prior(prior, simulator.theta_dim)
        inside = prior.support.check(points)
        if inside.ndim > 1:
            inside = inside.all(-1)
        if not bool(inside.all()):
            rows = torch.nonzero(~inside).flatten()
            raise SupportError(
                f"{rows.numel()} of the theta points lie outside the prior's support; first: "
                f"row {int(rows[0])} = {points[rows[0]].tolist()}. Leave the prior out to "
                f"simulate there anyway."
            )
    return points


def _check_shard(shard, seed, path) -> tuple[int, int]:
    """``shard`` as ``(i, N)`` with 0 ≤ i < N, once the run can be sharded."""
    valid = (
        isinstance(shard, tuple | list)
        and len(shard) == 2
        and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in shard)
    )
    if not valid or not 0 <= shard[0] < shard[1]:
        raise ValueError(
            f"shard must be (i, N) with 0 ≤ i < N, e.g. (0, 4) for the first of four shards, "
            f"got {shard!r}"
        )
    if seed is None:
        raise ValueError(
            "shard= needs an explicit seed=: every shard of a run must draw from the same "
            "seed, or their rows would not form one run"
        )
    if path is None:
        raise ValueError(
            "shard= needs path=: each shard writes its own store, which simfer.merge_stores "
            "then combines"
        )
    return int(shard[0]), int(shard[1])


def _with_failed_chunks_filled(finished, errors: list[str], name: str, to_do: int):
    """Yield ``(chunk, data)`` for finished chunks, collecting the rows' errors.

    A chunk whose every row raised has no shape to fill its rows with until some
    simulation succeeds: it is held back until then.  If the first min(16, to_do) rows
    all raised, the simulator is broken rather than failing now and then: stop before
    anything is stored (a store kept clean for the fixed code)."""
    held_back: list[_Chunk] = []
    template: SimulationData | None = None
    for chunk, (data, chunk_errors) in finished:
        errors.extend(chunk_errors)
        if data is None:
            held_back.append(chunk)
            if template is None and sum(len(c.theta) for c in held_back) >= min(16, to_do):
                raise SimulatorError(
                    f"every simulation of '{name}' raised ({len(errors)} tried); nothing was "
                    f"stored. First: {errors[0]}"
                )
            continue
        template = data
        yield chunk, data
        for failed in held_back:
            yield failed, _failed_rows(template, failed, list(range(len(failed.theta))))
        held_back = []
    if held_back:
        raise SimulatorError(
            f"every simulation of '{name}' raised; nothing was stored. First: {errors[0]}"
        )


@dataclass(frozen=True)
class _Plan:
    """How a run's rows are cut into chunks and where each chunk's inputs come from."""

    simulator: Simulator
    prior: Distribution
    n: int
    seed: int
    chunk_size: int
    design: Any
    theta_ref: Tensor | None
    reference_fraction: float
    points: Tensor | None = None
    shard: tuple[int, int] | None = None

    def fingerprint(self, gold: bool) -> dict[str, Any]:
        """What a store of this run must match.  x_shape is left out: a simulator may learn
        it on its first call, and the store checks every column's shape on append.  The
        explicit θ points and the shard appear only in runs that have them, so stores made
        before they existed still resume."""
        described = {k: v for k, v in self.simulator.describe().items() if k != "x_shape"}
        with_reference = self.theta_ref is not None
        extra: dict[str, Any] = {}
        if self.points is not None:
            extra["theta"] = _describe_values(self.points)
        if self.shard is not None:
            extra["shard"] = {"index": self.shard[0], "count": self.shard[1], "n": self.n}
        return {
            **extra,
            "simulator": described,
            "prior": None if self.prior is None else describe_prior(self.prior),
            "gold": bool(gold),
            "theta_ref": self.theta_ref.tolist() if with_reference else None,
            "reference_fraction": float(self.reference_fraction) if with_reference else None,
            "design": _describe_values(self.design),
            "seed": self.seed,
            "chunk_size": self.chunk_size,
        }

    def chunks(self) -> list[int]:
        """The chunks this run simulates: all of them, or those of its shard."""
        chunks = range(math.ceil(self.n / self.chunk_size))
        if self.shard is None:
            return list(chunks)
        index, count = self.shard
        return [k for k in chunks if shard_of_chunk(k, count) == index]

    def chunk_rows(self, k: int) -> int:
        return min(self.chunk_size, self.n - k * self.chunk_size)

    @property
    def n_rows(self) -> int:
        """The rows this run simulates (those of its shard only, for a shard)."""
        return sum(self.chunk_rows(k) for k in self.chunks())

    def missing_pieces(self, done: dict[int, int]) -> list[tuple[int, int, int]]:
        """``(chunk, offset, rows)`` for the rows of each chunk not in ``done`` yet."""
        pieces = []
        for k in self.chunks():
            wanted, have = self.chunk_rows(k), done.get(k, 0)
            if have < wanted:
                pieces.append((k, have, wanted - have))
        return pieces

    def make_chunk(self, k: int, offset: int, m: int) -> _Chunk:
        """Rows ``offset … offset+m`` of chunk k.  A chunk is made in one piece (offset 0)
        unless a run is extended past a partial last chunk; the missing rows are then a
        second piece, seeded by their offset."""
        first_row = k * self.chunk_size + offset
        theta_seed, sim_seed = _chunk_seeds(self.seed, k, offset)
        design = self.design
        with seeded(theta_seed):
            if self.points is None:
                theta = self.prior.sample((m,))
            else:
                theta = self.points[first_row : first_row + m]
            if isinstance(design, Distribution):
                design = design.sample((m,))
        theta = self.simulator.check_theta(theta, what="theta drawn from the prior")
        if design is not None and not isinstance(design, Distribution):
            design = torch.as_tensor(design)
            if design.ndim == 2 and design.shape[0] == self.n:
                design = design[first_row : first_row + m]
        if design is not None:
            design = self.simulator.check_design(design, m)
        at_reference = None
        if self.theta_ref is not None:
            at_reference = _reference_mask(first_row, m, self.reference_fraction)
        return _Chunk(k, first_row, theta, design, at_reference, sim_seed)


def _execute(chunks, run: _RunSpec, executor, n_workers):
    """Yield ``(chunk, (data, errors))`` as chunks finish, keeping a bounded number in flight."""
    if executor == "serial":
        for chunk in chunks:
            yield chunk, _run_chunk(run, chunk)
        return
    own_pool = executor == "processes"
    if own_pool:
        n_workers = n_workers or os.cpu_count() or 1
        # fork keeps a user's unguarded script from being re-imported by every worker;
        # CUDA does not survive a fork, and Windows has none: spawn there (the script
        # then needs an `if __name__ == "__main__":` guard).
        fork_ok = "fork" in multiprocessing.get_all_start_methods()
        method = "fork" if fork_ok and not torch.cuda.is_initialized() else "spawn"
        executor = ProcessPoolExecutor(
            n_workers, mp_context=multiprocessing.get_context(method), initializer=_limit_threads
        )
    elif not isinstance(executor, Executor):
        raise TypeError(
            f"executor must be 'processes', 'serial' or a concurrent.futures.Executor (e.g. a "
            f"Dask client's get_executor()), got {executor!r}"
        )
    max_in_flight = 2 * (n_workers or os.cpu_count() or 1) if own_pool else 64
    in_flight = {}
    try:
        chunks = iter(chunks)
        exhausted = False
        while True:
            while not exhausted and len(in_flight) < max_in_flight:
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                    break
                in_flight[executor.submit(_run_chunk, run, chunk)] = chunk
            if not in_flight:
                return
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                yield in_flight.pop(future), future.result()
    finally:
        for future in in_flight:
            future.cancel()
        if own_pool:
            executor.shutdown(wait=True, cancel_futures=True)


def _describe_values(values) -> Any:
    """A JSON-able fingerprint of a design or of θ points: a distribution's description,
    a small array's values, or a large array's shape and SHA-256."""
    if values is None:
        return None
    if isinstance(values, Distribution):
        return describe_prior(values)
    array = np.ascontiguousarray(torch.as_tensor(values).detach().cpu().numpy())
    if array.size <= 16:
        return array.tolist()
    return {"shape": list(array.shape), "sha256": hashlib.sha256(array.tobytes()).hexdigest()}


def _report_invalid(result: SimulationData, errors: list[str], name: str) -> None:
    n_invalid = result.n_invalid
    if not n_invalid:
        return
    raised = len(errors)
    causes = f"{n_invalid - raised} returned NaN/inf" if n_invalid > raised else ""
    if raised:
        causes += f"{', ' if causes else ''}{raised} raised (first: {errors[0]})"
    warnings.warn(
        f"{n_invalid} of {len(result)} simulations of '{name}' failed: {causes}. They are "
        f"kept with valid=False (data.valid) and never trained on; data.valid_only() drops "
        f"them.",
        InvalidSimulationWarning,
        stacklevel=3,
    )
