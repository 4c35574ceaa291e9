"""The core ``accuracy`` metric (otbench/metrics/classification.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score

from otbench.api import Solution, Truth
from otbench.metrics import core_metrics
from otbench.metrics.classification import Accuracy, accuracy_scores, predict
from otbench.testing import toy_problem


def _one_hot_classifier(table: torch.Tensor, n_classes: int):
    """A classifier whose prediction for input i (its first coordinate holds i) is table[i]."""
    def classify(x: torch.Tensor) -> torch.Tensor:
        idx = x[:, 0].round().long()
        return torch.nn.functional.one_hot(table[idx], n_classes).float()
    return classify


def test_registered_and_declared():
    assert Accuracy in core_metrics()
    assert Accuracy.needs == {"classifier"} and Accuracy.truth_needs == {"test_inputs", "test_labels"}
    assert Accuracy.outputs["accuracy"] == "max" and Accuracy.outputs["balanced_accuracy"] == "max"


def test_matches_sklearn_on_known_predictions():
    # catches: balanced accuracy computed as plain accuracy, per-class precision instead of recall, off-by-one
    # class indices, a batch boundary dropping or repeating rows (BATCH is beaten with batch=7 below)
    rng = np.random.default_rng(0)
    n, k = 500, 5
    labels = rng.choice(k, size=n, p=[0.5, 0.2, 0.15, 0.1, 0.05])  # skewed so balanced != plain
    preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, k, n))
    inputs = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)
    clf = _one_hot_classifier(torch.as_tensor(preds), k)
    got_preds = predict(clf, inputs, batch=7)
    assert torch.equal(got_preds, torch.as_tensor(preds))
    out = accuracy_scores(got_preds, torch.as_tensor(labels), k)
    assert out["accuracy"] == pytest.approx(accuracy_score(labels, preds), abs=1e-12)
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, preds), abs=1e-12)
    assert abs(out["balanced_accuracy"] - out["accuracy"]) > 1e-3
    recalls = recall_score(labels, preds, average=None, labels=list(range(k)))
    for c in range(k):
        assert out[f"accuracy_class_{c}"] == pytest.approx(recalls[c], abs=1e-12)


def test_absent_class_has_no_output_and_is_left_out_of_balanced():
    # catches: an absent class counted as recall 0 (or 1) in the balanced mean, or reported as NaN (the runner
    # fails any run whose metrics hold a NaN)
    labels = torch.tensor([0, 0, 1, 1])
    preds = torch.tensor([0, 1, 1, 1])
    out = accuracy_scores(preds, labels, 3)
    assert "accuracy_class_2" not in out and not any(math.isnan(v) for v in out.values())
    assert out["balanced_accuracy"] == pytest.approx(0.75)


def test_input_blind_classifier_scores_chance():
    # catches: a metric that reads labels from the solution or scores against the source labels; a constant
    # classifier must score exactly 1/n_classes balanced accuracy and a random one about 1/n_classes
    problem = toy_problem("adaptation")
    gen = torch.Generator().manual_seed(1)
    k = problem.n_classes
    test_labels = torch.arange(k).repeat(400)
    test_inputs = torch.randn(len(test_labels), problem.dim, generator=gen)
    truth = Truth(test_inputs=test_inputs, test_labels=test_labels)
    constant = Solution(classifier=lambda x: torch.tensor([0.0, 1.0, 0.0]).expand(x.shape[0], k))
    out = Accuracy().compute(truth, constant, problem)
    assert out["balanced_accuracy"] == pytest.approx(1 / k) and out["accuracy"] == pytest.approx(1 / k)
    assert out["accuracy_class_1"] == 1.0 and out["accuracy_class_0"] == 0.0
    noise = Solution(classifier=lambda x: torch.randn(x.shape[0], k, generator=gen))
    out = Accuracy().compute(truth, noise, problem)
    assert abs(out["accuracy"] - 1 / k) < 0.05  # 1200 draws: sd ~ 0.014


def test_applies_only_with_classifier_and_test_split():
    problem = toy_problem("transfer")
    truth = Truth(test_inputs=problem.y, test_labels=problem.y_labels)
    assert Accuracy().applies(problem, truth, Solution()) is not None
    assert Accuracy().applies(problem, Truth(), Solution(classifier=lambda x: x)) is not None
    assert Accuracy().applies(toy_problem("continuous"), truth, Solution(classifier=lambda x: x)) is not None
    assert Accuracy().applies(problem, truth, Solution(classifier=lambda x: x)) is None
