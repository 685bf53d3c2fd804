r"""Training on stores larger than memory: a simfer store read a block at a time.

`StoredSimulations(path)` is a lazy handle on a store written by ``simfer.simulate(...,
path=...)``: it opens the file and checks it, and reads rows only when asked.  Every
estimator's ``fit`` takes one, or the store's path, in place of a `SimulationData`:

* when the table fits the training memory budget (``max_memory`` of
  `simfer.training.TrainingConfig`; by default half the machine's memory), it is read
  whole, and the fit is exactly ``fit(simfer.load_simulations(path))``, bit for bit;
* otherwise the fit *streams* from the store, holding one buffer of rows at a time.

One streamed epoch (`StreamedRows`):

1. the store's rows are cut into blocks of ``block_rows`` consecutive stored rows (by
   default one HDF5 chunk, 4096 rows for the stores of ``simfer.simulate``, so a
   compressed store decompresses each chunk once), and the blocks put in an order drawn
   from the training seed and the epoch's number;
2. ``buffer_rows // block_rows`` blocks at a time are read into a buffer, and the
   estimator's row transform keeps the rows it trains on (not the failed simulations, nor
   the reference-class rows an NPE leaves out, nor the validation rows) and builds its
   columns (pairs, bootstrap weights, summaries);
3. the buffer's rows are permuted and cut into minibatches; the rows that do not fill a
   last batch are carried into the next buffer, so every batch but the epoch's last is
   full.

So a fit holds at most one buffer and one batch of rows, whatever the size of the store.
A batch draws its rows from K = ``buffer_rows // block_rows`` random blocks rather than
from the whole store.  The rows of a block are consecutive simulations of one chunk of
the run, independent draws when θ comes from a prior, so this costs nothing there; a store
simulated at explicit θ points in grid order (``simulate(..., theta=grid)``) keeps its
neighbouring θ together in a block, and a larger buffer mixes them better.

Validation rows.  A row is held out when a seeded hash of its position in the run (the
store's ``row_index``) falls below ``validation_fraction``: the same rows in every epoch,
whatever the order of storage, with no list of them in memory.  Their loss is taken by a
pass over the store in storage order at the end of each epoch.

Standardisation and the other constants a fit takes from its data (the default score
weight α, whether a design varies, the reference point) come from one pass over the store
before training: `Moments` merges each buffer's count, mean and sum of squared deviations
with Chan, Golub & LeVeque's pairwise formula (in float64, so 10⁷ rows lose nothing to
round-off), and keeps minima and maxima to tell constant columns.

Checkpoints.  Each epoch's order follows from the seed and the epoch's number alone, so a
killed streamed fit resumes from its checkpoint and sees the batches an uninterrupted one
would have seen.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch
from torch import Tensor

from .data import RaggedSets, SimulationData
from .errors import ShapeError, SimferError, StoreError
from .store import FORMAT, SimulationStore, load_simulations
from .training import gather

if TYPE_CHECKING:
    from .nn import Standardize
    from .training import TrainingConfig

__all__ = [
    "TRAINING_MEMORY_FACTOR",
    "Moments",
    "RowTransform",
    "StoredSimulations",
    "StreamedRows",
    "hashed_uniform",
    "memory_budget",
    "open_training_data",
]

#: A transform from a buffer of stored rows (θ, x, … in torch's default dtype) and their
#: positions in the run ``[m]`` int64 to the columns an estimator trains on, all with the
#: same number of rows (≤ m); it drops the rows the estimator does not train on (an empty
#: dict: none is left).
RowTransform = Callable[[SimulationData, Tensor], dict[str, Tensor | RaggedSets]]

#: Training in memory holds about this many times the table: measured, one ALICES epoch on
#: a 10⁶-row one-parameter gold store peaks 6.5 times its 25 MiB table above the imports
#: (docs/own_data.md).
TRAINING_MEMORY_FACTOR = 7

_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele, Lea & Flood 2014) of uint64 ``values``: a bijection
    whose outputs look independent and uniform even for consecutive inputs."""
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * _MIX[0]
    z = (z ^ (z >> np.uint64(27))) * _MIX[1]
    return z ^ (z >> np.uint64(31))


def hashed_uniform(rows: Tensor | np.ndarray, seed: int, stream: int = 0) -> np.ndarray:
    """A uniform number in [0, 1) for each row position ``rows`` ``[m]`` (float64 ``[m]``),
    a fixed function of (row, seed, stream): the same row gets the same number in every
    epoch and every pass, and different streams give independent numbers."""
    key = _splitmix64(np.array([seed & (2**64 - 1)], dtype=np.uint64))
    key = _splitmix64(key ^ np.uint64(stream & (2**64 - 1)))
    rows = np.asarray(rows.cpu() if isinstance(rows, Tensor) else rows, dtype=np.int64)
    hashed = _splitmix64(rows.astype(np.uint64) ^ key)
    return (hashed >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's block order and in-buffer permutations."""
    return int(hashed_uniform(np.array([epoch]), seed, stream=1)[0] * 2**53)


def memory_budget(config: TrainingConfig) -> int:
    """The bytes a fit may hold its training table in: ``config.max_memory``, or by default
    half of the machine's physical memory (8 GiB where the system does not tell)."""
    if config.max_memory is not None:
        return int(config.max_memory)
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        physical = 16 * 2**30
    return int(physical) // 2


class Moments:
    """Count, mean, variance, minimum and maximum of each feature of rows seen a block at a
    time.  `add` merges a block ``[m, …]`` (flattened to ``[m, k]``) into the running values
    by the pairwise formula of Chan, Golub & LeVeque (1979): with δ = mean_b − mean_a,
    M2 = M2_a + M2_b + δ² n_a n_b / (n_a + n_b).  Kept in float64 on the CPU."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self._m2: Tensor | None = None
        self.minimum: Tensor | None = None
        self.maximum: Tensor | None = None

    def add(self, values: Tensor) -> Moments:
        """Merge the rows of ``values`` ``[m, …]``; returns self."""
        m = values.shape[0]
        if m == 0:
            return self
        values = values.detach().reshape(m, -1).to(device="cpu", dtype=torch.float64)
        mean = values.mean(0)
        m2 = ((values - mean) ** 2).sum(0)
        if self.mean is None:
            self.count, self.mean, self._m2 = m, mean, m2
            self.minimum, self.maximum = values.amin(0), values.amax(0)
            return self
        total = self.count + m
        delta = mean - self.mean
        self.mean = self.mean + delta * (m / total)
        self._m2 = self._m2 + m2 + delta**2 * (self.count * m / total)
        self.count = total
        self.minimum = torch.minimum(self.minimum, values.amin(0))
        self.maximum = torch.maximum(self.maximum, values.amax(0))
        return self

    @property
    def variance(self) -> Tensor:
        """The unbiased variance of each feature ``[k]`` (as ``Tensor.var``)."""
        self._require_rows()
        return self._m2 / max(self.count - 1, 1)

    @property
    def std(self) -> Tensor:
        return self.variance.sqrt()

    @property
    def second_moment(self) -> Tensor:
        """E[v²] of each feature ``[k]``: the population variance plus the squared mean."""
        self._require_rows()
        return self._m2 / self.count + self.mean**2

    @property
    def constant(self) -> bool:
        """Whether every feature took one value only."""
        self._require_rows()
        return bool((self.minimum == self.maximum).all())

    def fit(self, standardize: Standardize) -> None:
        """Set a `simfer.nn.Standardize`'s μ, σ from these moments, with the floor of its own
        ``fit`` (σ = 1 for a constant feature)."""
        self._require_rows()
        with torch.no_grad():
            standardize.mean.copy_(self.mean)
            mean = standardize.mean
            std = (self.std if self.count > 1 else torch.ones_like(self.std)).to(mean.dtype)
            floor = 1e-8 * (1 + mean.abs())
            standardize.std.copy_(torch.where(std > floor, std, torch.ones_like(std)))

    def _require_rows(self) -> None:
        if self.mean is None:
            raise ValueError("no rows were added to these moments")


class StoredSimulations:
    """A simfer store opened for training without reading it into memory.

    Args:
        path: a store written by ``simfer.simulate(..., path=...)`` (or `merge_stores`);
            it may be mid-run: its committed rows are used.
        buffer_rows: the most rows one buffer holds while training streams (the fit's
            memory then grows with this, not with the store).
        block_rows: the rows of one block, the unit of shuffling; by default one HDF5
            chunk of the store (at most ``buffer_rows``).

    ``fit(StoredSimulations(path))`` (or ``fit(path)``) loads the table whole when it fits
    ``max_memory`` and streams otherwise (see the module docstring).  Raises a
    FileNotFoundError for a missing path and a `StoreError` for a file that is not a simfer
    store or is damaged.  ``largest_buffer`` records the most rows read into memory at once.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        buffer_rows: int = 65_536,
        block_rows: int | None = None,
    ):
        if int(buffer_rows) < 1 or (block_rows is not None and int(block_rows) < 1):
            raise ValueError(
                f"buffer_rows and block_rows must be positive, got {buffer_rows}, {block_rows}"
            )
        self.path = Path(path)
        store = SimulationStore.open_readonly(self.path)
        try:
            store.check_readable()
        except BaseException:
            store.close()
            raise
        self._store = store
        self.n = store.n_committed
        self.block_rows = int(block_rows or min(store.chunk_rows, int(buffer_rows)))
        if self.block_rows > int(buffer_rows):
            raise ValueError(
                f"a buffer of {buffer_rows} rows cannot hold one block of {self.block_rows}: "
                f"raise buffer_rows or lower block_rows"
            )
        self.blocks_per_buffer = int(buffer_rows) // self.block_rows
        self.buffer_rows = self.blocks_per_buffer * self.block_rows
        self.largest_buffer = 0

    # -- size -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.n

    @property
    def table_bytes(self) -> int:
        """The bytes of the table as `load_simulations` would hold it."""
        return self._store.table_bytes

    @property
    def training_bytes(self) -> int:
        """The memory an in-memory fit on the whole table is estimated to take:
        `TRAINING_MEMORY_FACTOR` times the table."""
        return TRAINING_MEMORY_FACTOR * self.table_bytes

    def fits(self, config: TrainingConfig) -> bool:
        """Whether an in-memory fit stays within ``config``'s memory budget."""
        return self.training_bytes <= memory_budget(config)

    def load(self) -> SimulationData:
        """The whole table, as ``simfer.load_simulations(path)`` reads it."""
        return load_simulations(self.path)

    # -- reading --------------------------------------------------------------------------
    def blocks(self) -> list[tuple[int, int]]:
        """The blocks as ranges ``(start, stop)`` of stored rows, in storage order."""
        return [(a, min(a + self.block_rows, self.n)) for a in range(0, self.n, self.block_rows)]

    def read(self, blocks: list[tuple[int, int]]) -> tuple[SimulationData, Tensor]:
        """The rows of ``blocks`` (ranges of stored rows; neighbouring ranges are read in one
        go) and their positions in the run ``[m]`` int64, floating columns in torch's default
        dtype (as `simfer.estimators.rows.training_table` casts a table)."""
        merged: list[list[int]] = []
        for start, stop in blocks:
            if merged and merged[-1][1] == start:
                merged[-1][1] = stop
            else:
                merged.append([start, stop])
        self.largest_buffer = max(self.largest_buffer, sum(b - a for a, b in blocks))
        parts, rows = [], []
        for start, stop in merged:
            try:
                parts.append(self._store.read_rows(start, stop))
                rows.append(torch.from_numpy(self._store.row_indices(start, stop)))
            except (KeyError, OSError, ValueError, TypeError) as error:
                raise StoreError(
                    f"'{self.path}' is damaged: reading its rows {start} … {stop - 1} failed "
                    f"({type(error).__name__}: {error}); move it aside and simulate again"
                ) from error
        data = parts[0] if len(parts) == 1 else SimulationData.concatenate(parts)
        return data.to(dtype=torch.get_default_dtype()), torch.cat(rows)

    def buffers(self) -> Iterator[tuple[SimulationData, Tensor]]:
        """Every row once, a buffer at a time, in storage order (for passes that gather
        statistics)."""
        blocks = self.blocks()
        for i in range(0, len(blocks), self.blocks_per_buffer):
            yield self.read(blocks[i : i + self.blocks_per_buffer])

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> StoredSimulations:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"StoredSimulations('{self.path}', n={self.n}, {self.table_bytes / 2**20:.1f} MiB, "
            f"buffer_rows={self.buffer_rows}, block_rows={self.block_rows})"
        )


def open_training_data(path: str | os.PathLike) -> StoredSimulations | SimulationData:
    """What ``fit(path)`` trains on: a simfer store as a `StoredSimulations` (streamed when
    it does not fit), any other file `load_simulations` reads (.npz, .npy, plain HDF5,
    MadMiner samples) read whole."""
    path = Path(path)
    if path.is_file() and h5py.is_hdf5(path):
        with h5py.File(path, "r") as file:
            simfer_store = file.attrs.get("format") == FORMAT
        if simfer_store:
            return StoredSimulations(path)
    return load_simulations(path)


def _rows_of(columns: dict[str, Tensor | RaggedSets]) -> int:
    return len(next(iter(columns.values())))


def _select(columns: dict[str, Tensor | RaggedSets], index: Tensor) -> dict:
    """The rows ``index`` of every column, sets kept ragged."""
    return {k: v[index] for k, v in columns.items()}


def _concatenate(a: dict, b: dict) -> dict:
    if a.keys() != b.keys():
        raise ShapeError(f"a row transform gave columns {sorted(a)} and then {sorted(b)}")
    return {
        k: RaggedSets.concatenate([a[k], b[k]])
        if isinstance(a[k], RaggedSets)
        else torch.cat([a[k], b[k]])
        for k in a
    }


class StreamedRows:
    """The rows of a store as `simfer.training.fit_network` trains on them, streamed: a
    `StoredSimulations` and the estimator's `RowTransform` (see the module docstring for
    the order of the rows and the validation split)."""

    kind = "stream"

    def __init__(self, source: StoredSimulations, transform: RowTransform):
        self.source = source
        self.transform = transform
        self._seed, self._fraction, self._batch_size = 0, 0.1, 256
        self._device = torch.device("cpu")

    def prepare(self, config: TrainingConfig, device: torch.device) -> None:
        """Take the seed, the validation fraction, the batch size and the device of a fit."""
        if not 0 < config.validation_fraction < 1:
            raise ValueError(
                f"a streamed fit holds out rows by a hash of their position: "
                f"validation_fraction must lie in (0, 1), got {config.validation_fraction}"
            )
        self._seed, self._fraction = int(config.seed), float(config.validation_fraction)
        self._batch_size, self._device = int(config.batch_size), device

    def _columns(self, blocks: list[tuple[int, int]], validation: bool) -> dict | None:
        """The transformed training (or validation) rows of ``blocks`` on the fit's device;
        None when none is left."""
        data, rows = self.source.read(blocks)
        held_out = torch.from_numpy(hashed_uniform(rows, self._seed) < self._fraction)
        keep = held_out if validation else ~held_out
        if not bool(keep.any()):
            return None
        columns = self.transform(data.subset(keep), rows[keep])
        if not columns or _rows_of(columns) == 0:
            return None
        return {k: v.to(self._device) for k, v in columns.items()}

    def training_batches(self, epoch: int) -> Iterator[tuple[dict[str, Tensor], int]]:
        """One epoch's minibatches and their sizes (see the module docstring)."""
        generator = torch.Generator().manual_seed(_epoch_seed(self._seed, epoch))
        blocks = self.source.blocks()
        order = torch.randperm(len(blocks), generator=generator).tolist()
        per_buffer, size = self.source.blocks_per_buffer, self._batch_size
        carry: dict | None = None
        seen = 0
        for i in range(0, len(order), per_buffer):
            columns = self._columns([blocks[j] for j in order[i : i + per_buffer]], False)
            if columns is None:
                continue
            if carry is not None:
                columns = _concatenate(carry, columns)
            m = _rows_of(columns)
            permutation = torch.randperm(m, generator=generator).to(self._device)
            last = i + per_buffer >= len(order)
            full = m if last else m - m % size
            for start in range(0, full, size):
                index = permutation[start : start + size]
                yield gather(columns, index), len(index)
            seen += full
            carry = _select(columns, permutation[full:]) if full < m else None
        if carry is not None:
            yield gather(carry, torch.arange(_rows_of(carry), device=self._device)), _rows_of(carry)
            seen += _rows_of(carry)
        if seen == 0:
            raise SimferError(
                f"no row of '{self.source.path}' is left to train on: the store's rows are all "
                f"failed, held out for validation or of a kind this estimator does not use"
            )

    def validation_batches(self) -> Iterator[tuple[dict[str, Tensor], int]]:
        """The held-out rows' batches, in storage order."""
        blocks, per_buffer = self.source.blocks(), self.source.blocks_per_buffer
        seen = 0
        for i in range(0, len(blocks), per_buffer):
            columns = self._columns(blocks[i : i + per_buffer], True)
            if columns is None:
                continue
            m = _rows_of(columns)
            for start in range(0, m, self._batch_size):
                index = torch.arange(start, min(start + self._batch_size, m), device=self._device)
                yield gather(columns, index), len(index)
            seen += m
        if seen == 0:
            raise SimferError(
                f"no row of '{self.source.path}' fell in the validation split "
                f"(validation_fraction={self._fraction}): raise validation_fraction, or train "
                f"on this small table in memory (simfer.load_simulations)"
            )

    def state(self) -> Tensor:
        """What a checkpoint keeps of the source: its seed (each epoch's order follows from
        it)."""
        return torch.tensor([self._seed], dtype=torch.int64)

    def restore(self, state: Tensor) -> None:
        if int(state.reshape(-1)[0]) != self._seed:
            raise SimferError(
                f"the checkpoint was written by a streamed fit with seed {int(state[0])}, this "
                f"fit has seed {self._seed}: pass the same seed, or another checkpoint path"
            )
