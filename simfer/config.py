"""The TOML file that drives the ``simfer`` command: reading, checking and resolving it.

One file describes the whole journey; each section is one stage or one ingredient::

    out = "runs/board"          # the output folder (relative to this file)
    seed = 0                    # every stage's seed unless the stage sets its own
    device = "cpu"

    [simulator]                 # target = "module:attr", the rest are its options
    target = "simulators:GaltonBoard"
    n_rows = 16

    [prior]                     # low/high (a box) or target = "module:attr"
    low = [-1.0]
    high = [1.0]

    [simulate]  [train]  [posterior]  [diagnose]  [design]

`load_config` reads the file with `tomllib`, checks every key it knows (its type, its
range, that files named as inputs exist) and returns a `Config`, which builds the
simulator, the prior and the estimator on demand.  Every problem is a `ConfigError`
whose message is one line naming the file, the section and key, and what is wrong; an
unknown key comes with the nearest valid key.

Paths: files the user provides (a simulator's or prior's ``.py`` file, ``x_obs``, training
data) are relative to the config file's folder; files simfer writes (the store, the model,
the samples) are relative to the output folder.  The full reference is docs/cli.md.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SimferError

__all__ = [
    "ESTIMATORS",
    "SCHEMA",
    "STAGES",
    "Config",
    "ConfigError",
    "MissingFileError",
    "load_config",
    "resolve_target",
]

#: The stages a config can describe, in the order `simfer run` runs them.
STAGES: tuple[str, ...] = ("simulate", "train", "posterior", "diagnose", "design")

#: ``[train] estimator`` → the class (by name in `simfer`).
ESTIMATORS: dict[str, str] = {
    "ratio": "RatioEstimator",
    "score": "ScoreEstimator",
    "posterior": "PosteriorEstimator",
    "likelihood": "LikelihoodEstimator",
}


class ConfigError(SimferError, ValueError):
    """A config file is unreadable, or one of its keys is unknown, of the wrong type or
    names something that does not exist."""


class MissingFileError(SimferError, FileNotFoundError):
    """A file the command was pointed at does not exist."""


# -- the schema ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    """A TOML value type: a name for messages and a test."""

    name: str
    test: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_numbers(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(_is_number(e) for e in v)


INT = Kind("an integer", _is_int)
FLOAT = Kind("a number", _is_number)
BOOL = Kind("true or false", lambda v: isinstance(v, bool))
STR = Kind("a string", lambda v: isinstance(v, str))
NUMBERS = Kind("a list of numbers", _is_numbers)
STRINGS = Kind(
    "a list of strings", lambda v: isinstance(v, list) and all(isinstance(e, str) for e in v)
)
ROWS = Kind(
    "a list of numbers or a list of lists of numbers",
    lambda v: _is_numbers(v) or (isinstance(v, list) and len(v) > 0 and all(map(_is_numbers, v))),
)
DESIGN = Kind(
    "a list of numbers (one design) or a table with low and high (designs drawn uniformly)",
    lambda v: _is_numbers(v) or isinstance(v, dict),
)


@dataclass(frozen=True)
class Key:
    """One key of a section: its kind, whether it must be given, and a check of its value
    returning what is wrong (or None)."""

    kind: Kind
    required: bool = False
    check: Callable[[Any], str | None] | None = None


def _positive(v: Any) -> str | None:
    return None if v > 0 else f"must be positive, got {v}"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else f"must be 0 or more, got {v}"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v in choices:
            return None
        close = difflib.get_close_matches(str(v), choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown value '{v}'{hint}; choose one of {', '.join(choices)}"

    return check


def _each_one_of(*choices: str) -> Callable[[Any], str | None]:
    one = _one_of(*choices)
    return lambda values: next((m for m in map(one, values) if m), None)


def _fraction(v: Any) -> str | None:
    return None if 0 < v < 1 else f"must lie strictly between 0 and 1, got {v}"


_SAMPLER = {
    "method": Key(STR, check=_one_of("direct", "slice", "nuts", "hmc", "rejection")),
    "n_chains": Key(INT, check=_positive),
    "warmup": Key(INT, check=_non_negative),
    "thin": Key(INT, check=_positive),
    "max_seconds": Key(FLOAT, check=_positive),
    "seed": Key(INT),
    "design": Key(NUMBERS),
}

#: Every section's known keys.  ``[simulator]``, ``[prior]`` (with a target) and ``[train]``
#: take further keys: the options of their target or estimator, checked against its signature.
SCHEMA: dict[str, dict[str, Key]] = {
    "": {
        "out": Key(STR),
        "seed": Key(INT),
        "device": Key(STR),
    },
    "simulator": {"target": Key(STR, required=True)},
    "prior": {"target": Key(STR), "low": Key(NUMBERS), "high": Key(NUMBERS)},
    "simulate": {
        "n": Key(INT, check=_positive),
        "theta": Key(STR),
        "gold": Key(BOOL),
        "theta_ref": Key(NUMBERS),
        "reference_fraction": Key(FLOAT, check=_fraction),
        "design": Key(DESIGN),
        "path": Key(STR),
        "workers": Key(INT, check=_non_negative),
        "chunk_size": Key(INT, check=_positive),
        "compression": Key(STR, check=_one_of("gzip", "lzf")),
        "device": Key(STR),
        "seed": Key(INT),
    },
    "train": {
        "estimator": Key(STR, required=True, check=_one_of(*ESTIMATORS)),
        "method": Key(STR),
        "out": Key(STR),
        "data": Key(STR),
        "embedding": Key(STR),
        "seed": Key(INT),
    },
    "posterior": {
        "x_obs": Key(STR, required=True),
        "samples": Key(INT, check=_positive),
        "out": Key(STR),
        "theta_true": Key(NUMBERS),
        **_SAMPLER,
    },
    "diagnose": {
        "n": Key(INT, check=lambda v: None if v >= 10 else f"must be at least 10, got {v}"),
        "samples": Key(INT, check=_positive),
        "checks": Key(STRINGS, check=_each_one_of("sbc", "coverage", "tarp")),
        **{k: v for k, v in _SAMPLER.items() if k not in ("method", "n_chains")},
    },
    "design": {
        "source": Key(STR, check=_one_of("simulator", "model")),
        "method": Key(STR),
        "designs": Key(ROWS),
        "low": Key(NUMBERS),
        "high": Key(NUMBERS),
        "n_grid": Key(INT, check=lambda v: None if v >= 2 else f"must be at least 2, got {v}"),
        "search": Key(BOOL),
        "n_zoom": Key(INT, check=_non_negative),
        "shrink": Key(FLOAT, check=_fraction),
        "n_outer": Key(INT, check=lambda v: None if v >= 2 else f"must be at least 2, got {v}"),
        "n_inner": Key(INT, check=_positive),
        "seed": Key(INT),
    },
}

#: Sections whose keys beyond the schema are options passed on (checked later).
_OPEN_SECTIONS = ("simulator", "prior", "train")

#: The defaults a stage uses for keys left out (documented in docs/cli.md).
DEFAULTS: dict[str, dict[str, Any]] = {
    "simulate": {
        "gold": False,
        "path": "simulate/simulations.h5",
        "reference_fraction": 0.5,
        "device": "cpu",
    },
    "train": {"out": "train/model.pt"},
    "posterior": {"samples": 1000, "out": "posterior/samples.npz"},
    "diagnose": {"n": 200, "samples": 100, "checks": ["sbc", "coverage", "tarp"]},
    "design": {"n_outer": 1000, "n_inner": 1000, "n_grid": 21, "search": False},
}


# -- resolving "module:attr" ---------------------------------------------------------------------
def resolve_target(target: str, folder: Path) -> tuple[Any, Path | None]:
    """The object ``target`` = ``"module:attr"`` names, and the ``.py`` file it came from.

    ``module`` is a file relative to ``folder`` (``"mysim.py"``, ``"models/board.py"``, or
    ``"mysim"`` when ``folder/mysim.py`` exists), else an importable module (``"simulators"``).
    A file is executed afresh on every call and registered for pickling by value, so worker
    processes need not be able to import it.  Raises `ValueError` saying what is wrong."""
    if target.count(":") != 1 or not all(target.split(":")):
        raise ValueError(
            f"'{target}' is not of the form 'module:attr' (e.g. 'simulators:GaltonBoard' or "
            f"'mysim.py:make_simulator')"
        )
    module_name, attr = target.split(":")
    file = None
    if module_name.endswith(".py") or "/" in module_name:
        file = folder / module_name
        if not file.is_file():
            raise ValueError(f"no such file '{file}'")
    elif (folder / (module_name.replace(".", "/") + ".py")).is_file():
        file = folder / (module_name.replace(".", "/") + ".py")
    module = _load_file(file) if file is not None else _import(module_name, folder)
    value: Any = module
    for part in attr.split("."):
        if not hasattr(value, part):
            names = [n for n in dir(value) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"'{module_name}' has no attribute '{part}'{hint}")
        value = getattr(value, part)
    return value, file


def _import(module_name: str, folder: Path) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            raise ValueError(
                f"unknown module '{module_name}': no file {module_name}.py in '{folder}' and "
                f"no installed module of that name"
            ) from None
        raise ValueError(f"importing '{module_name}' failed: {error}") from None
    except Exception as error:
        raise ValueError(f"importing '{module_name}' raised {_one_line(error)}") from None


def _load_file(file: Path) -> Any:
    import cloudpickle

    name = file.stem
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        if previous is None:
            del sys.modules[name]
        else:
            sys.modules[name] = previous
        raise ValueError(f"running '{file}' raised {_one_line(error)}") from None
    cloudpickle.register_pickle_by_value(module)
    return module


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def check_options(function: Callable, options: dict[str, Any]) -> tuple[str, str] | None:
    """``(key, message)`` for the first option ``function`` cannot take (with the nearest
    name it can), or a required argument left out; None when the call fits."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        return None
    parameters = [
        p
        for p in signature.parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY)
    ]
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    names = [p.name for p in parameters]
    for key in options:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            valid = ", ".join(names) if names else "none"
            return key, f"unknown key{hint} (valid: {valid})"
    for p in parameters:
        if p.default is p.empty and p.name not in options:
            return p.name, "missing: the target needs this option"
    return None


# -- the config ----------------------------------------------------------------------------------
@dataclass
class Config:
    """A checked config file.

    Attributes:
        path: the file.
        folder: its folder (inputs are relative to it).
        out: the output folder (``--out``, else the file's ``out``, else ``<stem>-output``
            beside the file).
        seed: the seed of every stage that sets none (``--seed`` overrides them all).
        device: where training, sampling and the EIG compute (``--device``, else the
            file's, else ``"cpu"``); simulators run where ``[simulate] device`` says (the
            CPU by default: most simulators are CPU code).
        sections: the file's tables as written, by name (``""`` holds the top-level keys).
    """

    path: Path
    folder: Path
    out: Path
    seed: int
    device: str
    sections: dict[str, dict[str, Any]]
    seed_override: bool = False
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- errors and lookups --
    def error(self, section: str, key: str | None, message: str) -> ConfigError:
        """A `ConfigError` naming this file, ``[section] key`` and ``message``."""
        where = f"[{section}]" if section else "top level"
        if key:
            where += f" {key}"
        return ConfigError(f"{self.path}: {where}: {message}")

    def has(self, section: str) -> bool:
        return section in self.sections

    def get(self, section: str, key: str, default: Any = None) -> Any:
        """``[section] key`` as written, else the stage default, else ``default``."""
        value = self.sections.get(section, {}).get(key)
        if value is None:
            value = DEFAULTS.get(section, {}).get(key, default)
        return value

    def stages(self) -> list[str]:
        """The stages this file describes, in run order."""
        return [s for s in STAGES if s in self.sections]

    def stage_seed(self, stage: str) -> int:
        """``--seed`` if given, else the stage's ``seed``, else the file's."""
        if self.seed_override:
            return self.seed
        return int(self.sections.get(stage, {}).get("seed", self.seed))

    def input_file(self, section: str, key: str, value: str | None = None) -> Path:
        """``[section] key`` as a file the user provides (relative to the config's folder);
        a `ConfigError` when it does not exist."""
        value = self.get(section, key) if value is None else value
        path = Path(value).expanduser()
        path = path if path.is_absolute() else self.folder / path
        if not path.is_file():
            raise self.error(section, key, f"no such file '{path}'")
        return path

    def output_file(self, section: str, key: str) -> Path:
        """``[section] key`` as a file simfer writes (relative to the output folder)."""
        path = Path(self.get(section, key)).expanduser()
        return path if path.is_absolute() else self.out / path

    def stage_folder(self, stage: str) -> Path:
        """Where a stage writes its plots and summary: ``out/<stage>``."""
        return self.out / stage

    def store_path(self, shard: tuple[int, int] | None = None) -> Path:
        """The simulate stage's store; shard i of N gets its own beside it
        (``simulations.shard0-of-4.h5``)."""
        path = self.output_file("simulate", "path")
        if shard is None:
            return path
        i, n = shard
        return path.with_name(f"{path.stem}.shard{i}-of-{n}{path.suffix}")

    def training_data(self) -> Path:
        """The training data: ``[train] data`` (relative to the config's folder), else the
        simulate stage's store."""
        if self.get("train", "data") is not None:
            return self.input_file("train", "data")
        if not self.has("simulate"):
            raise self.error(
                "train", "data", "missing: give a data file, or a [simulate] section to make one"
            )
        return self.store_path()

    def model_path(self) -> Path:
        if not self.has("train"):
            raise self.error("train", None, "missing: this stage needs the model [train] makes")
        return self.output_file("train", "out")

    def digest(self, *sections: str, **extra: Any) -> str:
        """A hash of the named sections as written (and ``extra``): what a stage's output
        depends on in the file."""
        content = {name: self.sections.get(name) for name in sections}
        text = json.dumps({"sections": content, **extra}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    # -- building what the file describes --
    def target(self, section: str) -> tuple[Any, Path | None]:
        """``[section] target`` resolved (cached per section)."""
        key = f"target:{section}"
        if key not in self._cache:
            try:
                self._cache[key] = resolve_target(self.sections[section]["target"], self.folder)
            except ValueError as error:
                raise self.error(section, "target", str(error)) from None
        return self._cache[key]

    def check_options(self, section: str) -> None:
        """Resolve ``[section] target`` and check the section's other keys against what it
        takes, without calling it."""
        value, _ = self.target(section)
        options = [k for k in self.sections[section] if k != "target"]
        if isinstance(value, type) or inspect.isroutine(value):
            problem = check_options(value, dict.fromkeys(options))
            if problem is not None:
                raise self.error(section, *problem)

    def code_files(self, *parts: str) -> list[Path]:
        """The user's ``.py`` files behind ``parts`` (of ``"simulator"``, ``"prior"``,
        ``"embedding"``; default all three), without duplicates: inputs of the stages that
        run that code."""
        parts = parts or ("simulator", "prior", "embedding")
        files = []
        if "simulator" in parts:
            files.append(self.target("simulator")[1])
        if "prior" in parts and self.has("prior") and "target" in self.sections["prior"]:
            files.append(self.target("prior")[1])
        if "embedding" in parts and "embedding" in self.sections.get("train", {}):
            files.append(self.embedding_target()[1])
        return list(dict.fromkeys(f for f in files if f is not None))

    def simulator(self) -> Any:
        """The `simfer.Simulator` of ``[simulator]``: the target itself, or the target called
        with the section's other keys."""
        if "simulator" in self._cache:
            return self._cache["simulator"]
        from .simulator import Simulator

        value, _ = self.target("simulator")
        options = {k: v for k, v in self.sections["simulator"].items() if k != "target"}
        simulator = self._call(value, options, "simulator", Simulator, "a simfer.Simulator")
        self._cache["simulator"] = simulator
        return simulator

    def prior(self) -> Any:
        """The prior: a box from ``[prior] low/high``, the distribution ``[prior] target``
        names (or returns), or the simulator's own ``prior()``."""
        if "prior" in self._cache:
            return self._cache["prior"]
        from torch.distributions import Distribution

        from .errors import ShapeError
        from .prior import BoxUniform, as_prior

        simulator = self.simulator()
        section = self.sections.get("prior")
        if section is None:
            if not callable(getattr(simulator, "prior", None)):
                raise self.error(
                    "prior",
                    None,
                    f"missing: the simulator {simulator.name} has no prior(); add a [prior] "
                    f"section with low and high, or a target",
                )
            prior, key = simulator.prior(), None
        elif "target" in section:
            value, _ = self.target("prior")
            options = {k: v for k, v in section.items() if k != "target"}
            prior = self._call(value, options, "prior", Distribution, "a torch distribution")
            key = "target"
        else:
            prior, key = BoxUniform(section["low"], section["high"]), "low"
        try:
            prior = as_prior(prior, simulator.theta_dim)
        except (ShapeError, TypeError) as error:
            raise self.error("prior", key, str(error)) from None
        self._cache["prior"] = prior
        return prior

    def _call(self, value: Any, options: dict, section: str, kind: type, what: str) -> Any:
        """``value`` if it is a ``kind`` (then no options), else ``value(**options)``."""
        target = self.sections[section]["target"]
        if isinstance(value, kind):
            if options:
                raise self.error(
                    section,
                    next(iter(options)),
                    f"'{target}' is already {what}, so it takes no options",
                )
            return value
        if not callable(value):
            raise self.error(
                section, "target", f"'{target}' is a {type(value).__name__}, not {what}"
            )
        problem = check_options(value, options)
        if problem is not None:
            raise self.error(section, *problem)
        try:
            result = value(**options)
        except Exception as error:
            raise self.error(
                section, "target", f"{target}(...) raised {_one_line(error)}"
            ) from None
        if not isinstance(result, kind):
            raise self.error(
                section,
                "target",
                f"{target}(...) returned a {type(result).__name__}, not {what}",
            )
        return result

    def estimator_class(self) -> type:
        import simfer

        return getattr(simfer, ESTIMATORS[self.sections["train"]["estimator"]])

    def embedding_target(self) -> tuple[Any, Path | None]:
        key = "target:embedding"
        if key not in self._cache:
            try:
                self._cache[key] = resolve_target(self.sections["train"]["embedding"], self.folder)
            except ValueError as error:
                raise self.error("train", "embedding", str(error)) from None
        return self._cache[key]

    def embedding(self) -> Any:
        """A fresh embedding network from ``[train] embedding`` (a module or a factory), or
        None."""
        if "embedding" not in self.sections.get("train", {}):
            return None
        from torch import nn

        value, _ = self.embedding_target()
        if isinstance(value, nn.Module):
            return value
        if isinstance(value, type) or callable(value):
            try:
                module = value()
            except Exception as error:
                message = f"calling it raised {_one_line(error)}"
                raise self.error("train", "embedding", message) from None
            if isinstance(module, nn.Module):
                return module
        raise self.error(
            "train", "embedding", "must name a torch.nn.Module or a function returning one"
        )

    def estimator_settings(self) -> dict[str, Any]:
        """``[train]``'s keys for the estimator's constructor (everything but estimator,
        out, data, seed, embedding), checked against its signature."""
        cls = self.estimator_class()
        section = self.sections["train"]
        own = {k: v for k, v in section.items() if k not in SCHEMA["train"] or k == "method"}
        signature = inspect.signature(cls)
        parameters = {
            name: p for name, p in signature.parameters.items() if name not in _NOT_IN_FILE
        }
        if cls.__name__ == "PosteriorEstimator" and "method" in own:
            if own.pop("method") != "npe":
                raise self.error(
                    "train",
                    "method",
                    "the posterior estimator has one method, 'npe'; choose its flow with flow",
                )
        for key, value in own.items():
            if key in _NOT_IN_FILE:
                raise self.error("train", key, _NOT_IN_FILE[key])
            if key not in parameters:
                close = difflib.get_close_matches(key, list(parameters), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise self.error(
                    "train",
                    key,
                    f"unknown key{hint} ({cls.__name__} takes {', '.join(parameters)})",
                )
            expected = _annotation_kinds(parameters[key].annotation)
            if expected and not any(kind.test(value) for kind in expected):
                names = " or ".join(kind.name for kind in expected)
                raise self.error("train", key, f"must be {names}, got {_describe(value)}")
        if "checkpoint" in own:
            own["checkpoint"] = str(self.output_file("train", "checkpoint"))
        return own


#: Estimator arguments a config does not set directly, and where they come from instead.
_NOT_IN_FILE = {
    "device": "set the device at the top of the file or with --device",
    "seed": "is a key of [train] itself",
    "embedding": "is a key of [train] itself",
}

_ANNOTATION_KINDS = {
    "int": [INT],
    "float": [FLOAT],
    "bool": [BOOL],
    "str": [STR],
    "dict": [Kind("a table", lambda v: isinstance(v, dict))],
    "None": [],
    "Sequence[int]": [
        Kind("a list of integers", lambda v: isinstance(v, list) and all(map(_is_int, v)))
    ],
    "Sequence[float]": [NUMBERS],
}


def _annotation_kinds(annotation: Any) -> list[Kind]:
    """The TOML kinds an annotation such as ``"int | Sequence[int]"`` allows; [] when some
    part is not a plain type (the constructor then checks the value itself)."""
    if not isinstance(annotation, str):
        annotation = getattr(annotation, "__name__", None)
        if annotation is None:
            return []
    kinds: list[Kind] = []
    for part in annotation.split("|"):
        part = part.strip()
        if part not in _ANNOTATION_KINDS:
            return []
        kinds.extend(_ANNOTATION_KINDS[part])
    return kinds


def _describe(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    name = names.get(type(value), "a list" if isinstance(value, list) else "a table")
    return f"{name} ({json.dumps(value, default=str)})"


# -- loading ---------------------------------------------------------------------------------------
def load_config(
    path: str | Path,
    *,
    out: str | Path | None = None,
    seed: int | None = None,
    device: str | None = None,
) -> Config:
    """Read and check the config file ``path``; ``out``, ``seed`` and ``device`` override
    the file's (``out`` relative to the working directory).  Raises `ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no such file '{path}'")
    try:
        with path.open("rb") as file:
            raw = tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (TOML must be UTF-8)") from None
    sections: dict[str, dict[str, Any]] = {"": {}}
    for key, value in raw.items():
        if isinstance(value, dict):
            sections[key] = value
        else:
            sections[""][key] = value
    folder = path.resolve().parent
    config = Config(path, folder, Path(), 0, "cpu", sections)
    _check(config)
    top = sections[""]
    if out is not None:
        config.out = Path(out)
    elif "out" in top:
        config.out = Path(top["out"]).expanduser()
        config.out = config.out if config.out.is_absolute() else folder / config.out
    else:
        config.out = folder / f"{path.stem}-output"
    config.seed = int(seed if seed is not None else top.get("seed", 0))
    config.seed_override = seed is not None
    config.device = str(device if device is not None else top.get("device", "cpu"))
    return config


def _check_box(config: Config, low: list, high: list) -> None:
    """``[prior] low/high``: one length, and high above low in every dimension."""
    if len(low) != len(high):
        raise config.error("prior", "high", f"has {len(high)} values but low has {len(low)}")
    reversed_ = [i for i, (a, b) in enumerate(zip(low, high, strict=True)) if b <= a]
    if reversed_:
        i = reversed_[0]
        raise config.error(
            "prior",
            "high",
            f"must exceed low in every dimension; in dimension {i} low = {low[i]} and "
            f"high = {high[i]} (bounds reversed?)",
        )


def _check(config: Config) -> None:
    """Every section and key the schema knows: names, kinds, ranges, input files."""
    for name, section in config.sections.items():
        if name not in SCHEMA:
            known = [s for s in SCHEMA if s]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean [{close[0]}]?" if close else ""
            raise config.error(name, None, f"unknown section{hint} (valid: {', '.join(known)})")
        schema = SCHEMA[name]
        for key, value in section.items():
            if key not in schema:
                if name in _OPEN_SECTIONS:
                    continue  # options of a target or an estimator: checked when resolved
                close = difflib.get_close_matches(key, list(schema), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise config.error(name, key, f"unknown key{hint} (valid: {', '.join(schema)})")
            spec = schema[key]
            if not spec.kind.test(value):
                raise config.error(name, key, f"must be {spec.kind.name}, got {_describe(value)}")
            problem = spec.check(value) if spec.check else None
            if problem:
                raise config.error(name, key, problem)
        for key, spec in schema.items():
            if spec.required and key not in section:
                raise config.error(name, key, "missing: this key is required")
    if "simulator" not in config.sections:
        raise config.error("simulator", None, "missing: every config needs a [simulator] target")
    prior = config.sections.get("prior")
    if prior is not None:
        if "target" in prior and ({"low", "high"} & prior.keys()):
            raise config.error("prior", "target", "give either target or low/high, not both")
        if "target" not in prior:
            extra = sorted(prior.keys() - {"low", "high"})
            if extra:
                close = difflib.get_close_matches(extra[0], ["low", "high", "target"], n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise config.error(
                    "prior", extra[0], f"unknown key{hint} (valid: low, high, target)"
                )
            for key in ("low", "high"):
                if key not in prior:
                    raise config.error("prior", key, "missing: a box prior needs low and high")
            _check_box(config, prior["low"], prior["high"])
    design = config.sections.get("simulate", {}).get("design")
    if isinstance(design, dict):
        for key in design:
            if key not in ("low", "high"):
                raise config.error("simulate", f"design.{key}", "unknown key (valid: low, high)")
        for key in ("low", "high"):
            if not _is_numbers(design.get(key)):
                raise config.error("simulate", f"design.{key}", "must be a list of numbers")
    section = config.sections.get("design")
    if section is not None:
        if "designs" in section and ("low" in section or "high" in section):
            raise config.error("design", "designs", "give either designs or low/high, not both")
        if "designs" not in section and not ("low" in section and "high" in section):
            raise config.error(
                "design", "designs", "missing: give candidate designs, or low and high for a grid"
            )
        if section.get("search") and "designs" in section:
            raise config.error("design", "search", "search needs low and high, not designs")
        if "low" in section:
            low, high = section["low"], section["high"]
            if len(low) != len(high) or any(b <= a for a, b in zip(low, high, strict=False)):
                raise config.error(
                    "design", "high", f"must exceed low in every dimension, got {low} and {high}"
                )
    simulate = config.sections.get("simulate")
    if simulate is not None and "n" not in simulate and "theta" not in simulate:
        raise config.error("simulate", "n", "missing: give n, or theta (a .npy file of points)")
    if simulate is not None and "theta" in simulate:
        config.input_file("simulate", "theta")
    if "posterior" in config.sections:
        config.input_file("posterior", "x_obs")
    if "train" in config.sections and "data" in config.sections["train"]:
        config.input_file("train", "data")
    # the targets and options are resolved now, so that a typo fails before hours of work
    config.check_options("simulator")
    if prior is not None and "target" in prior:
        config.check_options("prior")
    if "train" in config.sections:
        config.estimator_settings()
        if "embedding" in config.sections["train"]:
            config.embedding_target()
