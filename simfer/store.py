"""`SimulationStore`: a chunked, appendable, crash-safe HDF5 file of simulations.

Layout of the file (one HDF5 file, format ``simfer-simulations``):

* root attributes: ``format``, ``format_version``, ``simfer_version`` and
  ``fingerprint`` (JSON: the simulator, prior, gold settings, seed and chunk
  size the rows were made with), ``n_committed`` and ``chunks_committed``;
* one resizable dataset per `SimulationData` column, plus ``row_index`` (the
  row's position in the run, int64) and ``chunk_index``;
* a set-valued column (a `RaggedSets`, e.g. ``x`` of a jet simulator) is two
  datasets: ``x.values`` ``[total_elements, features]``, the elements of every
  row one after the other, and ``x.ends`` ``[n]`` int64, where each row's elements
  end in ``x.values`` (its offsets, stored row-aligned: row i holds
  ``x.values[ends[i-1]:ends[i]]`` with ``ends[-1] = 0``).  Nothing is padded.

Crash safety: a chunk is appended in one step: the rows are written, the file
is flushed, and only then are the two ``*_committed`` counters raised and the
file flushed again.  A run killed at any moment therefore leaves a file whose
first ``n_committed`` rows are whole; rows past it (a half-written chunk) are
discarded when the store is opened again, and that chunk is simulated anew.  The
elements of a set-valued column are cut at ``ends[n_committed − 1]``, the end of the
last committed row, so its half-written elements go too.
A new store is written to a temporary name and renamed into place, so a kill
during creation leaves no half-made file behind.

Rows are stored in the order chunks finished; `read` returns them sorted by
``row_index``, so the result does not depend on which worker was fastest.

Compression.  A store made with ``compression="gzip"`` (or ``"lzf"``) records it in the
root attribute ``compression`` and writes every dataset through that HDF5 filter (with
the byte-shuffle filter before it, which helps floating-point columns); reading is the
same either way, since HDF5 undoes the filters.

Shards.  A run of K chunks can be simulated as N shards (``simulate(..., shard=(i, N))``):
shard i holds the chunks k with ``k mod N = i`` (`shard_of_chunk`), in its own store,
whose fingerprint is the run's plus ``shard`` = ``{"index": i, "count": N, "n": n}``.
`merge_stores` checks that the shards belong to one run and together hold every row
once, and writes the store the unsharded run would have written.

Other files.  `load_simulations` also reads (θ, x) tables that simfer did not write:
.npz files, folders or mappings of .npy files, plain HDF5 files and MadMiner's training
samples (`simfer.formats`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from . import __version__
from .data import COLUMNS, RaggedSets, SimulationData
from .errors import StoreError
from .formats import read_foreign

__all__ = ["SimulationStore", "load_simulations", "merge_stores", "shard_of_chunk"]

FORMAT = "simfer-simulations"
FORMAT_VERSION = 1
VALUES, ENDS = ".values", ".ends"  # the two datasets of a set-valued column
COMPRESSIONS = ("gzip", "lzf")  # the HDF5 filters every h5py build has


def shard_of_chunk(chunk: int, count: int) -> int:
    """The shard (of ``count``) that simulates chunk ``chunk`` of a run: ``chunk mod count``,
    so every shard gets every count-th chunk and a share of the run within one chunk of
    the others'."""
    return chunk % count


def check_compression(compression: str | None) -> str | None:
    """``compression`` if simfer can write it (None, "gzip" or "lzf"); a ValueError if not."""
    if compression is not None and compression not in COMPRESSIONS:
        raise ValueError(
            f"compression must be None, 'gzip' or 'lzf', got {compression!r} ('gzip' compresses "
            f"more, 'lzf' is faster)"
        )
    return compression


def _open_h5(path: Path, mode: str) -> h5py.File:
    try:
        return h5py.File(path, mode)
    except OSError as error:
        raise StoreError(
            f"'{path}' is not a readable HDF5 file ({error}). It may be truncated, corrupt or "
            f"of another format; move it aside to start a new run."
        ) from error


def _flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} → {"a.b": 1}, to name exactly which fingerprint entries differ."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_format(file: h5py.File, path: Path) -> None:
    found = file.attrs.get("format")
    if found != FORMAT:
        raise StoreError(
            f"'{path}' is an HDF5 file but not a simfer simulation store (format={found!r}); "
            f"choose another path."
        )
    version = int(file.attrs.get("format_version", -1))
    if version > FORMAT_VERSION:
        raise StoreError(
            f"'{path}' was written by a newer simfer (store format {version}, this simfer "
            f"{__version__} reads up to {FORMAT_VERSION}); upgrade simfer to read it."
        )


class SimulationStore:
    """An open simulation store; create or resume one with `SimulationStore.open`."""

    def __init__(self, path: Path, file: h5py.File):
        self.path = path
        self._file = file

    # -- opening --
    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        fingerprint: dict[str, Any],
        compression: str | None = None,
    ) -> SimulationStore:
        """Open ``path`` for appending, creating it if absent (with ``compression``: None,
        "gzip" or "lzf"; an existing store keeps the compression it was made with).

        An existing store must have been made with the same ``fingerprint``
        (the same simulator, prior, settings, seed and chunk size); otherwise a
        `StoreError` says which entries differ.
        """
        path = Path(path)
        check_compression(compression)
        if not path.exists():
            cls._create(path, fingerprint, compression)
        file = _open_h5(path, "r+")
        try:
            _check_format(file, path)
            stored = json.loads(file.attrs["fingerprint"])
            if stored != fingerprint:
                flat_stored, flat_run = _flatten(stored), _flatten(fingerprint)
                keys = sorted(
                    k
                    for k in flat_stored.keys() | flat_run.keys()
                    if flat_stored.get(k) != flat_run.get(k)
                )
                diff = "; ".join(
                    f"{k}: store has {flat_stored.get(k)!r}, run has {flat_run.get(k)!r}"
                    for k in keys
                )
                raise StoreError(
                    f"'{path}' holds simulations of another run ({diff}). Use another path, or "
                    f"repeat the original arguments to resume it."
                )
            store = cls(path, file)
            store._discard_uncommitted()
        except BaseException:
            file.close()
            raise
        return store

    @classmethod
    def open_readonly(cls, path: str | os.PathLike) -> SimulationStore:
        """Open an existing store for reading only (its committed rows; nothing is discarded
        or written), for reading it a block at a time (`simfer.streaming`).  A missing
        file is a FileNotFoundError; a file that is not a simfer store a `StoreError`
        that says how to read other tables."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no simulation store at '{path}': the path does not exist")
        file = _open_h5(path, "r")
        try:
            found = file.attrs.get("format")
            if found != FORMAT:
                raise StoreError(
                    f"'{path}' is an HDF5 file but not a simfer simulation store "
                    f"(format={found!r}), so it cannot be read a block at a time; read it whole "
                    f"with simfer.load_simulations(path) and train on that table"
                )
            _check_format(file, path)
        except BaseException:
            file.close()
            raise
        return cls(path, file)

    @staticmethod
    def read_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
        """The fingerprint of an existing store, without opening it for writing."""
        path = Path(path)
        with _open_h5(path, "r") as file:
            _check_format(file, path)
            return json.loads(file.attrs["fingerprint"])

    @staticmethod
    def _create(path: Path, fingerprint: dict[str, Any], compression: str | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with h5py.File(tmp, "w") as file:
            file.attrs["format"] = FORMAT
            file.attrs["format_version"] = FORMAT_VERSION
            file.attrs["simfer_version"] = __version__
            file.attrs["fingerprint"] = json.dumps(fingerprint, sort_keys=True)
            file.attrs["compression"] = compression or ""
            file.attrs["n_committed"] = 0
            file.attrs["chunks_committed"] = 0
        os.replace(tmp, path)

    def _discard_uncommitted(self) -> None:
        n = self.n_committed
        for name in list(self._file.keys()):
            length = n
            if name.endswith(VALUES):
                length = _committed_elements(self._file, name.removesuffix(VALUES), n, self.path)
            if self._file[name].shape[0] != length:
                self._file[name].resize(length, axis=0)
        self._file.flush()

    # -- state --
    @property
    def n_committed(self) -> int:
        return int(self._file.attrs["n_committed"])

    @property
    def rows_per_chunk(self) -> dict[int, int]:
        """How many committed rows each chunk has (a chunk extended later may be in pieces)."""
        if "chunk_index" not in self._file:
            return {}
        chunks, counts = np.unique(
            self._file["chunk_index"][: self.n_committed], return_counts=True
        )
        return dict(zip(chunks.tolist(), counts.tolist(), strict=True))

    @property
    def fingerprint(self) -> dict[str, Any]:
        return json.loads(self._file.attrs["fingerprint"])

    @property
    def compression(self) -> str | None:
        """The HDF5 filter the store's datasets are written with ("gzip", "lzf"), or None."""
        return str(self._file.attrs.get("compression", "")) or None

    def blocks(self) -> list[tuple[int, int, int, int]]:
        """The committed rows as ``(chunk, first_row, start, stop)`` runs: storage rows
        ``start … stop−1`` are rows ``first_row …`` of the run, all of chunk ``chunk``."""
        return _blocks(self._file)

    # -- writing --
    def append(self, chunk_index: int, first_row: int, data: SimulationData) -> None:
        """Append one finished chunk (rows ``first_row …``) and commit it."""
        m = len(data)
        n = self.n_committed
        arrays: dict[str, np.ndarray] = {}
        for name, value in data.columns().items():
            if isinstance(value, RaggedSets) != (name + VALUES in self._file) and n:
                kinds = ("fixed-shape", "set-valued")
                raise StoreError(
                    f"chunk {chunk_index} has {kinds[isinstance(value, RaggedSets)]} '{name}', "
                    f"the store holds {kinds[name + VALUES in self._file]} '{name}': the "
                    f"simulator's output changed kind; use a new store"
                )
            if isinstance(value, RaggedSets):
                stored = self._file[name + VALUES].shape[0] if n else 0
                arrays[name + VALUES] = value.values.detach().cpu().numpy()
                arrays[name + ENDS] = stored + value.offsets[1:].cpu().numpy()
            else:
                arrays[name] = value.detach().cpu().numpy()
        arrays["row_index"] = np.arange(first_row, first_row + m, dtype=np.int64)
        arrays["chunk_index"] = np.full(m, chunk_index, dtype=np.int64)
        for name, array in arrays.items():
            if name not in self._file:
                if n:
                    raise StoreError(f"chunk {chunk_index} has a column '{name}' the store lacks")
                self._file.create_dataset(
                    name,
                    shape=(0, *array.shape[1:]),
                    maxshape=(None, *array.shape[1:]),
                    dtype=array.dtype,
                    chunks=(max(1, min(4096, len(array))), *array.shape[1:]),
                    compression=self.compression,
                    shuffle=self.compression is not None,
                )
            dataset = self._file[name]
            if dataset.shape[1:] != array.shape[1:]:
                raise StoreError(
                    f"column '{name}' of chunk {chunk_index} has shape {array.shape[1:]}, the "
                    f"store holds {dataset.shape[1:]}"
                )
            start = dataset.shape[0] if name.endswith(VALUES) else n
            dataset.resize(start + len(array), axis=0)
            dataset[start : start + len(array)] = array
        self._file.flush()
        self._file.attrs["n_committed"] = n + m
        self._file.attrs["chunks_committed"] = int(self._file.attrs["chunks_committed"]) + 1
        self._file.flush()

    # -- reading --
    def read(self) -> SimulationData:
        """All committed rows, sorted by their position in the run."""
        return _read(self._file, self.path)

    def read_rows(self, start: int, stop: int) -> SimulationData:
        """Storage rows ``start … stop−1`` (committed ones), in storage order."""
        return _read_storage_rows(self._file, start, stop, self.path)

    def check_readable(self) -> None:
        """A `StoreError` naming the damage unless the committed rows can be read a block at
        a time: some rows, θ and x present, every row-aligned dataset at least
        ``n_committed`` long and the elements of set-valued columns within their dataset."""
        n, file = self.n_committed, self._file
        if n == 0:
            raise StoreError(f"'{self.path}' holds no finished simulations yet")
        problem = None
        if "theta" not in file or ("x" not in file and "x" + VALUES not in file):
            problem = "it lacks the 'theta' or the 'x' column"
        elif "row_index" not in file:
            problem = "it lacks the 'row_index' dataset"
        else:
            for name in file:
                if not name.endswith(VALUES) and file[name].shape[0] < n:
                    problem = f"'{name}' has {file[name].shape[0]} rows, {n} are committed"
                    break
                if name.endswith(VALUES):
                    column = name.removesuffix(VALUES)
                    if _committed_elements(file, column, n, self.path) > file[name].shape[0]:
                        problem = f"'{column}{ENDS}' points past the end of '{name}'"
                        break
        if problem:
            raise StoreError(
                f"'{self.path}' is damaged: {problem}; move it aside and simulate again"
            )

    def row_indices(self, start: int, stop: int) -> np.ndarray:
        """``[stop − start]`` int64: each storage row's position in the run (``row_index``)."""
        return np.asarray(self._file["row_index"][start:stop], dtype=np.int64)

    @property
    def chunk_rows(self) -> int:
        """The rows of one HDF5 chunk of the store's datasets (reading whole chunks is the
        cheap way to read it, compressed or not); 4096 for a store of `simfer.simulate`."""
        if "row_index" not in self._file or self._file["row_index"].chunks is None:
            return 4096
        return int(self._file["row_index"].chunks[0])

    @property
    def table_bytes(self) -> int:
        """The bytes the committed rows of the table's columns take (θ, x, design, gold,
        flags; sets counted by their elements), as `load_simulations` holds them."""
        n, total = self.n_committed, 0
        for name in COLUMNS:
            if name in self._file:
                dataset = self._file[name]
                total += (
                    n * int(np.prod(dataset.shape[1:], dtype=np.int64)) * dataset.dtype.itemsize
                )
            elif name + VALUES in self._file:
                values = self._file[name + VALUES]
                elements = _committed_elements(self._file, name, n, self.path)
                total += elements * int(np.prod(values.shape[1:])) * values.dtype.itemsize
                total += n * 8  # the offsets
        return total

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SimulationStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _committed_elements(file: h5py.File, name: str, n: int, path: Path) -> int:
    """How many elements of the set-valued column ``name`` the first n rows hold."""
    if name + ENDS not in file:
        raise StoreError(
            f"'{path}' is damaged: the set-valued column '{name}' has '{name}{VALUES}' but no "
            f"'{name}{ENDS}' (its offsets); move it aside and simulate again"
        )
    if n == 0:
        return 0
    if file[name + ENDS].shape[0] < n:
        raise StoreError(
            f"'{path}' is damaged: '{name}{ENDS}' has {file[name + ENDS].shape[0]} rows, "
            f"{n} are committed; move it aside and simulate again"
        )
    return int(file[name + ENDS][n - 1])


def _read_sets(file: h5py.File, name: str, n: int, path: Path) -> RaggedSets:
    """The first n rows of a set-valued column, in storage order, checked for consistency."""
    total = _committed_elements(file, name, n, path)
    ends = np.asarray(file[name + ENDS][:n], dtype=np.int64)
    values = file[name + VALUES]
    problem = None
    if values.ndim != 2:
        problem = f"'{name}{VALUES}' has shape {values.shape}, not [elements, features]"
    elif (ends[0] < 0) or bool((np.diff(ends) < 0).any()):
        problem = f"'{name}{ENDS}' is not a non-decreasing list of offsets"
    elif total > values.shape[0]:
        problem = (
            f"'{name}{ENDS}' points to element {total} but '{name}{VALUES}' holds only "
            f"{values.shape[0]}"
        )
    if problem:
        raise StoreError(f"'{path}' is damaged: {problem}; move it aside and simulate again")
    offsets = torch.from_numpy(np.concatenate([[0], ends]))
    return RaggedSets(torch.from_numpy(np.ascontiguousarray(values[:total])), offsets)


def _read(file: h5py.File, path: Path) -> SimulationData:
    n = int(file.attrs["n_committed"])
    if n == 0:
        raise StoreError(f"'{path}' holds no finished simulations yet")
    try:
        order = np.argsort(file["row_index"][:n], kind="stable")
        columns: dict[str, torch.Tensor | RaggedSets] = {}
        for name in COLUMNS:
            if name in file and name + VALUES in file:
                raise StoreError(
                    f"'{path}' is damaged: column '{name}' is stored both as an array and as "
                    f"sets; move it aside and simulate again"
                )
            if name in file:
                columns[name] = torch.from_numpy(np.ascontiguousarray(file[name][:n][order]))
            elif name + VALUES in file:
                columns[name] = _read_sets(file, name, n, path)[torch.from_numpy(order)]
    except (KeyError, OSError, ValueError) as error:
        raise StoreError(
            f"'{path}' is damaged: {error}; move it aside and simulate again"
        ) from error
    return SimulationData(**columns)


def _blocks(file: h5py.File) -> list[tuple[int, int, int, int]]:
    n = int(file.attrs["n_committed"])
    if n == 0:
        return []
    rows = np.asarray(file["row_index"][:n], dtype=np.int64)
    chunks = np.asarray(file["chunk_index"][:n], dtype=np.int64)
    breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(chunks) != 0)) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [n]])
    return [
        (int(chunks[a]), int(rows[a]), int(a), int(b))
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True)
    ]


def _read_storage_rows(file: h5py.File, start: int, stop: int, path: Path) -> SimulationData:
    """Storage rows ``start … stop−1`` of a store, as they are stored (no sorting)."""
    columns: dict[str, torch.Tensor | RaggedSets] = {}
    for name in COLUMNS:
        if name in file:
            columns[name] = torch.from_numpy(np.ascontiguousarray(file[name][start:stop]))
        elif name + VALUES in file:
            ends = np.asarray(file[name + ENDS][start:stop], dtype=np.int64)
            first = int(file[name + ENDS][start - 1]) if start > 0 else 0
            if len(ends) and (ends[0] < first or bool((np.diff(ends) < 0).any())):
                raise StoreError(
                    f"'{path}' is damaged: '{name}{ENDS}' is not a non-decreasing list of "
                    f"offsets; move it aside and simulate again"
                )
            last = int(ends[-1]) if len(ends) else first
            values = np.ascontiguousarray(file[name + VALUES][first:last])
            offsets = np.concatenate([[0], ends - first])
            columns[name] = RaggedSets(torch.from_numpy(values), torch.from_numpy(offsets))
    return SimulationData(**columns)


def load_simulations(
    path: str | os.PathLike | Mapping[str, str | os.PathLike], *, dtype: torch.dtype | None = None
) -> SimulationData:
    """Read a table of simulations from disk, whoever wrote it.

    ``path`` is one of:

    * a simfer store (``simfer.simulate(..., path=...)``; it may be mid-run or killed: its
      finished rows are read, in run order);
    * an ``.npz`` file whose keys are `SimulationData` field names: ``theta``
      ``[n, theta_dim]`` and ``x`` ``[n, ...]``, and optionally ``design``, ``theta_ref``,
      ``from_reference``, ``joint_log_ratio``, ``joint_score``, ``joint_score_ref``,
      ``valid``;
    * a folder of ``.npy`` files named by the same fields (``theta.npy``, ``x.npy``, …), or
      a mapping ``{field: path of a .npy file}`` (e.g. a pair ``{"theta": ..., "x": ...}``);
    * a plain HDF5 file with datasets of those names at its root;
    * MadMiner training samples: a folder holding one sample (``x_train.npy``,
      ``theta_train.npy``, ``r_xz_train.npy``, …) or any one of its files; MadMiner's
      ``theta0``/``theta1``/``y``/``r_xz``/``t_xz`` become ``theta``/``theta_ref``/
      ``from_reference``/``joint_log_ratio`` (its log)/``joint_score``.

    For one parameter, a 1-D ``theta`` (and ``joint_score``) is read as ``[n, 1]``; a
    1-D ``x`` as ``[n, 1]``.  Files are read with ``allow_pickle=False``: loading never
    runs code from a file.  A missing or unknown key is a `StoreError` naming the file,
    the key and the keys the file holds; the details of each format are in
    ``docs/own_data.md``.

    ``dtype``: the floating dtype of θ, x and the gold.  By default a simfer store keeps
    the dtype it was simulated in, and other files are read in torch's default dtype
    (float32: simfer's networks train in it, while numpy writes float64 by default).
    """
    if isinstance(path, Mapping):
        return read_foreign(path, dtype=dtype)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no simulations at '{path}': the path does not exist")
    if path.is_dir() or path.suffix in (".npy", ".npz"):
        return read_foreign(path, dtype=dtype)
    with _open_h5(path, "r") as file:
        if file.attrs.get("format") != FORMAT:
            return read_foreign(path, file, dtype)
        _check_format(file, path)
        data = _read(file, path)
    return data if dtype is None else data.to(dtype=dtype)


def merge_stores(
    paths: Sequence[str | os.PathLike], out: str | os.PathLike, *, allow_missing: bool = False
) -> SimulationData:
    """Combine the stores of the shards of one run into one store at ``out``.

    ``paths`` are the stores of ``simfer.simulate(..., shard=(i, N), path=...)`` for
    shards i of one run (the same simulator, prior, settings, seed, chunk size, n and N).
    The merged store is the store the unsharded run would have written: the same rows,
    row for row, and a fingerprint without the shard, so ``simfer.simulate`` called with
    the run's arguments and ``path=out`` finds it complete (or, with ``allow_missing``,
    simulates just the rows it lacks).  It is written under a temporary name and renamed
    into place, so a killed merge leaves no half-made ``out``; it is compressed like the
    first shard.

    Refused, with a `StoreError` naming the files: shards whose fingerprints differ in
    anything but the shard index (the differing key is named), a row held by two shards,
    and, unless ``allow_missing=True``, rows that no shard holds (a shard not given, or one
    whose run was stopped: rerun it with the same arguments to finish it first).

    Returns:
        The merged `SimulationData`, rows in run order.
    """
    paths = [Path(p) for p in paths]
    out = Path(out)
    if not paths:
        raise ValueError("merge_stores needs the paths of at least one shard store")
    if out.exists():
        raise StoreError(f"'{out}' exists already; merge into a new path (or remove it first)")
    if out.resolve() in {p.resolve() for p in paths}:
        raise StoreError(f"'{out}' is one of the shards; merge into a new path")
    seen: set[Path] = set()
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"no shard store at '{p}'")
        if p.resolve() in seen:
            raise StoreError(f"'{p}' is given twice; give each shard's store once")
        seen.add(p.resolve())
    shards = [_read_shard_fingerprint(p) for p in paths]
    run = _common_run(paths, shards)
    count, n = shards[0]["shard"]["count"], shards[0]["shard"]["n"]
    chunk_size = int(run["chunk_size"])
    blocks, compression = _shard_blocks(paths, n)
    _check_coverage(paths, shards, blocks, n, chunk_size, count, allow_missing)

    tmp = out.with_name(out.name + ".merging")
    tmp.unlink(missing_ok=True)
    SimulationStore._create(tmp, run, compression)
    files = [_open_h5(p, "r") for p in paths]
    try:
        with SimulationStore(tmp, _open_h5(tmp, "r+")) as merged:
            for first_row, which, chunk, start, stop in sorted(blocks):
                part = _read_storage_rows(files[which], start, stop, paths[which])
                merged.append(chunk, first_row, part)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        for file in files:
            file.close()
    os.replace(tmp, out)
    return load_simulations(out)


def _read_shard_fingerprint(path: Path) -> dict[str, Any]:
    fingerprint = SimulationStore.read_fingerprint(path)
    if "shard" not in fingerprint:
        raise StoreError(
            f"'{path}' is not a shard store (it was made without shard=); merge_stores "
            f"combines the stores of simfer.simulate(..., shard=(i, N), path=...)"
        )
    return fingerprint


def _common_run(paths: list[Path], shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The unsharded run's fingerprint, once every shard is checked to belong to it."""

    def without_index(fingerprint: dict[str, Any]) -> dict[str, Any]:
        flat = _flatten(fingerprint)
        flat.pop("shard.index")
        return flat

    first = without_index(shards[0])
    for path, fingerprint in zip(paths[1:], shards[1:], strict=True):
        other = without_index(fingerprint)
        keys = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
        if keys:
            diff = "; ".join(
                f"{k}: '{paths[0].name}' has {first.get(k)!r}, '{path.name}' has {other.get(k)!r}"
                for k in keys
            )
            raise StoreError(
                f"'{paths[0]}' and '{path}' are shards of different runs ({diff}); merge only "
                f"the shards of one run (same simulator, prior, settings, seed, chunk size, n "
                f"and shard count)"
            )
    return {k: v for k, v in shards[0].items() if k != "shard"}


def _shard_blocks(paths: list[Path], n: int) -> tuple[list[tuple], str | None]:
    """Every shard's committed row runs as ``(first_row, shard, chunk, start, stop)``, and
    the first shard's compression."""
    blocks, compression = [], None
    for which, path in enumerate(paths):
        with _open_h5(path, "r") as file:
            _check_format(file, path)
            if which == 0:
                compression = str(file.attrs.get("compression", "")) or None
            for chunk, first_row, start, stop in _blocks(file):
                if first_row < 0 or first_row + stop - start > n:
                    raise StoreError(
                        f"'{path}' is damaged: it holds rows {first_row} … "
                        f"{first_row + stop - start - 1} of a run of {n}"
                    )
                blocks.append((first_row, which, chunk, start, stop))
    return blocks, compression


def _check_coverage(
    paths: list[Path],
    shards: list[dict[str, Any]],
    blocks: list[tuple],
    n: int,
    chunk_size: int,
    count: int,
    allow_missing: bool,
) -> None:
    """No row twice; every row once unless ``allow_missing``: each named with its files."""
    holders = np.full(n, -1, dtype=np.int32)  # which shard holds each row (−1: none)
    for first_row, which, _chunk, start, stop in blocks:
        rows = slice(first_row, first_row + stop - start)
        taken = holders[rows]
        if bool((taken >= 0).any()):
            row = first_row + int(np.flatnonzero(taken >= 0)[0])
            other = int(taken[taken >= 0][0])
            raise StoreError(
                f"row {row} is held by both '{paths[other]}' and '{paths[which]}' "
                f"(shards {shards[other]['shard']['index']} and "
                f"{shards[which]['shard']['index']} of {count}); give each shard's store once"
            )
        holders[rows] = which
    missing = np.flatnonzero(holders < 0)
    if len(missing) == 0 or allow_missing:
        return
    chunk = int(missing[0]) // chunk_size
    shard = shard_of_chunk(chunk, count)
    given = [p for p, f in zip(paths, shards, strict=True) if f["shard"]["index"] == shard]
    if given:
        why = (
            f"'{given[0]}' (shard {shard} of {count}) lacks them: its run stopped before the "
            f"end; rerun it with the same arguments to finish it"
        )
    else:
        why = f"shard {shard} of {count} was not given"
    absent = sorted({int(f["shard"]["index"]) for f in shards} ^ set(range(count)))
    raise StoreError(
        f"{len(missing)} of {n} rows are in none of the shards, first row {int(missing[0])} "
        f"(chunk {chunk}): {why}"
        + (f" (shards not given: {absent})" if absent else "")
        + "; or pass allow_missing=True to merge what there is (simfer.simulate on the merged "
        "store then simulates the missing rows)"
    )
