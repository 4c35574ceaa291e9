"""Transfer learning (plugins/applied/transfer.py): the W1 prior's critic against POT's exact W1, the L2-SP
penalty's anchor, the value of a source model on a few-label task, the tasks' splits, the source-model cache and
the solver/task contracts. Small data, few steps, one thread."""

from __future__ import annotations

import math

import ot
import pytest
import torch

from otbench.api import InvalidInput
from otbench.testing import check_solver, check_task, toy_problem
from otbench_plugins.applied import transfer as T

CPU = torch.device("cpu")
# tiny settings for the contract checks (16x16 toy images, 3 classes)
TINY = {"steps": 6, "batch_size": 16, "source_steps": 8, "source_batch_size": 16, "channels": [2, 4], "hidden": 8,
        "trace_every": 3}
TINY_W1 = {**TINY, "critic_steps": 2, "critic_width": 8}
SMALL_TASK = {"source_per_class": 20, "test_per_class": 10, "labels_per_class": 3}


def exact_w1(a: torch.Tensor, b: torch.Tensor) -> float:
    """Exact W1 between two uniform point sets (POT's network simplex), float64."""
    a, b = a.double(), b.double()
    m = torch.cdist(a, b)
    return float(ot.emd2(torch.full((a.shape[0],), 1 / a.shape[0], dtype=torch.float64),
                         torch.full((b.shape[0],), 1 / b.shape[0], dtype=torch.float64), m))


# ----------------------------------------------------------------------------------------------------------
# the W1 prior


def test_critic_w1_matches_exact_w1_and_grows_with_displacement():
    # Filter sets like conv1's (12 filters in R^25). The target is the source moved by t * D (a different random
    # displacement per filter) and then shuffled, so index-paired distances are not the answer.
    # Catches: a critic that is not 1-Lipschitz (an unconstrained ReLU net overshoots the exact W1, which the
    # upper tolerance forbids), a critic too weak to find the OT potential (e.g. weight clipping or an untrained
    # one: far below the lower tolerance), a sign error (negative estimates), and a penalty that does not grow
    # as the filters move apart. Tolerance: within 8 % below the exact W1 (a max-min critic trained 300 steps
    # is a lower bound: measured ratios 0.990-0.995) and at most 1e-3 above it (Bjorck orthonormalisation
    # error).
    gen = torch.Generator().manual_seed(3)
    source = torch.randn(12, 25, generator=gen) * 0.2
    move = torch.randn(12, 25, generator=gen) * 0.1
    perm = torch.randperm(12, generator=gen)
    estimates, exacts = [], []
    for t in (0.5, 1.0, 2.0):
        target = (source + t * move)[perm]
        est, ex = T.critic_w1(source, target, steps=300, width=32, lr=1e-2, bjorck_iterations=10, seed=0), \
            exact_w1(source, target)
        assert ex * 0.92 <= est <= ex * (1 + 1e-3) + 1e-4, (t, est, ex)
        estimates.append(est)
        exacts.append(ex)
    assert estimates[0] < estimates[1] < estimates[2]


def _small_source():
    problem = toy_problem("transfer", image=True, seed=0)
    solver = T.W1Prior(**{**TINY_W1, "critic_steps": 20, "layers": "conv"})
    source, _ = solver._source(problem)
    return problem, solver, source


def test_w1_prior_penalty_is_zero_at_the_source_filters_and_positive_after_a_move():
    # The target encoder starts at the source encoder, so every layer's filter distribution equals the source's
    # and the critic's gap must be ~0 however it is trained. Catches: comparing a layer with the wrong source
    # layer or with the *initial random* weights, a target not initialised from the source, or a constant
    # offset in the penalty. After the filters move, the penalty must become clearly positive.
    problem, solver, source = _small_source()
    model = T.LeNet(problem.sample_shape, 3, (2, 4), 8)
    model.load_state_dict({k: v for k, v in source.state_dict().items() if not k.startswith("head.")}, strict=False)
    solver.check_params()
    solver.start(model, source, problem)
    pen, est = solver.penalty(model, 1)
    assert abs(float(pen.detach())) < 1e-6 and all(abs(v) < 1e-6 for v in est.values())
    with torch.no_grad():
        model.conv1.weight.add_(0.5)
    pen, est = solver.penalty(model, 2)
    assert est["w1_conv1"] > 0.1 and abs(est["w1_conv2"]) < 1e-6


def test_filter_points_are_one_point_per_output_filter():
    # Catches flattening the wrong axis (points in R^out instead of R^(c*k*k)).
    net = T.LeNet((1, 28, 28), 5, (6, 16), 120)
    assert T.filter_points(net.conv1).shape == (6, 25)
    assert T.filter_points(net.conv2).shape == (16, 6 * 25)
    assert T.filter_points(net.fc).shape == (120, 16 * 7 * 7)
    assert torch.equal(T.filter_points(net.conv2)[3], net.conv2.weight[3].flatten())


# ----------------------------------------------------------------------------------------------------------
# L2-SP


def test_l2sp_penalty_is_zero_at_the_source_weights_and_quadratic_around_them():
    # Catches: penalising toward zero (plain L2: positive at the source weights), toward the random init, a
    # missing 1/2 or a penalty on the head toward the source head (the head is new: plain L2 with beta).
    problem, _, source = _small_source()
    ref = {n: q.detach().clone() for n, q in source.named_parameters()}
    model = T.LeNet(problem.sample_shape, 3, (2, 4), 8)
    model.load_state_dict(source.state_dict())
    assert float(T.l2sp_penalty(model, ref, alpha=0.1, beta=0.0).detach()) == 0.0
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] += 0.3
    assert math.isclose(float(T.l2sp_penalty(model, ref, alpha=0.1, beta=0.0).detach()), 0.5 * 0.1 * 0.09, rel_tol=1e-5)
    head_sq = sum(float((q.detach() ** 2).sum()) for _, q in model.head_parameters())
    assert math.isclose(float(T.l2sp_penalty(model, ref, alpha=0.0, beta=0.02).detach()), 0.01 * head_sq, rel_tol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# transfer helps where it must


def test_finetuning_from_the_source_beats_target_only_on_a_few_label_task():
    # Same-domain control: a source CNN trained on 200 Fashion-MNIST images per class, then 2 labels per class
    # and a short run (40 steps, lr 3e-4). Catches: source weights not loaded into the target encoder
    # (fine-tuning then equals target-only), a head copied from the source in the wrong class order, or a
    # source model that was never trained. Measured margins 0.07-0.15 (3 seeds, 500 test images each).
    task = T.FashionSplitTransfer(source_classes=list(range(10)), target_classes=list(range(10)),
                                  source_per_class=200, test_per_class=50, labels_per_class=2)
    params = {"steps": 40, "lr": 3e-4, "source_steps": 300, "source_batch_size": 64}
    margins = []
    for seed in (0, 1, 2):
        problem, truth = task.build(seed, CPU, torch.float32)
        accs = []
        for cls in (T.TargetOnly, T.FineTune):
            solver = cls(**params)
            solver.prepare(problem)
            scores = solver.solve(problem).classifier(truth.test_inputs)
            accs.append(float((scores.argmax(1) == truth.test_labels).double().mean()))
        margins.append(accs[1] - accs[0])
    assert min(margins) > 0 and sum(margins) / 3 >= 0.05, margins


# ----------------------------------------------------------------------------------------------------------
# tasks


def test_fashion_split_keeps_source_fixed_and_draws_disjoint_relabelled_targets():
    # Catches: a source split that changes with the run seed (the per-process source cache would then never
    # hit and methods would not share a source model), target labels not relabelled to 0..4, target images
    # leaking into the source, or a test split of the wrong classes.
    task = T.FashionSplitTransfer(**SMALL_TASK)
    p0, t0 = task.build(0, CPU, torch.float32)
    p1, _ = task.build(1, CPU, torch.float32)
    assert torch.equal(p0.x, p1.x) and not torch.equal(p0.y, p1.y)
    assert p0.n_classes == 5 and p0.shape == (1, 28, 28) and p0.value_range == (0.0, 1.0)
    assert sorted(p0.y_labels.unique().tolist()) == list(range(5))
    assert torch.bincount(p0.y_labels).tolist() == [3] * 5 and torch.bincount(p0.x_labels).tolist() == [20] * 5
    assert t0.test_inputs.shape == (50, 784) and sorted(t0.test_labels.unique().tolist()) == list(range(5))
    from otbench.data import load_dataset

    xe, ye = load_dataset("fashion_mnist", "test", classes=[5])  # sandals are target class 0
    first = {bytes(r.numpy().tobytes()) for r in xe.reshape(len(xe), -1)}
    assert all(bytes(r.numpy().tobytes()) in first for r in t0.test_inputs[t0.test_labels == 0])
    # a same-domain control never reuses a source image as a target label
    same = T.FashionSplitTransfer(source_classes=[0, 1], target_classes=[0, 1], **SMALL_TASK)
    ps, _ = same.build(0, CPU, torch.float32)
    src_rows = {bytes(r.numpy().tobytes()) for r in ps.x}
    assert not any(bytes(r.numpy().tobytes()) in src_rows for r in ps.y)


def test_digits_are_upsampled_into_mnist_layout():
    # Catches: digits left at 8x8 (a shape mismatch with the Fashion-MNIST source), values outside [0, 1], or
    # a digit not centred in its 20x20 box (the 4-pixel border must stay empty).
    from otbench.data import load_dataset

    x, _ = load_dataset("digits", "train")
    big = T.digits_28(x[:50])
    assert big.shape == (50, 1, 28, 28) and float(big.min()) >= 0.0 and float(big.max()) <= 1.0
    assert float(big[:, :, :4].abs().max()) == 0.0 and float(big[:, :, :, -4:].abs().max()) == 0.0
    assert float(big[:, :, 4:24, 4:24].mean()) > 0.1
    p, t = T.FashionToDigits(**SMALL_TASK).build(0, CPU, torch.float32)
    assert p.n_classes == 10 and p.y.shape == (30, 784) and t.test_inputs.shape == (100, 784)


@pytest.mark.parametrize("cls", [T.FashionSplitTransfer, T.FashionToDigits])
def test_tasks_pass_the_conformance_kit(cls):
    check_task(cls, SMALL_TASK)


def test_task_parameters_are_validated():
    with pytest.raises(InvalidInput, match="labels_per_class"):
        T.FashionSplitTransfer(labels_per_class=0).build(0, CPU, torch.float32)
    with pytest.raises(InvalidInput, match="target_classes"):
        T.FashionSplitTransfer(target_classes=[5, 5]).build(0, CPU, torch.float32)
    with pytest.raises(InvalidInput, match="labels_per_class=500"):  # digits have ~135 training images per class
        T.FashionToDigits(labels_per_class=500, source_per_class=5).build(0, CPU, torch.float32)


# ----------------------------------------------------------------------------------------------------------
# solvers: contract, cache, validation


@pytest.mark.parametrize("cls", T.TRANSFER_SOLVERS)
def test_solvers_pass_the_conformance_kit(cls):
    check_solver(cls, TINY_W1 if cls is T.W1Prior else TINY)


def test_source_model_is_cached_by_content():
    # Catches a cache keyed by object identity (a rebuilt problem with the same data would retrain) or one that
    # ignores the data (a different source set would reuse the wrong model).
    T.clear_source_cache()
    kw = {"channels": (2, 4), "hidden": 8, "steps": 5, "batch_size": 8, "lr": 1e-3, "seed": 0}
    a, info_a = T.source_model(toy_problem("transfer", image=True, seed=0), **kw)
    b, info_b = T.source_model(toy_problem("transfer", image=True, seed=0), **kw)
    assert info_a["source_train_seconds"] == info_b["source_train_seconds"]  # not retrained
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    other = toy_problem("transfer", image=True, seed=1)
    c, _ = T.source_model(other, **kw)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


@pytest.mark.parametrize("cls,params,field", [
    (T.FineTune, {"steps": -1}, "steps"),
    (T.FineTune, {"lr": "fast"}, "lr"),
    (T.FineTune, {"channels": [4]}, "channels"),
    (T.FineTuneL2, {"weight_decay": -1.0}, "weight_decay"),
    (T.L2SP, {"alpha": float("nan")}, "alpha"),
    (T.W1Prior, {"critic_width": 7}, "critic_width"),
    (T.W1Prior, {"layers": "fc"}, "layers"),
    (T.W1Prior, {"critic_steps": 0}, "critic_steps"),
])
def test_solver_parameters_are_validated(cls, params, field):
    with pytest.raises(InvalidInput, match=field):
        cls(**params).solve(toy_problem("transfer", image=True))


def test_w1_prior_records_its_estimates_in_the_trace():
    # The trace carries the per-layer W1 estimates (what a reader checks to see the prior act).
    sol = T.W1Prior(**TINY_W1).solve(toy_problem("transfer", image=True))
    assert {"w1_conv1", "w1_conv2", "w1_fc", "cross_entropy", "penalty"} <= set(sol.trace[-1])
    assert sol.info["critic_orthogonality_error"] < 1e-2


def test_a_suite_cell_runs_end_to_end_and_is_scored_by_accuracy(tmp_path):
    # Through the runner: prepare (source model) + timed solve + the core accuracy metric on the task's test
    # split. Catches a classifier the metric cannot call (wrong input shape), scores for the wrong number of
    # classes, or a prepare/solve split that breaks under the runner.
    from otbench.registry import load_registry
    from otbench.runner import execute_run
    from otbench.suite import load_suite, plan_runs

    suite = tmp_path / "s.yaml"
    suite.write_text(
        "name: tl\nseeds: [0]\nmetrics: [accuracy]\n"
        "tasks: [{name: fashion_to_digits, params: {source_per_class: 20, test_per_class: 10, labels_per_class: 3}}]\n"
        "solvers: [{name: tl_w1prior, params: {steps: 4, batch_size: 16, source_steps: 5, channels: [2, 4], "
        "hidden: 8, critic_steps: 2, critic_width: 8, trace_every: 2}}]\n")
    spec = plan_runs(load_suite(suite), load_registry(), "cpu")[0]
    rec = execute_run(spec, load_registry())
    assert rec["status"] == "ok", rec.get("error")
    assert 0.0 <= rec["metrics"]["accuracy"] <= 1.0 and "balanced_accuracy" in rec["metrics"]
    assert "accuracy_class_9" in rec["metrics"] and rec["trace"][-1]["iteration"] == 4


def test_solvers_refuse_the_oracle_twins_of_adaptation_tasks():
    # plugins/applied/adaptation.py marks its all-labels twins with info["oracle_twin"]; in the shared suite the
    # runner crosses every task with every solver, so these must be skipped with a reason, not run.
    problem = toy_problem("transfer", image=True)
    problem.info["oracle_twin"] = True
    for cls in T.TRANSFER_SOLVERS:
        assert "oracle twin" in (cls().supports(problem) or "")
    problem.info["oracle_twin"] = False
    assert all(cls().supports(problem) is None for cls in T.TRANSFER_SOLVERS)
