"""Domain adaptation (plugins/applied/): offline domain pairs, tasks, and the solvers' contracts and behaviour.

Training here uses tiny LeNets (4/8 channels, 32 features) and a few hundred steps on the digits -> digits-M
pair, so every assertion is a coarse property with a wide margin, not a tuned figure.
"""

from __future__ import annotations

import pytest
import torch

from otbench.api import Truth
from otbench.metrics.classification import Accuracy
from otbench.testing import check_solver, check_task
from otbench_plugins.applied import adaptation as A
from otbench_plugins.applied.domains import PHOTOS, blend_onto_photos, domain_pair, load_domain, photo_bank

CPU = torch.device("cpu")
TINY = {"widths": (4, 8), "features": 32, "batch_size": 32, "lr": 2e-3}


# ------------------------------------------------------------------------------------------------ domains

def test_photos_ship_with_scikit_image():
    # catches: a photo list that needs pooch downloads (no network at run time)
    bank = photo_bank()
    assert len(bank) >= 4 and len(bank) <= len(PHOTOS)
    assert all(p.shape[0] == 3 and p.min() >= 0 and p.max() <= 1 for p in bank)


def test_blend_is_the_mnist_m_recipe():
    # catches: a blend that multiplies or adds instead of |patch - digit| (then blend(0) + blend(1) != 1), and
    # patches that ignore the seed
    zeros, ones = torch.zeros(16, 1, 28, 28), torch.ones(16, 1, 28, 28)
    a, b = blend_onto_photos(zeros, seed=3), blend_onto_photos(ones, seed=3)
    assert a.shape == (16, 3, 28, 28)
    torch.testing.assert_close(a + b, torch.ones_like(a))
    assert not torch.equal(a, blend_onto_photos(zeros, seed=4))
    assert (a[:, 0] - a[:, 1]).abs().mean() > 0.01  # colour, not grey


def test_source_and_target_are_different_images():
    # catches: target = re-coloured copies of the source images (halves not disjoint), or a grey source left
    # with 1 channel against a colour target
    src, _ = load_domain("digits", "train", seed=0, half=0)
    tgt_grey, _ = load_domain("digits", "train", seed=0, half=1)
    flat_s, flat_t = src.reshape(len(src), -1), tgt_grey.reshape(len(tgt_grey), -1)
    assert torch.cdist(flat_s, flat_t).min() > 0  # no image of one half in the other
    pair = domain_pair("digits", "digits_m", seed=0)
    assert pair.source_train[0].shape[1] == pair.target_train[0].shape[1] == 3
    assert len(pair.source_train[0]) + len(pair.target_train[0]) == 1347
    grey = pair.source_train[0]
    assert torch.equal(grey[:, 0], grey[:, 1])  # replicated grey
    xt = pair.target_train[0]
    assert (xt[:, 0] - xt[:, 1]).abs().mean() > 0.01
    assert pair.source_train[0].shape[2:] == (28, 28)


def test_covariate_shift_pair_inverts_fashion():
    # catches: the covariate-shift target not being the transformed source distribution
    pair = domain_pair("fashion", "fashion_inverted", seed=0, n_source=64, n_target=64, n_test=32)
    (xs, _), (xt, _) = pair.source_train, pair.target_train
    assert xs.shape == xt.shape == (64, 1, 28, 28)
    assert xs.mean() < 0.5 < xt.mean()  # dark background vs bright background


def test_user_datasets_need_a_path():
    # catches: a loader that silently falls back to another dataset when MNIST / SVHN are absent
    from otbench.data import DatasetMissing
    with pytest.raises(DatasetMissing):
        load_domain("mnist_m", "train", path="/nonexistent/mnist")
    with pytest.raises(DatasetMissing):
        load_domain("svhn", "train", path="/nonexistent/svhn")


# -------------------------------------------------------------------------------------------------- tasks

def test_tasks_pass_the_conformance_kit():
    check_task(A.DomainAdaptationTask)
    check_task(A.DomainOracleTask)


def test_adaptation_hides_target_labels_and_oracle_twin_exposes_them():
    # catches: target labels leaking into the adaptation problem, or a twin built on different data
    p, t = A.DomainAdaptationTask().build(0, CPU, torch.float32)
    q, _ = A.DomainOracleTask().build(0, CPU, torch.float32)
    assert p.kind == "adaptation" and p.y_labels is None and p.n_classes == 10 and p.shape == (3, 28, 28)
    assert q.kind == "transfer" and q.info["oracle_twin"] and torch.equal(p.y, q.y) and torch.equal(p.x, q.x)
    assert q.y_labels.shape == (p.y.shape[0],)
    assert t.test_inputs.shape == (450, p.dim) and t.test_labels.dtype == torch.int64
    with pytest.raises(Exception, match="source"):
        A.DomainAdaptationTask(source="nope").build(0, CPU, torch.float32)


# ------------------------------------------------------------------------------------------------ solvers

@pytest.mark.parametrize("cls, params", [
    (A.SourceOnly, {**TINY, "steps": 5}),
    (A.TargetOnly, {**TINY, "steps": 5}),
    (A.OTDA, {**TINY, "steps": 5, "head_steps": 5, "n_fit": 30}),
    (A.OTDA, {**TINY, "steps": 5, "head_steps": 5, "transport": "emd", "space": "pixels"}),
    (A.DeepJDOT, {**TINY, "steps": 5, "warmup": 2}),
    (A.DeepCORAL, {**TINY, "steps": 5}),
    (A.DASPOT, {**TINY, "iterations": 3, "pretrain": 2, "gen_width": 4, "critic_widths": (4, 4),
                "critic_features": 8, "latent_dim": 8}),
])
def test_solvers_pass_the_conformance_kit(cls, params):
    check_solver(cls, params)


def test_invalid_parameters_are_named():
    with pytest.raises(Exception, match="transport"):
        A.OTDA(transport="gromov").solve(A.DomainAdaptationTask().build(0, CPU, torch.float32)[0])
    with pytest.raises(Exception, match="eta_da"):
        A.DASPOT(eta_da=-1).solve(A.DomainAdaptationTask().build(0, CPU, torch.float32)[0])


def _score(solver, task, seed=0):
    problem, truth = task.build(seed, CPU, torch.float32)
    sol = solver.solve(problem)
    target = Accuracy().compute(truth, sol, problem)["accuracy"]
    source = Accuracy().compute(Truth(test_inputs=truth.extra["source_test_inputs"],
                                      test_labels=truth.extra["source_test_labels"]), sol, problem)["accuracy"]
    return target, source, sol


def test_digits_m_is_a_real_shift_and_the_oracle_is_its_ceiling():
    # catches: a target domain equal to the source (no drop), an oracle that never sees the target labels (it
    # would score like source-only), and a task whose test split is not the target's
    steps = {**TINY, "steps": 250}
    src_on_target, src_on_source, _ = _score(A.SourceOnly(**steps), A.DomainAdaptationTask())
    oracle, _, _ = _score(A.TargetOnly(**steps), A.DomainOracleTask())
    assert src_on_source > 0.8
    assert src_on_source - src_on_target > 0.25      # measured: 0.93 vs 0.3-0.4
    assert oracle - src_on_target > 0.2              # measured: ~0.75
    assert oracle > src_on_source - 0.3


def test_jdot_cost_matches_its_definition():
    # catches: the label term indexed [target, source] instead of [source, target], a missing square on the
    # feature distance, or CE taken on the source logits
    gen = torch.Generator().manual_seed(0)
    gs, gt = torch.randn(5, 3, generator=gen), torch.randn(4, 3, generator=gen)
    logits_t, labels = torch.randn(4, 6, generator=gen), torch.tensor([0, 5, 2, 2, 1])
    cost = A.jdot_cost(gs, gt, logits_t, labels, alpha=0.3, lambda_t=2.0)
    logp = torch.log_softmax(logits_t, dim=1)
    for i in range(5):
        for j in range(4):
            want = 0.3 * (gs[i] - gt[j]).square().sum() - 2.0 * logp[j, labels[i]]
            assert cost[i, j] == pytest.approx(float(want), rel=1e-5)


def test_coral_loss_is_the_scaled_covariance_gap():
    # catches: covariances without centring, or a norm other than the squared Frobenius one over 4 d^2
    import numpy as np
    gen = torch.Generator().manual_seed(1)
    fs, ft = torch.randn(50, 4, generator=gen, dtype=torch.float64), 2 * torch.randn(40, 4, generator=gen, dtype=torch.float64) + 3
    want = ((np.cov(fs.numpy(), rowvar=False) - np.cov(ft.numpy(), rowvar=False)) ** 2).sum() / (4 * 16)
    assert float(A.coral_loss(fs, ft)) == pytest.approx(want, rel=1e-10)
    assert float(A.coral_loss(fs, fs + 5.0)) == pytest.approx(0.0, abs=1e-12)  # a shift has the same covariance


def test_short_deepjdot_run_is_not_worse_than_source_only():
    # catches: a DeepJDOT loss that pushes features apart or trains on the wrong labels (a sign error or a
    # transposed plan drags target accuracy well below the source-only floor); measured at this budget:
    # source-only 0.33 / 0.32, DeepJDOT 0.32 / 0.34 (seeds 0 / 1), so the margin is wide
    src, _, _ = _score(A.SourceOnly(**TINY, steps=250), A.DomainAdaptationTask())
    jdot, jdot_src, sol = _score(A.DeepJDOT(**TINY, steps=125, warmup=125), A.DomainAdaptationTask())
    assert jdot > src - 0.1 and jdot_src > 0.8
    assert sol.trace[-1]["jdot_loss"] > 0


def test_daspot_couples_a_grey_source_with_a_colour_target():
    # catches: critics or generator heads swapped between the domains, or a generator that ignores the
    # marginal constraints: the source (grey digits replicated to 3 channels) has R = G exactly, the target
    # (digits-M) does not, so G_X(z) must come out greyer than G_Y(z). Measured: mean |R - G| 0.04 (G_X) vs
    # 0.16 (G_Y) after 100 iterations (pretrain 50), seed 0.
    _, _, sol = _score(A.DASPOT(**TINY, iterations=100, pretrain=50, gen_width=8, critic_widths=(4, 8),
                                critic_features=16, latent_dim=16), A.DomainAdaptationTask())
    gx, gy = sol.plan_samples(256)
    assert gx.shape == gy.shape == (256, 3 * 28 * 28) and 0 <= float(gx.min()) and float(gy.max()) <= 1

    def colour(g: torch.Tensor) -> float:
        img = g.reshape(-1, 3, 28 * 28)
        return float((img[:, 0] - img[:, 1]).abs().mean())

    assert colour(gy) > 1.5 * colour(gx)  # seed 1 measured 0.05 vs 0.10: the margin holds across seeds
    assert all(torch.isfinite(torch.tensor(t["transport_cost"])) for t in sol.trace if "transport_cost" in t)
