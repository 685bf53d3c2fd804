r"""simfer's C2ST against the sbibm recipe in scikit-learn, on the same samples.

``simfer.diagnostics.c2st`` re-implements sbibm's classifier two-sample test in torch
(module docstring of simfer/diagnostics/c2st.py).  The reference implementation is
sbibm's ``c2st``: z-score both samples by the first one's mean and standard deviation,
then the mean 5-fold cross-validated accuracy (``KFold(shuffle=True)``) of scikit-learn's
``MLPClassifier(activation="relu", hidden_layer_sizes=(10 d, 10 d), max_iter=10000,
solver="adam")``.  This script runs both on the same pairs of samples whose Bayes-optimal
accuracy ½ + ½ TV(P, Q) is known in closed form:

* ``same``: P = Q = N(0, I_d): ½;
* ``shift δ``: N(0, I_d) against N(δ e₁, I_d): TV = 2Φ(δ/2) − 1;
* ``scale``: N(0, I_d) against N(0, 1.5² I_d) (no closed form for TV in d > 1; both
  implementations must agree).

Each case is drawn with ``--repeats`` seeds; each seed draws fresh samples and seeds both
classifiers.  Over the seeds we report the mean and standard deviation of each
implementation's accuracy, their mean paired difference and its standard error.  The two
agree "within fold noise" when the mean difference is within 3 standard errors of 0
(the paired differences are independent across seeds), or below 0.01 in absolute value.

    .venv/bin/python benchmarks/c2st_check.py               # d = 2 and 10, n = 1000, 5 seeds
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import JsonLines, run_header, run_meta, write_markdown  # noqa: E402
from simfer.diagnostics import c2st  # noqa: E402

NAME, HEADING = "c2st_check", "C2ST: simfer against scikit-learn (the sbibm recipe)"
CASES = ("same", "shift 0.5", "shift 1", "shift 2", "scale 1.5")


def draw(case: str, d: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two samples ``[n, d]`` of ``case``, from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    p = torch.randn(n, d, generator=generator)
    q = torch.randn(n, d, generator=generator)
    if case.startswith("shift"):
        q[:, 0] += float(case.split()[1])
    elif case.startswith("scale"):
        q *= float(case.split()[1])
    return p, q


def bayes_accuracy(case: str) -> float | None:
    """½ + ½ TV(P, Q) where it has a closed form."""
    if case == "same":
        return 0.5
    if case.startswith("shift"):
        delta = float(case.split()[1])
        tv = 2 * 0.5 * (1 + math.erf(delta / 2 / math.sqrt(2))) - 1
        return 0.5 + 0.5 * tv
    return None


def sklearn_c2st(p: torch.Tensor, q: torch.Tensor, seed: int, n_folds: int = 5) -> float:
    """sbibm's ``c2st`` (sbibm/metrics/c2st.py) as it stands, on numpy arrays."""
    import numpy as np
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    x, y = p.numpy(), q.numpy()
    mean, std = x.mean(0), x.std(0)
    x, y = (x - mean) / std, (y - mean) / std
    d = x.shape[1]
    classifier = MLPClassifier(
        activation="relu",
        hidden_layer_sizes=(10 * d, 10 * d),
        max_iter=10000,
        solver="adam",
        random_state=seed,
    )
    data = np.concatenate((x, y))
    target = np.concatenate((np.zeros(len(x)), np.ones(len(y))))
    folds = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return float(cross_val_score(classifier, data, target, cv=folds, scoring="accuracy").mean())


def render(rows: list[dict], meta: dict) -> str:
    lines = [
        *run_header(meta),
        "",
        f"Accuracy over {meta['repeats']} seeds (mean ± sd), n = {meta['n']:,} points per "
        "sample; the difference is paired by seed (mean ± standard error); Bayes: "
        "½ + ½ TV(P, Q) where known.",
        "",
        "| d | case | Bayes | simfer | scikit-learn | simfer − sklearn | agree | "
        "seconds simfer / sklearn |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    by_case: dict[tuple[int, str], list[dict]] = {}
    for row in rows:
        by_case.setdefault((row["d"], row["case"]), []).append(row)
    for (d, case), group in sorted(by_case.items()):
        ours = [r["simfer"] for r in group]
        theirs = [r["sklearn"] for r in group]
        diffs = [a - b for a, b in zip(ours, theirs, strict=True)]
        k = len(group)
        sd = statistics.stdev
        mean_diff = statistics.fmean(diffs)
        se = sd(diffs) / math.sqrt(k) if k > 1 else math.nan
        agree = abs(mean_diff) < 0.01 or (k > 1 and abs(mean_diff) <= 3 * se)
        bayes = bayes_accuracy(case)
        seconds = sum(r["simfer_seconds"] for r in group) / sum(r["sklearn_seconds"] for r in group)
        lines.append(
            f"| {d} | {case} | {'—' if bayes is None else f'{bayes:.3f}'} | "
            f"{statistics.fmean(ours):.3f} ± {sd(ours) if k > 1 else 0:.3f} | "
            f"{statistics.fmean(theirs):.3f} ± {sd(theirs) if k > 1 else 0:.3f} | "
            f"{mean_diff:+.3f} ± {se:.3f} | {'yes' if agree else 'NO'} | {seconds:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 10])
    parser.add_argument("--n", type=int, default=1000, help="points per sample")
    parser.add_argument("--repeats", type=int, default=5, help="seeds per case")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--markdown", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--jsonl", default=str(ROOT / "benchmarks" / "results" / "c2st.jsonl"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = JsonLines(args.jsonl)
    if args.fresh and log.path.exists():
        log.path.unlink()
    rows = [r for r in log.rows() if r["n"] == args.n]
    done = {(r["d"], r["case"], r["seed"]) for r in rows}
    meta = {
        **run_meta("c2st_check.py", argv, args.threads, "scikit-learn"),
        "n": args.n,
        "repeats": args.repeats,
        "status": " (running)",
        "wall_minutes": 0.0,
    }
    t0 = time.perf_counter()
    for d in args.dims:
        for case in CASES:
            for seed in range(args.repeats):
                if (d, case, seed) in done:
                    continue
                p, q = draw(case, d, args.n, 1000 * d + seed)
                start = time.perf_counter()
                ours = float(c2st(p, q, seed=seed))
                middle = time.perf_counter()
                theirs = sklearn_c2st(p, q, seed)
                row = {
                    "d": d,
                    "case": case,
                    "seed": seed,
                    "n": args.n,
                    "simfer": ours,
                    "sklearn": theirs,
                    "simfer_seconds": middle - start,
                    "sklearn_seconds": time.perf_counter() - middle,
                }
                print(row, flush=True)
                log.append(row)
                rows.append(row)
                meta["wall_minutes"] = (time.perf_counter() - t0) / 60
                write_markdown(Path(args.markdown), render(rows, meta), NAME, HEADING)
    meta["status"] = ""
    write_markdown(Path(args.markdown), render(rows, meta), NAME, HEADING)
    print(render(rows, meta))


if __name__ == "__main__":
    main()
