"""Generative metrics: FID / KID / precision-recall through torch-fidelity, class coverage, sample distances.

Image tests use the real offline datasets (digits ship with scikit-learn; Fashion-MNIST is installed by CI) and
their cached ``<dataset>_cnn`` extractors; sizes are kept small (400-500 images) so the file stays fast.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from otbench.api import Problem, Solution, Truth
from otbench.data import load_dataset
from otbench.metrics import generative as gm
from otbench.metrics.generative import (ClassCoverage, FID, ModeCoverage, SampleDistance, exact_wasserstein,
                                        frechet_distance, generated_samples, heldout_samples, image_uint8)


def rows(data: torch.Tensor, seed: int):
    """Sampler ``n -> [n, dim]`` of distinct rows of ``data`` (a seeded permutation, no repeats)."""
    perm = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed))
    state = {"pos": 0}

    def sample(n: int) -> torch.Tensor:
        idx = perm[state["pos"]:state["pos"] + n]
        assert len(idx) == n, "test sampler ran out of rows"
        state["pos"] += n
        return data[idx].reshape(n, -1)

    return sample


def image_case(dataset: str, n: int, classes=None, seed: int = 0) -> tuple[Problem, Truth]:
    test, _ = load_dataset(dataset, "test")
    shape = tuple(test.shape[1:])
    dim = math.prod(shape)
    problem = Problem("generative", dim, "euclidean", torch.device("cpu"), torch.float32,
                      sample_p=lambda k: torch.randn(k, 2), sample_q=rows(test, 99), latent_dim=2,
                      shape=shape, value_range=(0.0, 1.0), seed=seed)
    truth = Truth(sample_q=rows(test, seed + 1), extra={"dataset": dataset, "classes": classes, "n_eval": n})
    return problem, truth


def generator_from(pool: torch.Tensor, transform=None, seed: int = 5):
    """A generator that returns training images (optionally transformed, clipped to [0, 1])."""
    draw = rows(pool, seed)
    gen = torch.Generator().manual_seed(seed + 1)

    def g(n: int) -> torch.Tensor:
        x = draw(n)
        if transform is not None:
            x = transform(x, gen)
        return x.clamp(0, 1)

    return Solution(generator=g)


def noisy(sigma: float):
    return lambda x, gen: x + sigma * torch.randn(x.shape, generator=gen)


def fid_of(dataset: str, solution: Solution, n: int, label: str) -> float:
    problem, truth = image_case(dataset, n)
    return FID().compute(truth, solution, problem)[f"fid_{label}"]


# ------------------------------------------------------------------------------------------------- FID


def test_fid_real_split_far_below_corrupted_and_single_class_sets():
    # A wrong FID (e.g. features of the wrong layer, images not scaled to uint8, mean-only distance) does not
    # separate held-out real images from noisy, blurred or one-class sets by a wide margin.
    n = 500
    train, labels = load_dataset("fashion_mnist", "train")
    shape = (1, 28, 28)

    def blur(x, gen):
        return F.avg_pool2d(x.reshape(-1, *shape), 5, stride=1, padding=2, count_include_pad=False).flatten(1)

    real = fid_of("fashion_mnist", generator_from(train), n, "fashion_mnist_cnn")
    corrupted = {
        "noise": fid_of("fashion_mnist", generator_from(train, noisy(0.3)), n, "fashion_mnist_cnn"),
        "blur": fid_of("fashion_mnist", generator_from(train, blur), n, "fashion_mnist_cnn"),
        "one_class": fid_of("fashion_mnist", generator_from(train[labels == 3]), n, "fashion_mnist_cnn"),
    }
    assert real < 20, real
    for what, value in corrupted.items():
        assert value > 5 * real, (what, value, real)


def test_fid_grows_monotonically_with_noise():
    # A distance that saturates or ignores the covariance would not rank these strictly (each level >= 1.2x).
    train, _ = load_dataset("digits", "train")
    values = [fid_of("digits", generator_from(train, noisy(s)), 400, "digits_cnn") for s in (0.0, 0.1, 0.2, 0.4)]
    assert all(b > 1.2 * a for a, b in zip(values, values[1:])), values


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def test_fid_metric_equals_torch_fidelity_calculate_metrics():
    # Catches wrong keyword arguments (KID subsets, PRC neighbourhood), a wrong feature layer, or swapped
    # generated / real roles in precision and recall: torch-fidelity's own pipeline must give the same numbers.
    import torch_fidelity

    n = 300
    train, _ = load_dataset("digits", "train")
    problem, truth = image_case("digits", n)
    solution = generator_from(train, noisy(0.3))
    ours = FID().compute(truth, solution, problem)
    gen = image_uint8(generated_samples(truth, solution, problem, n), problem)  # the same draws (memoised)
    real = image_uint8(heldout_samples(truth, n), problem)
    with gm.torch_thread_blas():  # speed only (small matrices)
        theirs = torch_fidelity.calculate_metrics(
            input1=_Images(gen), input2=_Images(real), feature_extractor="digits_cnn", fid=True, kid=True, prc=True,
            cuda=False, cache=False, verbose=False, save_cpu_ram=True, batch_size=500,
            kid_subsets=gm.KID_SUBSETS, kid_subset_size=n // 2, rng_seed=gm.KID_SEED)
    assert ours["fid_digits_cnn"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-5)
    assert ours["kid_digits_cnn"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-5)
    assert ours["kid_std_digits_cnn"] == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-5)
    assert ours["precision_digits_cnn"] == pytest.approx(theirs["precision"], abs=1e-9)
    assert ours["recall_digits_cnn"] == pytest.approx(theirs["recall"], abs=1e-9)
    # and the precision / recall of a noisy generator are not symmetric, so a swap would show
    assert abs(ours["precision_digits_cnn"] - ours["recall_digits_cnn"]) > 0.05


def test_heldout_features_computed_once_per_process(monkeypatch):
    # Two runs of one task and seed (fresh problem / truth each, as the runner builds them) see the same held-out
    # draw: its features must come from the cache, and only each run's generated images are extracted.
    from otbench import features

    calls: list[int] = []
    real_extract = features.extract_features

    def counting(spec, images, device="cpu", batch_size=None):
        calls.append(images.shape[0])
        return real_extract(spec, images, device, batch_size)

    monkeypatch.setattr(features, "extract_features", counting)
    monkeypatch.setattr(gm, "_FEATURES", {})
    train, _ = load_dataset("digits", "train")
    results = []
    for run in range(2):
        problem, truth = image_case("digits", 60, seed=123)
        results.append(FID().compute(truth, generator_from(train, seed=run), problem)["fid_digits_cnn"])
    assert len(calls) == 3  # held-out once, generated twice
    assert results[0] != results[1]  # different generated draws, same cached reference


def _closed_form(mu1, s1, mu2, s2) -> float:
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * root))


def test_frechet_distance_matches_closed_form_on_gaussian_features():
    # ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2): a missing factor 2, a trace of the wrong product or a
    # mean-only distance would miss both the empirical-moment value (exact) and the population value.
    rng = np.random.default_rng(0)
    d, n = 4, 4000
    mu1, mu2 = np.zeros(d), np.array([1.0, -0.5, 0.0, 2.0])
    a = rng.normal(size=(d, d))
    s1, s2 = np.diag([1.0, 2.0, 0.5, 1.5]), a @ a.T / d + 0.2 * np.eye(d)
    x = rng.multivariate_normal(mu1, s1, size=n)
    y = rng.multivariate_normal(mu2, s2, size=n)
    fid = frechet_distance(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    x32, y32 = x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)
    empirical = _closed_form(x32.mean(0), np.cov(x32, rowvar=False), y32.mean(0), np.cov(y32, rowvar=False))
    population = _closed_form(mu1, s1, mu2, s2)
    assert fid == pytest.approx(empirical, rel=1e-6)
    assert fid == pytest.approx(population, abs=0.15)
    assert population > 5.0  # the check is not vacuous


# ------------------------------------------------------------------------------------------- class coverage


def test_class_coverage_counts_the_classes_a_generator_reaches():
    # One-class generator: 1 covered class and a large histogram distance; real images: all 10, small distance.
    # A metric that compared labels instead of predictions, or inverted the share rule, fails one of the two.
    train, labels = load_dataset("digits", "train")
    problem, truth = image_case("digits", 400)
    real = ClassCoverage().compute(truth, generator_from(train), problem)
    problem, truth = image_case("digits", 120)  # only ~136 training 4s exist
    single = ClassCoverage().compute(truth, generator_from(train[labels == 4]), problem)
    assert real["classes_covered"] == 10 and real["classes_total"] == 10
    assert real["class_hist_tv"] < 0.1
    assert single["classes_covered"] == 1
    assert single["class_hist_tv"] > 0.8


def test_class_coverage_restricted_to_the_task_classes():
    # A task keeping classes [0, 1, 2]: predictions are restricted to those; a generator of 0s and 1s covers 2.
    train, labels = load_dataset("digits", "train")
    problem, truth = image_case("digits", 100, classes=[0, 1, 2])
    truth.sample_q = rows(load_dataset("digits", "test", classes=[0, 1, 2])[0], 3)
    out = ClassCoverage().compute(truth, generator_from(train[labels <= 1]), problem)
    assert out["classes_total"] == 3
    assert out["classes_covered"] == 2


def test_non_finite_or_misshapen_generated_images_fail_loudly():
    # NaN pixels would otherwise be quantised to black and scored as if they were images.
    problem, truth = image_case("digits", 50)
    with pytest.raises(ValueError, match="non-finite"):
        FID().compute(truth, Solution(generator=lambda k: torch.full((k, 64), float("nan"))), problem)
    with pytest.raises(ValueError, match="expected"):
        ClassCoverage().compute(truth, Solution(generator=lambda k: torch.zeros(k, 63)), problem)


def test_image_metrics_apply_only_to_images_with_a_dataset():
    # Pixel-space LPs on images, or FID on a task that names no dataset, must be skipped with a reason.
    train, _ = load_dataset("digits", "train")
    problem, truth = image_case("digits", 50)
    sol = generator_from(train)
    assert FID().applies(problem, truth, sol) is None
    assert SampleDistance().applies(problem, truth, sol) is not None
    truth_no_ds = Truth(sample_q=truth.sample_q, extra={"n_eval": 50})
    assert FID().applies(problem, truth_no_ds, sol) is not None


# ---------------------------------------------------------------------------------------- low-dimensional


def vector_case(draw, n: int, dim: int = 2, extra=None) -> tuple[Problem, Truth]:
    gen = torch.Generator().manual_seed(11)
    problem = Problem("generative", dim, "euclidean", torch.device("cpu"), torch.float32,
                      sample_p=lambda k: torch.randn(k, 2), sample_q=lambda k: draw(k, gen), latent_dim=2)
    truth = Truth(sample_q=lambda k: draw(k, gen), extra={"n_eval": n, **(extra or {})})
    return problem, truth


def gaussian(k: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(k, 2, generator=gen)


def test_exact_wasserstein_matches_sorted_closed_form_in_1d():
    # In 1-D the optimal coupling of equal-size uniform samples matches sorted points: W1 = mean |x_(i) - y_(i)|,
    # W2^2 = mean (x_(i) - y_(i))^2. An approximate (entropic) or mis-weighted LP misses these.
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 1, generator=g), 2 * torch.rand(300, 1, generator=g)
    diff = (x.sort(0).values - y.sort(0).values).double()
    assert exact_wasserstein(x, y, 1) == pytest.approx(float(diff.abs().mean()), rel=1e-9)
    assert exact_wasserstein(x, y, 2) == pytest.approx(math.sqrt(float(diff.square().mean())), rel=1e-9)


def test_sample_distance_perfect_sampler_near_floor_and_shift_near_shift():
    # A perfect sampler scores about the floor; a sampler shifted by v scores about |v| in W1 (W1 >= |v| for the
    # laws) and its Sinkhorn divergence is far above the perfect one. Scoring against the training draws, or a
    # floor computed on the same draw twice (0), would break these.
    n = 500
    gen = torch.Generator().manual_seed(3)
    problem, truth = vector_case(gaussian, n)
    perfect = SampleDistance().compute(truth, Solution(generator=lambda k: torch.randn(k, 2, generator=gen)), problem)
    shift = torch.tensor([1.5, 0.0])
    problem, truth = vector_case(gaussian, n)
    shifted = SampleDistance().compute(truth, Solution(generator=lambda k: torch.randn(k, 2, generator=gen) + shift),
                                       problem)
    floor = perfect["sample_w1_floor"]
    assert 0 < floor < 0.3
    assert perfect["sample_w1"] < 1.6 * floor
    assert abs(shifted["sample_w1"] - 1.5) < 1.5 * floor
    assert shifted["sample_w2"] >= shifted["sample_w1"] - 1e-9  # W2 >= W1 always
    assert shifted["sinkhorn_divergence"] > 20 * max(perfect["sinkhorn_divergence"], 1e-3)
    # geomloss's S_eps with cost |x-y|^2/2 approaches |v|^2 / 2 for a pure translation
    assert shifted["sinkhorn_divergence"] == pytest.approx(1.5**2 / 2, rel=0.25)


# ------------------------------------------------------------------------------------------- mode coverage


MODES = torch.tensor([[4.0 * math.cos(2 * math.pi * i / 8), 4.0 * math.sin(2 * math.pi * i / 8)] for i in range(8)])


def mixture(k: int, gen: torch.Generator) -> torch.Tensor:
    return MODES[torch.randint(0, 8, (k,), generator=gen)] + 0.05 * torch.randn(k, 2, generator=gen)


def test_mode_coverage_one_mode_all_modes_and_strays():
    # Everything on one mode: 1 covered, all high quality. The full mixture: 8. A handful of stray samples near
    # other modes (below a quarter of the fair share) must not count: a ">= 1 sample" rule would report 3 here.
    n = 800
    extra = {"modes": MODES, "mode_radius": 0.3}
    gen = torch.Generator().manual_seed(1)
    problem, truth = vector_case(mixture, n, extra=extra)
    one = ModeCoverage().compute(truth, Solution(generator=lambda k: MODES[2] + 0.05 * torch.randn(k, 2, generator=gen)),
                                 problem)
    assert one == {"modes_covered": 1.0, "modes_total": 8.0, "high_quality_share": 1.0}
    problem, truth = vector_case(mixture, n, extra=extra)
    full = ModeCoverage().compute(truth, Solution(generator=lambda k: mixture(k, gen)), problem)
    assert full["modes_covered"] == 8 and full["high_quality_share"] > 0.99

    def strays(k: int) -> torch.Tensor:
        x = MODES[0] + 0.05 * torch.randn(k, 2, generator=gen)
        x[:5] = MODES[3]
        x[5:10] = MODES[6]
        x[10:200] = 0.0  # the centre of the circle: no mode within the radius
        return x

    problem, truth = vector_case(mixture, n, extra=extra)
    out = ModeCoverage().compute(truth, Solution(generator=strays), problem)
    assert out["modes_covered"] == 1
    assert out["high_quality_share"] == pytest.approx((n - 190) / n)


def test_runner_applies_the_right_metrics_to_image_and_vector_problems():
    # Through the runner's own metric loop (every registered metric): image problems get fid / class_coverage and
    # skip the sample distances, mixtures get sample_distance / mode_coverage and skip fid; no metric errors and
    # no two metrics claim the same output name.
    from types import SimpleNamespace

    from otbench.registry import get_registry
    from otbench.runner import _apply_metrics

    registry = get_registry()
    spec = SimpleNamespace(metrics=None, seed=0)
    train, _ = load_dataset("digits", "train")
    problem, truth = image_case("digits", 100)
    values, skipped, errors = _apply_metrics(registry, spec, truth, generator_from(train), problem)
    assert not errors
    assert {"fid_digits_cnn", "kid_digits_cnn", "classes_covered", "class_hist_tv"} <= set(values)
    assert "sample_distance" in skipped and "mode_coverage" in skipped

    gen = torch.Generator().manual_seed(2)
    problem, truth = vector_case(mixture, 300, extra={"modes": MODES, "mode_radius": 0.3})
    values, skipped, errors = _apply_metrics(registry, spec, truth, Solution(generator=lambda k: mixture(k, gen)),
                                             problem)
    assert not errors
    assert {"sample_w1", "sample_w1_floor", "sinkhorn_divergence", "modes_covered"} <= set(values)
    assert "fid" in skipped and "class_coverage" in skipped
