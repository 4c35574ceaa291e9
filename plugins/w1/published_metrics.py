"""Published per-cell metrics of the MinFunnel benchmark (Korotin, Kolesov, Burnaev 2022) and the like-for-like map.

``published/korotin2022_nd_metrics.csv`` holds the authors' released per-cell numbers (repository
github.com/justkolesov/Wasserstein1Benchmark, files ``metrics/metrics_nd/dim_{D}/width_{N}/
metrics_deg_8_seed_2.csv`` at commit 0af1e05ef1721ba3ea864688533f6111ab66d95d, MIT licence, see
``published/README.md``): one row per (dim, funnels, method) with the authors' method names and their ``cos``,
``l2`` and ``cost`` (the W1 estimate; the ``true`` row holds the true W1 of the pair).

``PUBLISHED_METHODS`` says which of our solvers, with which structural parameters, computes the same thing as
each published method; ``published_reference`` returns the reference numbers for one run (used by
``min_funnel``'s ``Task.published`` when the task runs the published pairs). Training-budget parameters
(iterations, learning rate, batch, ...) do not break the match: they are listed under ``differences`` so that a
reader sees that a CPU run trains for less than the published GPU run. A reference row is shown beside a result
and is never ranked.

Rebuild the table from the 28 released CSVs with
``python -m otbench_plugins.w1.published_metrics SRC_DIR`` (``SRC_DIR/dim_{D}_width_{N}.csv``).
"""

from __future__ import annotations

import csv
import functools
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PUBLISHED_DIR = Path(__file__).resolve().parent / "published"
TABLE = PUBLISHED_DIR / "korotin2022_nd_metrics.csv"
SOURCE = ("Korotin, Kolesov, Burnaev 2022, 'Kantorovich Strikes Back!' (NeurIPS D&B), per-cell metrics "
          "github.com/justkolesov/Wasserstein1Benchmark metrics/metrics_nd/dim_{D}/width_{N}/"
          "metrics_deg_8_seed_2.csv @ 0af1e05ef1721ba3ea864688533f6111ab66d95d (MIT licence)")
DIMS = (2, 4, 8, 16, 32, 64, 128)
FUNNELS = (4, 16, 64, 256)
#: the authors' row names, in their files' order
METHODS = ("wgan", "wgan-gp", "wgan-lp", "sn-gan", "lsot-f", "3p-wgan", "sort-out", "wgan-qp", "cowgan",
           "3p-wgan_rev", "dot", "true")


@dataclass(frozen=True)
class Counterpart:
    """Our solver that computes what a published method computes.

    ``requires``: parameter values that must hold (a structural difference makes it another method; a
    missing parameter takes the solver's default). ``published``: the published training settings, compared
    with the run's parameters to list budget differences. ``note``: what else to know.
    """

    solver: str
    requires: Mapping[str, Any] = field(default_factory=dict)
    published: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""


_NET = {"width": None, "depth": 2}  # [D, max(2D, 128), max(2D, 128), 1] in every published critic
_TRAIN = {"batch_size": 1024, "lr": 2e-4}
_WGAN_BETAS = (0.0, 0.9)  # Adam(lr=LR, betas=(0, 0.9)) in the notebook: WC, GP, LP, SN, 3P-WGAN and its reverse
_ADAM_DEFAULT_BETAS = (0.9, 0.999)  # Adam(lr=LR): sort-out, LSOT, WGAN-qp

#: published method -> our like-for-like solver. Settings from notebooks/test_nd.ipynb (hyperparameter cell)
#: and src/methods.py, src/models.py of the authors' repository. The repository holds two versions of the
#: notebook with different iteration counts. The version at 0af1e05 (GP/LP 40000, SN 5000, SO, WGAN-qp, CoWGAN,
#: 3P-WGAN and its reverse 15000) printed, for D=16, N=16, exactly the numbers of the released CSV of that
#: cell, so its counts are the ``published`` settings here; the version at 6ae670b (GP/LP 60000, SN 10000, SO,
#: WGAN-qp, CoWGAN 25000, 3P-WGAN and reverse 20000; W1_KNOWN_PLANS.md quotes these) printed other numbers.
#: Which version produced each of the other 27 cells is not recorded.
PUBLISHED_METHODS: dict[str, Counterpart] = {
    "wgan": Counterpart("wgan_wc", {**_NET, "clip_biases": False},
                        {**_TRAIN, "iterations": 5000, "clip": 0.04, "betas": _WGAN_BETAS},
                        "weights (not biases) clamped to +-0.04 before every forward pass"),
    "wgan-gp": Counterpart("wgan_gp", dict(_NET), {**_TRAIN, "iterations": 40000, "penalty_weight": 10.0,
                                                      "betas": _WGAN_BETAS},
                           "40000 iterations (60000 in the other notebook version)"),
    "wgan-lp": Counterpart("wgan_lp", dict(_NET), {**_TRAIN, "iterations": 40000, "penalty_weight": 10.0,
                                                      "betas": _WGAN_BETAS},
                           "40000 iterations (60000 in the other notebook version)"),
    "sn-gan": Counterpart("wgan_sn", {**_NET, "sigma_grad": False}, {**_TRAIN, "iterations": 5000,
                                                                    "power_iterations": 5, "betas": _WGAN_BETAS},
                          "published SN computes sigma from detached tensors (sigma_grad: false) and runs its "
                          "power iterations on every forward pass (x and y separately: 10 per step); 5000 "
                          "iterations (10000 in the other notebook version)"),
    "sort-out": Counterpart("groupsort_so", {**_NET, "group_size": None},
                            {**_TRAIN, "iterations": 15000, "betas": _ADAM_DEFAULT_BETAS},
                            "published weights are exactly orthogonal (geotorch parametrisation), ours are "
                            "Bjorck-orthonormalised raw weights; 15000 iterations (25000 in the other version)"),
    "lsot-f": Counterpart("reg_ls", {**_NET, "regularization": "l2", "pairs": "paired"},
                          {**_TRAIN, "iterations": 10000, "epsilon": 0.01, "betas": _ADAM_DEFAULT_BETAS},
                          "the critic is the P-side potential f"),
    "3p-wgan": Counterpart("mm", {**_NET, "mover_residual": False},
                           {**_TRAIN, "iterations": 15000, "mover_steps": 12, "betas": _WGAN_BETAS},
                           "15000 iterations (20000 in the other notebook version)"),
    "3p-wgan_rev": Counterpart("mm_r", {**_NET, "mover_residual": False, "score": "mover"},
                               {**_TRAIN, "iterations": 15000, "mover_steps": 12, "betas": _WGAN_BETAS},
                               "published cos / l2 are the mover's displacement direction (x - T(x)) / |x - T(x)|,"
                               " the W1 estimate is the critic's; 15000 iterations (20000 in the other version)"),
    "wgan-qp": Counterpart("mm_b", dict(_NET), {**_TRAIN, "iterations": 15000, "betas": _ADAM_DEFAULT_BETAS},
                           "batch c-transform over the P batch, loss through phi at the argmin: exactly MM:B; "
                           "15000 iterations (25000 in the other notebook version)"),
    # "cowgan" (switches between the direct loss and batch c-transforms in both directions): no counterpart.
    "dot": Counterpart("exact_lp", {}, {"n_samples": 4096},
                       "exact LP (POT EMDTransport) on 4096 independent samples of P and Q (METRIC_SIZE); its "
                       "gradient is the direction from the matched y to x, as our plan-sample scoring"),
}


def counterpart_method(solver: str, params: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
                       ) -> str | None:
    """The published method that ``solver`` with ``params`` reproduces like for like, or None."""
    if defaults is None:
        defaults = _solver_defaults(solver)
    full = {**dict(defaults), **dict(params)}
    for method, cp in PUBLISHED_METHODS.items():
        if cp.solver == solver and all(full.get(k, None) == v for k, v in cp.requires.items()):
            return method
    return None


def _solver_defaults(solver: str) -> Mapping[str, Any]:
    """Defaults of the counterpart solvers (all in this plugin family, plus exact_lp); {} for any other name."""
    from otbench_plugins.discrete.exact_lp import ExactLP
    from otbench_plugins.w1.critics import CRITIC_SOLVERS
    from otbench_plugins.w1.maximin import MAXIMIN_SOLVERS
    for cls in (*CRITIC_SOLVERS, *MAXIMIN_SOLVERS, ExactLP):
        if cls.name == solver:
            return dict(cls.defaults)
    return {}


def _differences(cp: Counterpart, full: Mapping[str, Any]) -> list[str]:
    out = []
    for key, pub in cp.published.items():
        ours = full.get(key)
        if ours is None:
            continue
        try:
            if isinstance(pub, tuple):  # e.g. Adam betas; a suite gives a list
                ours = tuple(float(v) for v in ours)
                same = ours == tuple(float(v) for v in pub)
            else:
                same = float(ours) == float(pub)
        except (TypeError, ValueError):
            same = ours == pub
        if not same:
            out.append(f"{key} {ours} (published {pub})")
    return out


@functools.lru_cache(maxsize=1)
def load_table(path: str | None = None) -> dict[tuple[int, int, str], dict[str, float]]:
    """``{(dim, funnels, method): {"cos", "l2", "cost"}}`` from the shipped CSV (comment lines skipped)."""
    table: dict[tuple[int, int, str], dict[str, float]] = {}
    with open(path or TABLE, newline="") as fh:
        rows = csv.DictReader(line for line in fh if not line.startswith("#"))
        for row in rows:
            table[(int(row["dim"]), int(row["funnels"]), row["method"])] = {
                k: float(row[k]) for k in ("cos", "l2", "cost")}
    return table


def published_metrics(dim: int, funnels: int, method: str) -> dict[str, float] | None:
    """A published row in our metric names: grad_cos, grad_l2, w1_estimate, w1_rel_error_pct, w1_true."""
    table = load_table()
    row, true = table.get((dim, funnels, method)), table.get((dim, funnels, "true"))
    if row is None or true is None:
        return None
    w1 = true["cost"]
    return {"grad_cos": row["cos"], "grad_l2": row["l2"], "w1_estimate": row["cost"],
            "w1_rel_error_pct": 100.0 * abs(row["cost"] - w1) / w1, "w1_true": w1}


def published_reference(dim: int, funnels: int, solver: str, solver_params: Mapping[str, Any],
                        defaults: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The ``Task.published`` answer for a published MinFunnel cell, or None when no like-for-like row exists."""
    if defaults is None:
        defaults = _solver_defaults(solver)
    method = counterpart_method(solver, solver_params, defaults)
    if method is None:
        return None
    metrics = published_metrics(dim, funnels, method)
    if metrics is None:
        return None
    cp = PUBLISHED_METHODS[method]
    full = {**dict(defaults), **dict(solver_params)}
    return {"source": SOURCE.replace("{D}", str(dim)).replace("{N}", str(funnels)), "method": method,
            "metrics": metrics, "differences": _differences(cp, full), "note": cp.note}


def build_table(src_dir: str | Path, out: str | Path = TABLE) -> int:
    """Write the tidy table from the authors' 28 files ``dim_{D}_width_{N}.csv``; returns the row count.

    Fails on a missing file, a missing method row or a non-numeric value (a partial copy must not ship).
    """
    src_dir = Path(src_dir)
    lines = ["# Korotin, Kolesov, Burnaev 2022, 'Kantorovich Strikes Back! Wasserstein GANs are not Optimal "
             "Transport?' (NeurIPS Datasets and Benchmarks)",
             "# source: https://github.com/justkolesov/Wasserstein1Benchmark metrics/metrics_nd/dim_{D}/width_{N}/"
             "metrics_deg_8_seed_2.csv",
             "# commit: 0af1e05ef1721ba3ea864688533f6111ab66d95d; licence: MIT (published/LICENSE.md)",
             "# columns: cos and l2 of the critic gradient (mover direction for 3p-wgan_rev) on 4096 samples of P; "
             "cost = W1 estimate; the 'true' row's cost is the true W1",
             "dim,funnels,method,cos,l2,cost"]
    n = 0
    for d in DIMS:
        for k in FUNNELS:
            path = src_dir / f"dim_{d}_width_{k}.csv"
            with open(path, newline="") as fh:
                rows = {r[""]: r for r in csv.DictReader(fh)}
            missing = [m for m in METHODS if m not in rows]
            if missing:
                raise ValueError(f"{path}: rows {missing} missing")
            for m in METHODS:
                vals = [float(rows[m][c]) for c in ("cos", "l2", "cost")]
                lines.append(f"{d},{k},{m}," + ",".join(repr(v) for v in vals))
                n += 1
    Path(out).write_text("\n".join(lines) + "\n")
    load_table.cache_clear()
    return n


if __name__ == "__main__":
    print(build_table(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else TABLE), "rows written")
