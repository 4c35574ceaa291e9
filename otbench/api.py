"""The nouns every plugin codes against: Problem, Solution, Truth, Task, Solver, Metric.

A *task* builds a ``Problem`` (what the solver may see) and a ``Truth`` (what only the metrics see).
A *solver* turns a ``Problem`` into a ``Solution`` that declares which parts it holds. A *metric* is a
function of (truth, solution, problem) that returns named numbers; the runner applies every metric whose
needs are met by the solution and the truth.

Conventions (used by every built-in metric):
- Continuous problems: ``sample_p(n)`` / ``sample_q(n)`` return ``[n, dim]`` tensors on ``problem.device``.
- A *critic* ``f`` maps ``[n, dim] -> [n]`` and maximises ``E_P f - E_Q f`` (so ``W1 ~ E_P f - E_Q f``).
- A *map* ``T`` pushes P onto Q: ``T([n, dim]) -> [n, dim]``.
- A discrete *plan* is an ``[n, m]`` matrix whose row sums are ``a`` and column sums are ``b``.
- *Plan samples* are paired ``(x, y)`` tensors from a coupling of P and Q.
- Points are always passed *flat*, ``[n, dim]``; ``problem.shape`` (e.g. ``(1, 28, 28)``) says how to view one
  point, so a vector solver runs unchanged on images and a convolutional one reshapes with
  ``problem.as_images``. Image values lie in ``problem.value_range`` (``(0, 1)`` for the built-in image data).

Problem kinds (a solver declares which it accepts; the runner skips the others with a reason):
- ``continuous``: samplers of P and Q in R^dim (point clouds, or images when ``shape`` has three axes: unpaired
  translation is a continuous problem on images whose solution is a ``map``).
- ``discrete``: weights ``a``, ``b`` and points ``x``, ``y`` and/or a ``cost_matrix``.
- ``generative``: ``sample_p`` draws the latent measure (``[n, latent_dim]``), ``sample_q`` the training data
  (``[n, dim]``); the solution is a ``generator``: ``n -> [n, dim]`` (or ``[n, *shape]``), a seeded stream
  (the same solver seed gives the same draws; successive calls give fresh samples).
- ``adaptation``: labelled source ``x``/``x_labels`` and *unlabelled* target ``y`` (``y_labels`` is None);
  the solution is a ``classifier`` scored on the target test split the truth keeps.
- ``transfer``: labelled source ``x``/``x_labels`` and a (typically small) labelled target training set
  ``y``/``y_labels``; the solution is a ``classifier`` scored on the target test split.
- ``barycenter``: ``measures`` (``[K, n]`` histograms on the common support ``x``, ``[n, dim]``, e.g. the pixels
  of a grid whose layout ``grid_shape`` gives) with ``measure_weights`` (``[K]``, summing to 1) and the ground
  ``cost`` between support points (``cost_matrix`` when given); the solution is a ``barycenter``: a histogram
  ``[n]`` on the same support minimising ``sum_k w_k OT(q, p_k)``.
A *classifier* maps ``[n, dim] -> [n, n_classes]`` scores (logits or probabilities; the arg-max is the class).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # torch is imported lazily so that listing plugins stays fast
    import torch

__all__ = [
    "PROBLEM_KINDS",
    "INPUT_FORMS",
    "SOLUTION_PARTS",
    "Problem",
    "Solution",
    "Truth",
    "Task",
    "Solver",
    "Metric",
    "OTBenchError",
    "UnsupportedProblem",
    "InvalidInput",
    "SolverDidNotConverge",
    "published_problems",
]

PROBLEM_KINDS = ("continuous", "discrete", "generative", "adaptation", "transfer", "barycenter")
#: what a solver takes as one point: ``vectors`` (``shape`` has one axis), ``images`` (``[C, H, W]``), or ``any``
INPUT_FORMS = ("any", "vectors", "images")
SOLUTION_PARTS = ("distance", "critic", "map", "plan", "plan_samples", "generator", "classifier", "barycenter")


class OTBenchError(Exception):
    """Base class of the errors otbench raises on purpose."""


class UnsupportedProblem(OTBenchError):
    """A solver was handed a problem kind or cost it does not declare support for."""


class InvalidInput(OTBenchError, ValueError):
    """Weights, costs or points that no OT problem can be built from (NaN, negative, wrong shape...)."""


class SolverDidNotConverge(OTBenchError):
    """A solver stopped before its own optimality criterion held; never report its number silently."""


@dataclass
class Problem:
    """What a solver is allowed to see. Carries no ground truth.

    ``kind`` is ``"continuous"`` (samplers) or ``"discrete"`` (weights + points and/or cost matrix).
    ``cost`` names the ground cost: ``"euclidean"`` (|x-y|), ``"sqeuclidean"`` (|x-y|^2) or
    ``"matrix"`` (only ``cost_matrix`` is given).
    """

    kind: str
    dim: int
    cost: str
    device: "torch.device"
    dtype: "torch.dtype"
    sample_p: Callable[[int], "torch.Tensor"] | None = None
    sample_q: Callable[[int], "torch.Tensor"] | None = None
    a: "torch.Tensor | None" = None
    b: "torch.Tensor | None" = None
    x: "torch.Tensor | None" = None
    y: "torch.Tensor | None" = None
    cost_matrix: "torch.Tensor | None" = None
    seed: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    #: shape of one point (``(dim,)`` when None); e.g. ``(1, 28, 28)`` for grey images. Points stay flat.
    shape: tuple[int, ...] | None = None
    #: ``(low, high)`` that every data value lies in (images), or None when unbounded
    value_range: tuple[float, float] | None = None
    #: generative problems: dimension of the latent measure drawn by ``sample_p``
    latent_dim: int | None = None
    #: adaptation / transfer problems: int64 class labels of ``x`` (source) and ``y`` (target, transfer only)
    x_labels: "torch.Tensor | None" = None
    y_labels: "torch.Tensor | None" = None
    n_classes: int | None = None
    #: barycenter problems: ``[K, n]`` histograms on the support ``x``, their weights ``[K]``, the grid layout
    measures: "torch.Tensor | None" = None
    measure_weights: "torch.Tensor | None" = None
    grid_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in PROBLEM_KINDS:
            raise InvalidInput(f"Problem.kind must be one of {PROBLEM_KINDS}, got {self.kind!r}")
        if self.kind == "continuous" and (self.sample_p is None or self.sample_q is None):
            raise InvalidInput("a continuous Problem needs sample_p and sample_q")
        if self.kind == "discrete" and self.cost_matrix is None and (self.x is None or self.y is None):
            raise InvalidInput("a discrete Problem needs a cost_matrix or points x and y")
        if self.kind == "generative" and (self.sample_p is None or self.sample_q is None or not self.latent_dim):
            raise InvalidInput("a generative Problem needs sample_p (latent), sample_q (data) and latent_dim > 0")
        if self.kind in ("adaptation", "transfer"):
            if self.x is None or self.x_labels is None or self.y is None or not self.n_classes:
                raise InvalidInput(f"an {self.kind} Problem needs x, x_labels, y and n_classes")
            if self.kind == "adaptation" and self.y_labels is not None:
                raise InvalidInput("an adaptation Problem's target is unlabelled: y_labels must be None "
                                   "(a labelled target makes it a 'transfer' problem)")
            if self.kind == "transfer" and self.y_labels is None:
                raise InvalidInput("a transfer Problem needs the target training labels y_labels")
        if self.kind == "barycenter":
            if self.measures is None or self.measure_weights is None or (self.x is None and self.cost_matrix is None):
                raise InvalidInput("a barycenter Problem needs measures [K, n], measure_weights [K] and a support x "
                                   "or a cost_matrix")
            if self.measures.ndim != 2 or self.measure_weights.shape != (self.measures.shape[0],):
                raise InvalidInput(f"measures must be [K, n] and measure_weights [K], got "
                                   f"{tuple(self.measures.shape)} and {tuple(self.measure_weights.shape)}")
            if self.grid_shape is not None and math.prod(self.grid_shape) != self.measures.shape[1]:
                raise InvalidInput(f"grid_shape {self.grid_shape} does not hold the {self.measures.shape[1]} support points")
        if self.shape is not None:
            self.shape = tuple(int(s) for s in self.shape)
            if math.prod(self.shape) != self.dim:
                raise InvalidInput(f"Problem.shape {self.shape} has {math.prod(self.shape)} values, but dim is {self.dim}")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one point: ``shape`` when given, else ``(dim,)``."""
        return self.shape if self.shape is not None else (self.dim,)

    @property
    def is_image(self) -> bool:
        """True when one point is an image ``[C, H, W]``."""
        return len(self.sample_shape) == 3

    def as_images(self, points: "torch.Tensor") -> "torch.Tensor":
        """View flat points ``[n, dim]`` (or already-shaped ones) as ``[n, *shape]``."""
        return points.reshape(points.shape[0], *self.sample_shape)

    def ground_cost(self, x: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
        """Pairwise cost matrix ``[n, m]`` between point sets for this problem's named cost."""
        from otbench.costs import pairwise_cost

        return pairwise_cost(x, y, self.cost)


@dataclass
class Solution:
    """What a solver returns. Every field is optional; ``parts()`` says which ones are set.

    ``iterations`` and ``trace`` (a list of ``{"iteration", "time", ...}`` checkpoints) are recorded by the
    runner; ``info`` holds extra named numbers the solver wants in its record (e.g. final loss).
    """

    distance: float | None = None
    critic: Callable[["torch.Tensor"], "torch.Tensor"] | None = None
    map: Callable[["torch.Tensor"], "torch.Tensor"] | None = None
    plan: "torch.Tensor | None" = None
    plan_samples: Callable[[int], tuple["torch.Tensor", "torch.Tensor"]] | None = None
    generator: Callable[[int], "torch.Tensor"] | None = None
    classifier: Callable[["torch.Tensor"], "torch.Tensor"] | None = None
    barycenter: "torch.Tensor | None" = None
    iterations: int | None = None
    trace: list[dict[str, float]] = field(default_factory=list)
    info: dict[str, float] = field(default_factory=dict)

    def parts(self) -> frozenset[str]:
        return frozenset(p for p in SOLUTION_PARTS if getattr(self, p) is not None)


@dataclass
class Truth:
    """Ground truth kept by a task for the metrics; a solver never sees it.

    ``distance``: the true OT cost (W1 for the Euclidean cost, W2^2 for squared Euclidean, LP optimum for
    discrete problems), with its Monte Carlo standard error ``distance_se`` when it is estimated.
    ``critic_grad``: the gradient of an optimal critic at points of P.
    ``sample_p`` / ``sample_q`` / ``sample_plan``: evaluation samplers on streams independent of the
    solver's (for generative problems ``sample_q`` draws the held-out data split). ``map``: the optimal map
    P -> Q. ``plan``: the exact discrete plan. ``test_inputs`` / ``test_labels``: the labelled target test split
    of adaptation and transfer problems. ``extra``: anything else, under keys documented by the metrics that
    read them (``otbench list metrics`` shows each metric's needs).
    """

    distance: float | None = None
    distance_se: float | None = None
    critic_grad: Callable[["torch.Tensor"], "torch.Tensor"] | None = None
    sample_p: Callable[[int], "torch.Tensor"] | None = None
    sample_q: Callable[[int], "torch.Tensor"] | None = None
    sample_plan: Callable[[int], tuple["torch.Tensor", "torch.Tensor"]] | None = None
    map: Callable[["torch.Tensor"], "torch.Tensor"] | None = None
    plan: "torch.Tensor | None" = None
    #: classification problems: the held-out labelled target test split (flat inputs, int64 labels)
    test_inputs: "torch.Tensor | None" = None
    test_labels: "torch.Tensor | None" = None
    #: barycenter problems: the exact barycenter histogram ``[n]`` on the problem's support
    barycenter: "torch.Tensor | None" = None
    extra: dict[str, Any] = field(default_factory=dict)

    def parts(self) -> frozenset[str]:
        names = [f.name for f in dataclasses.fields(self) if f.name != "extra"]
        return frozenset(n for n in names if getattr(self, n) is not None) | frozenset(self.extra)


class _Component:
    """Shared plumbing of tasks and solvers: a registry name, a version and validated parameters."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    #: default parameter values; a parameter not listed here is rejected with the list of known ones.
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise InvalidInput(
                f"{type(self).__name__} ({self.name!r}) got unknown parameter(s) {unknown}; "
                f"known: {sorted(self.defaults)}"
            )
        self.params: dict[str, Any] = {**self.defaults, **params}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    @classmethod
    def describe(cls) -> str:
        doc = (cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""


class Task(_Component):
    """Makes seeded problems and keeps their truth.

    Subclasses set ``name``, ``kind``, ``defaults`` and ``primary_metric`` (a metric output name and
    ``"min"`` or ``"max"``), and implement ``build``.
    """

    kind: ClassVar[str] = "continuous"
    primary_metric: ClassVar[tuple[str, str]] = ("distance_rel_error", "min")

    def build(self, seed: int, device: "torch.device", dtype: "torch.dtype") -> tuple[Problem, Truth]:
        """Return the problem a solver sees and the truth the metrics use, both reproducible from ``seed``."""
        raise NotImplementedError

    def published(self, solver: str, solver_params: Mapping[str, Any]) -> dict[str, Any] | None:
        """Published reference numbers for this task cell and a solver, or None (the default: none known); see
        ``published_problems`` for the shape the runner checks.

        A task built on a published benchmark may return ``{"source": str, "method": str, "metrics":
        {metric_output_name: float}}``: the values the source reports for its method that matches
        ``solver`` with ``solver_params`` like for like (extra keys, e.g. ``"differences"``: the run's settings
        that differ from the published training budget, and ``"note"``, are allowed). The runner stores it in the
        run record under ``"published"``; a reference value is shown beside a result and never ranked.
        """
        return None


class Solver(_Component):
    """Turns a Problem into a Solution.

    Subclasses set ``name``, ``defaults``, the capabilities ``kinds`` (problem kinds accepted), ``costs``
    (ground costs accepted, ``None`` = any), ``inputs`` (``"any"``, ``"vectors"`` or ``"images"``), ``provides`` (solution parts returned; ``provides_by_kind``
    refines it per problem kind) and optionally
    ``threads`` (the CPU thread count it runs best with: tiny MLPs want 1), and implement ``solve``.
    """

    kinds: ClassVar[frozenset[str]] = frozenset({"continuous"})
    costs: ClassVar[frozenset[str] | None] = None
    provides: ClassVar[frozenset[str]] = frozenset({"distance"})
    #: optional per-kind refinement of ``provides`` when a solver returns different parts per problem kind
    provides_by_kind: ClassVar[Mapping[str, frozenset[str]]] = {}
    threads: ClassVar[int | None] = None
    #: share of one GPU a run of this solver needs on CUDA (fractional: several small critics can share a GPU
    #: under a scheduler such as the Ray executor, which asks for ``num_gpus=gpu_share``); 1.0 = a whole GPU
    gpu_share: ClassVar[float] = 1.0
    #: what one point may be: ``"any"`` (flat vectors of any shape), ``"vectors"`` or ``"images"`` (see INPUT_FORMS)
    inputs: ClassVar[str] = "any"

    @classmethod
    def parts_for(cls, kind: str) -> frozenset[str]:
        """The solution parts this solver promises on a problem of ``kind``."""
        return cls.provides_by_kind.get(kind, cls.provides)

    def supports(self, problem: Problem) -> str | None:
        """``None`` if this solver can take ``problem``, else the reason it cannot."""
        if problem.kind not in self.kinds:
            return f"{self.name} solves {sorted(self.kinds)} problems, not {problem.kind!r}"
        if self.costs is not None and problem.cost not in self.costs:
            return f"{self.name} supports costs {sorted(self.costs)}, not {problem.cost!r}"
        if self.inputs == "images" and not problem.is_image:
            return f"{self.name} takes images [C, H, W], not points of shape {problem.sample_shape}"
        if self.inputs == "vectors" and problem.is_image:
            return f"{self.name} takes vectors, not images of shape {problem.sample_shape}"
        return None

    def check_supported(self, problem: Problem) -> None:
        reason = self.supports(problem)
        if reason is not None:
            raise UnsupportedProblem(reason)

    def prepare(self, problem: Problem) -> None:
        """Untimed set-up before ``solve`` (import heavy libraries, warm up kernels). Optional."""

    def solve(self, problem: Problem) -> Solution:
        raise NotImplementedError


class Metric:
    """A named function of (truth, solution, problem) returning ``{output_name: float}``.

    ``needs``: solution parts required; ``truth_needs``: truth parts required; ``kinds``: problem kinds it
    applies to. ``outputs`` maps each output name to ``"min"`` or ``"max"`` (which direction is better).
    """

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    truth_needs: ClassVar[frozenset[str]] = frozenset()
    kinds: ClassVar[frozenset[str]] = frozenset(PROBLEM_KINDS)
    outputs: ClassVar[Mapping[str, str]] = {}

    def applies(self, problem: Problem, truth: Truth, solution: Solution) -> str | None:
        """``None`` if the metric can be computed, else the reason it cannot."""
        if problem.kind not in self.kinds:
            return f"problem kind {problem.kind!r}"
        missing = self.needs - solution.parts()
        if missing:
            return f"solution lacks {sorted(missing)}"
        missing = self.truth_needs - truth.parts()
        if missing:
            return f"task truth lacks {sorted(missing)}"
        return None

    def compute(self, truth: Truth, solution: Solution, problem: Problem) -> dict[str, float]:
        raise NotImplementedError

    @classmethod
    def describe(cls) -> str:
        doc = (cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""


def published_problems(ref: Any) -> list[str]:
    """What is wrong with a ``Task.published`` answer (empty when it is None or well formed)."""
    if ref is None:
        return []
    if not isinstance(ref, Mapping):
        return [f"published(...) must return None or a dict, got {type(ref).__name__}"]
    errors = [f"published(...)[{key!r}] must be a non-empty string"
              for key in ("source", "method") if not (isinstance(ref.get(key), str) and ref.get(key))]
    metrics = ref.get("metrics")
    if not isinstance(metrics, Mapping) or not metrics:
        errors.append("published(...)['metrics'] must be a non-empty {metric name: number} dict")
    else:
        errors += [f"published(...)['metrics'][{k!r}] = {v!r} is not a finite number" for k, v in metrics.items()
                   if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float))
                   or not math.isfinite(v)]
    return errors
