"""Core classification metrics for adaptation and transfer problems.

``accuracy`` scores a solution's ``classifier`` on the labelled target test split the task keeps
(``truth.test_inputs`` / ``truth.test_labels``): the plain accuracy, the balanced accuracy (mean of the
per-class recalls, so a classifier that always answers the majority class scores 1/n_classes however skewed
the test split is) and each class's accuracy (recall) as ``accuracy_class_<k>``. A class absent from the test
split has no recall: it is left out of the balanced mean and gets no ``accuracy_class_<k>`` output (the runner
fails any run whose metrics hold a NaN).

The classifier is evaluated in batches of ``BATCH`` under ``torch.no_grad``; its arg-max over the last axis is
the predicted class (ties go to the lowest index, like ``torch.argmax``).
"""

from __future__ import annotations

import torch

from otbench.api import Metric, Problem, Solution, Truth

#: test inputs per classifier call (bounds memory on big test splits)
BATCH = 1024


def predict(classifier, inputs: torch.Tensor, batch: int = BATCH) -> torch.Tensor:
    """Arg-max class of ``classifier`` on ``inputs`` ``[n, dim]``, evaluated in batches without gradients."""
    preds = []
    with torch.no_grad():
        for start in range(0, inputs.shape[0], batch):
            scores = classifier(inputs[start:start + batch])
            preds.append(scores.argmax(dim=-1).to("cpu", torch.int64))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.int64)


def accuracy_scores(preds: torch.Tensor, labels: torch.Tensor, n_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy and per-class accuracy of predicted vs true int labels (1-D tensors)."""
    preds = preds.to("cpu", torch.int64).reshape(-1)
    labels = labels.to("cpu", torch.int64).reshape(-1)
    if preds.shape != labels.shape or labels.numel() == 0:
        raise ValueError(f"need as many predictions as labels (> 0), got {preds.numel()} and {labels.numel()}")
    correct = preds == labels
    out = {"accuracy": float(correct.double().mean())}
    recalls = []
    for k in range(n_classes):
        mask = labels == k
        if mask.any():  # an absent class has no recall (no key rather than NaN)
            recalls.append(float(correct[mask].double().mean()))
            out[f"accuracy_class_{k}"] = recalls[-1]
    out["balanced_accuracy"] = float(sum(recalls) / len(recalls))
    return out


class Accuracy(Metric):
    """Target test accuracy of a classifier, with balanced accuracy and per-class accuracy (accuracy_class_<k>)."""

    name = "accuracy"
    kinds = frozenset({"adaptation", "transfer"})
    needs = frozenset({"classifier"})
    truth_needs = frozenset({"test_inputs", "test_labels"})
    #: per-class outputs ``accuracy_class_<k>`` (k < n_classes, "max") are added per problem
    outputs = {"accuracy": "max", "balanced_accuracy": "max"}

    def compute(self, truth: Truth, solution: Solution, problem: Problem) -> dict[str, float]:
        labels = truth.test_labels
        n_classes = problem.n_classes or int(labels.max()) + 1
        preds = predict(solution.classifier, truth.test_inputs)
        return accuracy_scores(preds, labels, n_classes)


METRICS = [Accuracy]
