"""The published MinFunnel pairs and metrics of Korotin et al. 2022, and the like-for-like solver variants.

- the 28 shipped pair files load, sit in the box and pass the optimality certificate; our Monte Carlo W1 of a
  published pair agrees with the authors' own "true" value (a wrong file, a swapped centre/offset or another
  construction would not);
- ``pairs: published`` rejects cells outside the published grid and clashes with ``pairs_file``;
- the tidy table holds every (dim, funnels, method) and maps to our metric names; ``Task.published`` answers
  only for like-for-like solver parameters and only for published pairs; the runner stores it and survives a
  task whose ``published`` raises;
- SN with ``sigma_grad: false`` has no gradient through sigma; MM:R with ``score: mover`` is scored on the
  mover's direction (checked against a hand computation).
"""

from __future__ import annotations

import math

import pytest
import torch

from otbench.api import InvalidInput, Task, Truth
from otbench.metrics.w1 import W1Gradient
from otbench.registry import get_registry
from otbench.runner import _attach_published, execute_run
from otbench.suite import RunSpec
from otbench_plugins.w1.closed_form import GaussianShift
from otbench_plugins.w1.critics import SpectralLinear, SpectralNorm
from otbench_plugins.w1.known_plans import (PUBLISHED_GRID, MinFunnel, MinFunnelPair, certify, load_funnel_file,
                                           published_pair_file, truth_stats)
from otbench_plugins.w1.maximin import MMR
from otbench_plugins.w1.published_metrics import (METHODS, PUBLISHED_METHODS, counterpart_method, load_table,
                                                  published_metrics)

CPU = torch.device("cpu")


def test_every_shipped_pair_loads_with_its_shape_inside_the_box():
    # a file for the wrong cell, or centres and offsets swapped, has the wrong shape
    assert len(PUBLISHED_GRID) == 28
    for dim, funnels in sorted(PUBLISHED_GRID):
        centres, offsets = load_funnel_file(published_pair_file(dim, funnels))
        assert centres.shape == (funnels, dim) and offsets.shape == (funnels,)
        assert centres.abs().max() <= 2.5 and offsets.abs().max() < 1.0  # offsets are 0.1 * N(0, 1)


@pytest.mark.parametrize("dim,funnels", [(2, 4), (16, 64), (128, 4), (128, 256)])
def test_published_pairs_pass_the_certificate(dim, funnels):
    torch.set_num_threads(1)
    centres, offsets = load_funnel_file(published_pair_file(dim, funnels))
    pot = MinFunnel(centres, offsets, box=2.5, power=8)
    gen = torch.Generator().manual_seed(0)
    x, y = pot.sample_plan(2048, gen, rho=0.0)
    residual, grad_dev = certify(pot, x, y, gen=gen)  # raises CertificateError on failure
    assert residual <= 1e-8 and grad_dev <= 1e-6


@pytest.mark.parametrize("dim,funnels", [(16, 4), (2, 64)])
def test_our_true_w1_of_a_published_pair_matches_the_authors_true_value(dim, funnels):
    # the authors' "true" row is E|x - y| over their own plan samples; another construction (another p, box, a
    # wrong ray end) moves W1 by far more than the Monte Carlo error (~0.5 % here)
    torch.set_num_threads(1)
    pot = MinFunnelPair(dim=dim, funnels=funnels, pairs="published").potential()
    stats = truth_stats(pot, 32768, seed=1, device=CPU, rho=0.0)
    published = published_metrics(dim, funnels, "true")["w1_true"]
    assert abs(stats.w1 - published) <= 4 * stats.w1_se + 0.01 * published, (stats.w1, stats.w1_se, published)


def test_published_pairs_reject_cells_outside_the_grid_and_a_pairs_file():
    with pytest.raises(InvalidInput, match="published set is dim in"):
        MinFunnelPair(dim=3, funnels=4, pairs="published").potential()
    with pytest.raises(InvalidInput, match="either pairs='published' or a pairs_file"):
        MinFunnelPair(dim=2, funnels=4, pairs="published", pairs_file="x.pt").potential()
    with pytest.raises(InvalidInput, match="pairs must be"):
        MinFunnelPair(dim=2, funnels=4, pairs="shipped").potential()
    with pytest.raises(InvalidInput, match="box=2.5 and power=8"):
        MinFunnelPair(dim=2, funnels=4, pairs="published", power=4).potential()


def test_published_and_pairs_file_give_the_same_pair():
    # pairs_file keeps working; loading the shipped file through it gives the same potential
    path = str(published_pair_file(2, 4)).replace("dim_2_width_4", "dim_{dim}_width_{funnels}")
    a = MinFunnelPair(dim=2, funnels=4, pairs="published").potential()
    b = MinFunnelPair(dim=2, funnels=4, pairs_file=path).potential()
    assert torch.equal(a.centres, b.centres) and torch.equal(a.offsets, b.offsets)
    g = MinFunnelPair(dim=2, funnels=4).potential()  # generated (the default) is another pair
    assert not torch.equal(a.centres, g.centres)


def test_table_is_complete_and_maps_to_our_metric_names():
    table = load_table()
    assert len(table) == 28 * len(METHODS)
    for dim, funnels in PUBLISHED_GRID:
        assert table[(dim, funnels, "true")]["cos"] == 1.0 and table[(dim, funnels, "true")]["l2"] == 0.0
    m = published_metrics(16, 4, "wgan-gp")
    row, true = table[(16, 4, "wgan-gp")], table[(16, 4, "true")]["cost"]
    assert m["grad_cos"] == row["cos"] and m["grad_l2"] == row["l2"] and m["w1_estimate"] == row["cost"]
    assert m["w1_rel_error_pct"] == pytest.approx(100 * abs(row["cost"] - true) / true)
    assert m["w1_true"] == true


def test_like_for_like_mapping_needs_the_structural_parameters():
    # textbook SN and critic-scored MM:R are other methods than the published rows: no reference for them
    assert counterpart_method("wgan_sn", {}) is None
    assert counterpart_method("wgan_sn", {"sigma_grad": False}) == "sn-gan"
    assert counterpart_method("mm_r", {}) is None
    assert counterpart_method("mm_r", {"score": "mover"}) == "3p-wgan_rev"
    assert counterpart_method("groupsort_so", {"group_size": 2}) is None
    assert counterpart_method("reg_ls", {"pairs": "all"}) is None
    assert counterpart_method("spot", {}) is None
    assert "cowgan" not in PUBLISHED_METHODS
    for name in ("wgan_wc", "wgan_gp", "wgan_lp", "groupsort_so", "mm", "mm_b", "reg_ls", "exact_lp"):
        assert counterpart_method(name, {}) is not None, name


def test_task_published_only_for_published_pairs_and_lists_budget_differences():
    task = MinFunnelPair(dim=16, funnels=4, pairs="published")
    ref = task.published("wgan_gp", {"iterations": 3000, "lr": 0.001})
    assert ref["method"] == "wgan-gp" and "dim_16/width_4" in ref["source"]
    assert ref["metrics"]["grad_cos"] == load_table()[(16, 4, "wgan-gp")]["cos"]
    assert any(d.startswith("iterations 3000") for d in ref["differences"])
    assert MinFunnelPair(dim=16, funnels=4).published("wgan_gp", {}) is None  # generated: other pairs
    assert Task().published("wgan_gp", {}) is None  # the base contract: no reference


def test_differences_name_the_adam_betas_where_ours_differ():
    # the notebook trains WGAN-qp (MM:B) and LSOT with Adam's default betas, 3P-WGAN with (0, 0.9); a comparison
    # that ignored betas, or compared a suite's list to the published tuple as unequal, would say otherwise
    task = MinFunnelPair(dim=16, funnels=4, pairs="published")
    assert "betas (0.0, 0.9) (published (0.9, 0.999))" in task.published("mm_b", {"betas": [0, 0.9]})["differences"]
    assert "betas (0.0, 0.9) (published (0.9, 0.999))" in task.published("reg_ls", {"betas": [0, 0.9]})["differences"]
    for solver in ("mm_b", "reg_ls"):  # our defaults are the published ones; a suite's list equals the tuple
        for params in ({}, {"betas": [0.9, 0.999]}):
            assert not any(d.startswith("betas") for d in task.published(solver, params)["differences"])
    assert not any(d.startswith("betas") for d in task.published("mm", {"mover_residual": False})["differences"])


def _spec(solver: str, params: dict, task_params: dict) -> RunSpec:
    return RunSpec(suite="s", task="min_funnel", task_label="f", task_params=task_params, solver=solver,
                   solver_label=solver, solver_params=params, seed=0, device="cpu", dtype="float32", timeout=60.0,
                   threads=1, metrics=("w1_gradient",), budget="default", code_version="0", key="k")


def test_runner_attaches_the_reference_and_survives_a_failing_task_published():
    task_params = {"dim": 2, "funnels": 4, "pairs": "published", "truth_samples": 4096}
    record = execute_run(_spec("exact_lp", {"n_samples": 256}, task_params), get_registry())
    assert record["status"] == "ok", record.get("error")
    assert record["published"]["method"] == "dot"
    assert record["published"]["metrics"]["w1_true"] == load_table()[(2, 4, "true")]["cost"]

    class Broken:
        def published(self, solver, params):
            raise RuntimeError("no table")

    rec: dict = {"status": "ok"}
    _attach_published(rec, Broken(), _spec("exact_lp", {}, task_params))
    assert "published" not in rec and "no table" in rec["warnings"][0]

    class Malformed:  # a NaN value, no source: must not reach the report half-valid
        def published(self, solver, params):
            return {"method": "x", "metrics": {"grad_cos": float("nan")}}

    rec = {"status": "ok"}
    _attach_published(rec, Malformed(), _spec("exact_lp", {}, task_params))
    assert "published" not in rec and "source" in rec["warnings"][0] and "grad_cos" in rec["warnings"][0]


def test_min_funnel_published_answers_pass_the_conformance_kit():
    from otbench.testing import check_task, published_problems
    from otbench_plugins.w1.known_plans import MinFunnelPair

    check_task(MinFunnelPair, {"dim": 2, "funnels": 4, "pairs": "published", "truth_samples": 4096},
               published_for=[("wgan_gp", {}), ("wgan_sn", {"sigma_grad": False}), ("mm_r", {"score": "mover"}),
                              ("exact_lp", {})])
    assert published_problems({"source": "s", "method": "m", "metrics": {"a": 1.0}}) == []
    assert published_problems({"source": "", "method": "m", "metrics": {"a": True}})  # empty source, a bool


# ---------------------------------------------------------------------------------------------------------------
# like-for-like solver variants


@pytest.mark.parametrize("sigma_grad", [False, True])
def test_detached_sigma_sn_has_no_gradient_through_sigma(sigma_grad):
    # With sigma detached, d loss / d W = (d loss / d W_eff) / sigma exactly; the textbook layer adds the term
    # through sigma = u^T W v, so the same identity must FAIL for it (the test tells the two apart).
    torch.manual_seed(0)
    layer = SpectralLinear(6, 5, power_iterations=3, sigma_grad=sigma_grad)
    layer.power_step(20)
    x = torch.randn(32, 6)
    w_eff = (layer.weight / layer.sigma()).detach().requires_grad_(True)
    loss_eff = torch.nn.functional.linear(x, w_eff, layer.bias).pow(2).sum()
    (g_eff,) = torch.autograd.grad(loss_eff, w_eff)
    loss = torch.nn.functional.linear(x, layer.effective_weight(), layer.bias).pow(2).sum()
    (g,) = torch.autograd.grad(loss, layer.weight)
    sigma = float(layer.sigma().detach())
    same = torch.allclose(g, g_eff / sigma, rtol=1e-4, atol=1e-6)
    assert same is (not sigma_grad)


def test_sn_sigma_grad_parameter_is_validated_and_reaches_the_layers():
    with pytest.raises(InvalidInput, match="sigma_grad"):
        SpectralNorm(sigma_grad="no").check_params()
    net = SpectralNorm(sigma_grad=False, width=8).build(3)
    layers = [m for m in net.modules() if isinstance(m, SpectralLinear)]
    assert layers and all(not m.sigma_grad for m in layers)


def test_mm_r_score_mover_is_scored_on_the_mover_direction():
    torch.set_num_threads(1)
    problem, truth = GaussianShift(dim=2, shift=2.0).build(0, CPU, torch.float32)
    params = {"iterations": 20, "mover_steps": 2, "batch_size": 64, "eval_samples": 256, "width": 16,
              "trace_every": 10}
    mover_sol = MMR(**params, score="mover").solve(problem)
    critic_sol = MMR(**params).solve(problem)
    assert mover_sol.critic is None and mover_sol.map is not None and critic_sol.critic is not None
    # a fixed evaluation sample, so that the metric and the hand computation see the same points
    xs = truth.sample_p(512)
    fixed = Truth(distance=truth.distance, critic_grad=truth.critic_grad, sample_p=lambda n: xs[:n],
                  sample_q=truth.sample_q)
    with torch.no_grad():
        d = (xs - mover_sol.map(xs)).double()
    g = truth.critic_grad(xs).double()
    hand = float(((d * g).sum(1) / (d.norm(dim=1) * g.norm(dim=1) + 1e-15)).mean())
    got = W1Gradient().compute(fixed, mover_sol, problem)
    assert got["grad_cos"] == pytest.approx(hand, abs=1e-9)
    assert got["w1_estimate"] == mover_sol.distance  # the critic's estimate, as published
    assert math.isfinite(W1Gradient().compute(fixed, critic_sol, problem)["grad_cos"])
    with pytest.raises(InvalidInput, match="score"):
        MMR(**params, score="both").solve(problem)
