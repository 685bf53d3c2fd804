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
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from . import __version__
from .data import COLUMNS, RaggedSets, SimulationData
from .errors import StoreError

__all__ = ["SimulationStore", "load_simulations"]

FORMAT = "simfer-simulations"
FORMAT_VERSION = 1
VALUES, ENDS = ".values", ".ends"  # the two datasets of a set-valued column


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
    def open(cls, path: str | os.PathLike, fingerprint: dict[str, Any]) -> SimulationStore:
        """Open ``path`` for appending, creating it if absent.

        An existing store must have been made with the same ``fingerprint``
        (the same simulator, prior, settings, seed and chunk size); otherwise a
        `StoreError` says which entries differ.
        """
        path = Path(path)
        if not path.exists():
            cls._create(path, fingerprint)
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

    @staticmethod
    def read_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
        """The fingerprint of an existing store, without opening it for writing."""
        path = Path(path)
        with _open_h5(path, "r") as file:
            _check_format(file, path)
            return json.loads(file.attrs["fingerprint"])

    @staticmethod
    def _create(path: Path, fingerprint: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with h5py.File(tmp, "w") as file:
            file.attrs["format"] = FORMAT
            file.attrs["format_version"] = FORMAT_VERSION
            file.attrs["simfer_version"] = __version__
            file.attrs["fingerprint"] = json.dumps(fingerprint, sort_keys=True)
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


def load_simulations(path: str | os.PathLike) -> SimulationData:
    """Read the finished rows of a simulation store (it may be mid-run or killed)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no simulation store at '{path}'")
    with _open_h5(path, "r") as file:
        _check_format(file, path)
        return _read(file, path)
