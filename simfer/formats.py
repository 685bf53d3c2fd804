"""Reading tables of simulations that simfer did not write: the user's own (θ, x).

`simfer.load_simulations` hands every file that is not a simfer store to `read_foreign`.
Four layouts are understood, all naming their arrays by the `SimulationData` fields
(``theta``, ``x``, ``design``, ``theta_ref``, ``from_reference``, ``joint_log_ratio``,
``joint_score``, ``joint_score_ref``, ``valid``):

* an ``.npz`` file (``numpy.savez``) whose keys are field names;
* a folder of ``.npy`` files named ``<field>.npy``, or a mapping ``{field: path}`` of
  ``.npy`` files anywhere (a pair ``{"theta": ..., "x": ...}`` is the smallest);
* a plain HDF5 file with one dataset per field at its root;
* MadMiner's training samples (written by ``SampleAugmenter.sample_train_plain``,
  ``_local``, ``_density``, ``_ratio``, ``_more_ratios`` and ``sample_test`` as
  ``<quantity>_<name>.npy`` in one folder), renamed as in `MADMINER_FIELDS`.

Set-valued x is stored as the store stores it: ``x.values`` ``[total_elements,
features]`` and ``x.ends`` ``[n]`` (row i holds ``values[ends[i-1]:ends[i]]``).

Conventions for hand-made files: a 1-D ``theta`` (and ``joint_score``,
``joint_score_ref``) is one parameter, read as ``[n, 1]``; a 1-D ``x`` is read as
``[n, 1]``; ``theta_ref`` may be one point ``[theta_dim]`` for every row; ``[n, 1]``
columns that are ``[n]`` per row (``joint_log_ratio``, the flags) are flattened; flags
given as 0/1 numbers become bool.  Unless the file has a ``valid`` column, a row is
valid when its x is finite and its gold holds no NaN (±inf log ratios are legitimate).
Floating columns are read in torch's default dtype (float32, what simfer's networks train
in; numpy writes float64 by default) unless another ``dtype`` is asked for.  Files are
read with ``allow_pickle=False``: loading never runs code from a file.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import torch

from .data import COLUMNS, RaggedSets, SimulationData
from .errors import ShapeError, StoreError

__all__ = ["read_foreign", "MADMINER_FIELDS"]

#: MadMiner's quantity names and the `SimulationData` fields they become.  MadMiner's
#: ``r_xz`` is r(x,z|θ0,θ1) = p(x,z|θ0)/p(x,z|θ1), stored here as its log; its ``y`` is 1
#: where x was drawn at θ1; ``t_xz``/``t_xz0`` is the joint score at θ0, ``t_xz1`` at θ1.
MADMINER_FIELDS = {
    "x": "x",
    "theta": "theta",
    "theta0": "theta",
    "theta1": "theta_ref",
    "y": "from_reference",
    "r_xz": "joint_log_ratio",
    "t_xz": "joint_score",
    "t_xz0": "joint_score",
    "t_xz1": "joint_score_ref",
}
# longest names first, so that "t_xz0_train" is t_xz0 of "train", not t_xz of "0_train"
_MADMINER_FILE = re.compile(
    r"^(" + "|".join(sorted(MADMINER_FIELDS, key=len, reverse=True)) + r")_(.+)\.npy$"
)
_SETS = ("x.values", "x.ends")
_KEYS = (*COLUMNS, *_SETS)


def read_foreign(
    source: Path | Mapping, file: h5py.File | None = None, dtype: torch.dtype | None = None
) -> SimulationData:
    """The table in ``source``: a mapping ``{field: .npy path}``, a folder, an .npz or .npy
    file, or (with ``file`` open) a plain or MadMiner HDF5 file.  Floating columns are
    read in ``dtype`` (default: torch's default dtype, float32 unless changed)."""
    dtype = dtype or torch.get_default_dtype()
    if isinstance(source, Mapping):
        arrays = {str(k): _load_npy(Path(v)) for k, v in source.items()}
        return _table(arrays, f"the files {', '.join(map(str, source.values()))}", dtype)
    if file is not None:
        return _read_hdf5(file, source, dtype)
    if source.is_dir():
        return _read_folder(source, dtype)
    if source.suffix == ".npz":
        return _read_npz(source, dtype)
    match = _MADMINER_FILE.match(source.name)
    if match:
        return _read_madminer(source.parent, match.group(2), dtype)
    raise StoreError(
        f"'{source}' is a single .npy file, which holds one array; simulations need θ and x. "
        f"Give a folder holding theta.npy and x.npy (and gold by field name), a mapping "
        f"{{'theta': path, 'x': path}}, an .npz file, or one of MadMiner's sample files "
        f"(x_<name>.npy …)"
    )


def _load_npy(path: Path) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"no .npy file at '{path}'")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:  # object arrays, or not a .npy file at all
        raise StoreError(f"'{path}' is not a numeric .npy array ({error})") from error


def _read_npz(path: Path, dtype: torch.dtype) -> SimulationData:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError) as error:
        raise StoreError(f"'{path}' is not a readable numeric .npz file ({error})") from error
    return _table(arrays, f"'{path}'", dtype)


def _read_folder(folder: Path, dtype: torch.dtype) -> SimulationData:
    files = sorted(p.name for p in folder.glob("*.npy"))
    if "theta.npy" in files or "x.npy" in files:
        arrays = {name[: -len(".npy")]: _load_npy(folder / name) for name in files}
        return _table(arrays, f"the folder '{folder}'", dtype)
    samples = sorted({m.group(2) for m in map(_MADMINER_FILE.match, files) if m})
    if len(samples) == 1:
        return _read_madminer(folder, samples[0], dtype)
    if samples:
        raise StoreError(
            f"the folder '{folder}' holds {len(samples)} MadMiner samples ({', '.join(samples)}); "
            f"load one by one of its files, e.g. '{folder / f'x_{samples[0]}.npy'}'"
        )
    raise StoreError(
        f"the folder '{folder}' holds no theta.npy and x.npy, nor MadMiner samples "
        f"(x_<name>.npy …); its .npy files: {files or 'none'}"
    )


def _read_madminer(folder: Path, name: str, dtype: torch.dtype) -> SimulationData:
    """The MadMiner sample ``name`` in ``folder``: ``<quantity>_<name>.npy`` files."""
    arrays: dict[str, np.ndarray] = {}
    found: dict[str, str] = {}
    for quantity, field in MADMINER_FIELDS.items():
        path = folder / f"{quantity}_{name}.npy"
        if not path.exists():
            continue
        if field in arrays:
            raise StoreError(
                f"'{path}' and '{folder / found[field]}' both give '{field}'; a MadMiner "
                f"sample has one of them"
            )
        array = _load_npy(path)
        if quantity == "r_xz":
            with np.errstate(divide="ignore", invalid="ignore"):
                array = np.log(array)  # r = 0 gives −inf (legitimate), r < 0 gives NaN (invalid)
        arrays[field], found[field] = array, path.name
    if "x" not in arrays or "theta" not in arrays:
        lacking = "x" if "x" not in arrays else "theta (or theta0)"
        raise StoreError(
            f"the MadMiner sample '{name}' in '{folder}' has no {lacking}_{name}.npy (it holds: "
            f"{', '.join(sorted(found.values()))})"
        )
    return _table(arrays, f"the MadMiner sample '{name}' in '{folder}'", dtype)


def _read_hdf5(file: h5py.File, path: Path, dtype: torch.dtype) -> SimulationData:
    keys = sorted(file.keys())
    if "samples" in file and "benchmarks" in file:
        raise StoreError(
            f"'{path}' is a MadMiner event file: weighted events at benchmark points "
            f"(samples/observations, samples/weights), not (θ, x) samples. Unweight it with "
            f"MadMiner's SampleAugmenter (sample_train_plain, _local, _ratio or _more_ratios, "
            f"with folder= and filename=) and load the folder of .npy samples it writes"
        )
    if "theta" not in file or "x" not in file and "x.values" not in file:
        missing = "theta" if "theta" not in file else "x"
        raise StoreError(
            f"'{path}' is not a simfer simulation store, and as a plain HDF5 file it lacks the "
            f"dataset '{missing}' (it holds: {', '.join(keys) or 'nothing'}); a plain file "
            f"needs datasets 'theta' [n, theta_dim] and 'x' [n, ...] at its root"
        )
    arrays = {}
    for key in keys:
        if not isinstance(file[key], h5py.Dataset):
            raise StoreError(
                f"'{path}' holds a group '{key}'; a plain HDF5 file of simulations holds one "
                f"dataset per SimulationData field at its root ({', '.join(COLUMNS)})"
            )
        arrays[key] = file[key][()]
    return _table(arrays, f"'{path}'", dtype)


def _table(arrays: dict[str, np.ndarray], where: str, dtype: torch.dtype) -> SimulationData:
    """`SimulationData` from arrays named by field, with the file's conventions applied and
    floating columns in ``dtype``."""
    held = ", ".join(sorted(arrays)) or "nothing"
    has_sets = any(k in arrays for k in _SETS)
    for key in ("theta", "x"):
        if key not in arrays and not (key == "x" and has_sets):
            raise StoreError(
                f"{where} has no '{key}' (it holds: {held}); simulations need 'theta' "
                f"[n, theta_dim] and 'x' [n, ...]"
            )
    for key in arrays:
        if key not in _KEYS:
            near = difflib.get_close_matches(key, _KEYS, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise StoreError(
                f"{where}: '{key}' is not a SimulationData field{hint}; the fields are "
                f"{', '.join(COLUMNS)} (it holds: {held})"
            )
    try:
        columns = {k: _as_tensor(k, v, dtype) for k, v in arrays.items() if k not in _SETS}
        if has_sets:
            columns["x"] = _sets(arrays, dtype)
        data = SimulationData(**_conventions(columns))
    except ShapeError as error:
        raise StoreError(f"{where}: {error}") from error
    if "valid" in arrays:
        return data
    return replace(data, valid=data.valid & _gold_has_no_nan(data))


def _as_tensor(key: str, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise ShapeError(f"'{key}' holds {array.dtype} values, not numbers")
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def _sets(arrays: dict[str, np.ndarray], dtype: torch.dtype) -> RaggedSets:
    if "x" in arrays or not all(k in arrays for k in _SETS):
        raise ShapeError(
            "set-valued x is the pair 'x.values' [total_elements, features] and 'x.ends' [n] "
            "(and no 'x')"
        )
    ends = _as_tensor("x.ends", arrays["x.ends"], dtype)
    if ends.is_floating_point():
        raise ShapeError("'x.ends' must hold integers (where each set's elements end)")
    offsets = torch.cat([ends.new_zeros(1), ends]).to(torch.int64)
    return RaggedSets(_as_tensor("x.values", arrays["x.values"], dtype), offsets)


def _conventions(columns: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """1-D θ and x as one column; one θ_ref for all rows; ``[n, 1]`` flags and log ratios
    flattened; 0/1 flags as bool."""
    if columns["theta"].ndim == 1:
        columns["theta"] = columns["theta"][:, None]
    n, theta_dim = columns["theta"].shape[0], columns["theta"].shape[-1]
    x = columns["x"]
    if isinstance(x, torch.Tensor) and x.ndim == 1:
        columns["x"] = x[:, None]
    for key in ("joint_score", "joint_score_ref"):
        if key in columns and columns[key].ndim == 1 and theta_dim == 1:
            columns[key] = columns[key][:, None]
    if "theta_ref" in columns:
        ref = columns["theta_ref"]
        if ref.ndim == 1 and ref.shape[0] == theta_dim:
            columns["theta_ref"] = ref.expand(n, theta_dim).clone()
        elif ref.ndim == 1 and theta_dim == 1:
            columns["theta_ref"] = ref[:, None]
    for key in ("joint_log_ratio", "from_reference", "valid"):
        if key in columns and columns[key].ndim == 2 and columns[key].shape[1] == 1:
            columns[key] = columns[key][:, 0]
    for key in ("from_reference", "valid"):
        flag = columns.get(key)
        if flag is not None and flag.dtype != torch.bool:
            if not bool(((flag == 0) | (flag == 1)).all()):
                raise ShapeError(f"'{key}' must be bool or 0/1, got other values")
            columns[key] = flag != 0
    return columns


def _gold_has_no_nan(data: SimulationData) -> torch.Tensor:
    """``[n]`` bool: rows whose gold columns hold no NaN."""
    ok = torch.ones(len(data), dtype=torch.bool)
    for gold in (data.joint_log_ratio, data.joint_score, data.joint_score_ref):
        if gold is not None:
            ok &= ~torch.isnan(gold.reshape(len(gold), -1)).any(1)
    return ok
