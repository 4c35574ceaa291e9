"""Generative tasks (plugins/generative/tasks.py): the contract, the geometry of each target, the split between
the data a solver trains on and the data the metrics score against, and parameter validation."""

from __future__ import annotations

import math

import pytest
import torch

from otbench.api import InvalidInput
from otbench.data import DatasetMissing, load_dataset
from otbench.testing import check_task
from otbench_plugins.generative.tasks import (
    DigitsImages,
    FashionMnistImages,
    GaussianMixture,
    KnownPlanTarget,
    epoch_sampler,
    mixture_modes,
)

CPU = torch.device("cpu")


def _fashion_available() -> bool:
    try:
        load_dataset("fashion_mnist", "test")
    except DatasetMissing:
        return False
    return True


needs_fashion = pytest.mark.skipif(not _fashion_available(),
                                   reason="Fashion-MNIST missing (apt-get install dataset-fashion-mnist)")


@pytest.mark.parametrize("cls, params", [
    (GaussianMixture, {}),
    (GaussianMixture, {"layout": "grid"}),
    (GaussianMixture, {"layout": "axes", "dim": 8}),
    (GaussianMixture, {"layout": "random", "dim": 8, "modes": 5}),
    (KnownPlanTarget, {}),
    (KnownPlanTarget, {"family": "maxmin_net", "side": "p", "pair": {"dim": 4}}),
    (DigitsImages, {"classes": [0, 1]}),
])
def test_conformance(cls, params):
    # catches: an unseeded sampler, a Truth.sample_q that replays the solver's stream, missing held-out data
    check_task(cls, params)


@needs_fashion
def test_fashion_conformance_and_classes():
    check_task(FashionMnistImages, {"classes": [5, 7, 9]})
    problem, truth = FashionMnistImages(classes=[9, 5, 7]).build(0, CPU, torch.float32)
    assert problem.shape == (1, 28, 28) and problem.dim == 784 and problem.value_range == (0.0, 1.0)
    assert truth.extra["classes"] == [5, 7, 9] and truth.extra["dataset"] == "fashion_mnist"
    assert truth.extra["n_test"] == 3000  # 1000 test images per class
    # catches: a class filter that is ignored (the training data would include other garments)
    shoes, _ = load_dataset("fashion_mnist", "train", classes=[5, 7, 9])
    x = problem.sample_q(20)
    hits = (torch.cdist(x, shoes.reshape(len(shoes), -1), compute_mode="donot_use_mm_for_euclid_dist").min(1).values < 1e-6)
    assert bool(hits.all())


def test_mixture_geometry():
    circle = mixture_modes("circle", None, 2, 2.0)
    assert circle.shape == (8, 2)
    assert torch.allclose(circle.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))
    grid = mixture_modes("grid", 25, 2, 2.0)
    assert grid.shape == (25, 2) and float(grid.abs().max()) == 4.0  # 5 x 5 grid, spacing 2, centred
    axes = mixture_modes("axes", None, 8, 3.0)
    assert axes.shape == (16, 8) and torch.allclose(axes.norm(dim=1), torch.full((16,), 3.0, dtype=torch.float64))


@pytest.mark.parametrize("layout, dim", [("circle", 2), ("grid", 2), ("axes", 8)])
def test_mixture_samples_follow_the_modes(layout, dim):
    problem, truth = GaussianMixture(layout=layout, dim=dim, std=0.05).build(3, CPU, torch.float32)
    modes, std = truth.extra["modes"], truth.extra["mode_std"]
    assert truth.extra["mode_radius"] == pytest.approx(3 * std * math.sqrt(dim / 2))
    y = truth.sample_q(8000)
    dist = torch.cdist(y.double(), modes.double())
    nearest = dist.min(1)
    # catches: a wrong std (samples too far or too concentrated) or centres that differ from Truth.extra["modes"]
    # E|noise|^2 = dim * std^2 for the distance to the own mode
    mean_sq = float(nearest.values.square().mean())
    assert mean_sq == pytest.approx(dim * std**2, rel=0.1)
    # the mode radius holds ~99 % of the samples of a perfect generator in every dimension
    assert float((nearest.values < truth.extra["mode_radius"]).double().mean()) > 0.97
    # catches: unequal weights or a dropped mode in the sampler (each mode holds 1/k of the mass)
    counts = torch.bincount(nearest.indices, minlength=len(modes)).double() / len(y)
    k = len(modes)
    assert float((counts - 1 / k).abs().max()) < 4 * math.sqrt((1 / k) / len(y)) + 0.01
    # the latent is a standard normal of latent_dim
    z = problem.sample_p(4000)
    assert z.shape == (4000, problem.latent_dim)
    assert abs(float(z.mean())) < 0.05 and float(z.std()) == pytest.approx(1.0, abs=0.05)


def test_known_plan_sides():
    q_problem, q_truth = KnownPlanTarget(pair={"funnels": 4, "box": 2.5}).build(0, CPU, torch.float32)
    p_problem, _ = KnownPlanTarget(side="p", pair={"funnels": 4, "box": 2.5}).build(0, CPU, torch.float32)
    yq, yp = q_problem.sample_q(20000), p_problem.sample_q(20000)
    # Q is uniform on [-2.5, 2.5]^2: variance box^2 / 3 per coordinate
    assert float(yq.abs().max()) <= 2.5
    assert float(yq.var(0).mean()) == pytest.approx(2.5**2 / 3, rel=0.05)
    # catches: the sides swapped (P is Q pushed towards the funnel centres, so it sits much closer to them)
    pot = KnownPlanTarget(pair={"funnels": 4, "box": 2.5})._pair_task().potential(CPU)
    centres = pot.centres.to(torch.float32)
    dq = torch.cdist(yq, centres).min(1).values.mean()
    dp = torch.cdist(yp, centres).min(1).values.mean()
    assert float(dp) < 0.5 * float(dq)
    assert q_truth.extra["box"] == 2.5


def test_image_splits_are_disjoint_and_shuffled_by_epoch():
    problem, truth = DigitsImages().build(0, CPU, torch.float32)
    train, _ = load_dataset("digits", "train")
    test, _ = load_dataset("digits", "test")
    assert problem.shape == (1, 8, 8) and problem.latent_dim == 16
    assert truth.extra["feature_extractor"] == "classifier" and truth.extra["n_eval"] == 450
    held = truth.sample_q(len(test))
    # catches: truth drawing from the training split (FID against the data the generator saw), or repeated
    # images within one epoch (a 450-image FID set with duplicates)
    assert sorted(map(tuple, held.tolist())) == sorted(map(tuple, test.reshape(len(test), -1).tolist()))
    x = problem.sample_q(64)
    assert bool((torch.cdist(x, train.reshape(len(train), -1), compute_mode="donot_use_mm_for_euclid_dist").min(1).values < 1e-6).all())
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_epoch_sampler_covers_every_row_once_per_epoch():
    data = torch.arange(10).float()[:, None]
    draw = epoch_sampler(data, seed=1)
    first = torch.cat([draw(3), draw(3), draw(4)])  # one epoch in three calls
    second = draw(10)
    # catches: sampling with replacement, or the same order every epoch
    assert sorted(first[:, 0].tolist()) == list(range(10)) and sorted(second[:, 0].tolist()) == list(range(10))
    assert not torch.equal(first, second)


@pytest.mark.parametrize("cls, params, field", [
    (GaussianMixture, {"layout": "spiral"}, "layout"),
    (GaussianMixture, {"std": -1.0}, "std"),
    (GaussianMixture, {"layout": "grid", "modes": 10}, "square"),
    (KnownPlanTarget, {"side": "x"}, "side"),
    (KnownPlanTarget, {"family": "gaussian"}, "family"),
    (DigitsImages, {"feature_extractor": "vgg"}, "feature_extractor"),
    (DigitsImages, {"classes": 3}, "classes"),
])
def test_invalid_parameters_are_named(cls, params, field):
    with pytest.raises(InvalidInput, match=field):
        cls(**params).build(0, CPU, torch.float32)
