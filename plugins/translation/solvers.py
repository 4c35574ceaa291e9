"""Translation solvers: convolutional NOT (strong, gamma-weak) with seed-002 stacking, and three baselines.

- ``not_strong_conv`` / ``not_weak_conv``: NOT (Korotin et al.; seed 002 eqs. 9-10) with a small UNet map
  T(x) = x + UNet(x) (``nets.UNetMap``, last layer zero-initialised so training starts from the identity) and a
  ResNet-like potential f (``nets.ResNetPotential``). The max-min schedule, the strong / gamma-weak costs and
  the final evaluation are those of ``otbench_plugins.maps.neural_ot`` (``train_max_min``,
  ``strong_transport``, ``weak_transport``, ``evaluate_max_min``), reused unchanged. The weak map takes
  ``z_channels`` noise images z ~ N(0, z_std^2) as extra input channels.
  *Stacking* (seed 002): ``stages = k`` trains k NOT maps in turn, stage j from the outputs of stages 1..j-1
  (fresh draws of P pushed through the frozen earlier stages) to the same target Q, each with a fresh map and
  potential; the returned map is the composition. ``solution.map.stages`` holds the stage maps, so the
  ``stage_fid`` metric can score every prefix on the held-out split; ``info`` holds per-stage training figures
  (``stage{j}_cost``: E|x_{j-1} - T_j(x_{j-1})|^2, ``stage{j}_dual_value``, final losses, ``stage{j}_seconds``). ``distance`` is the
  transport cost E|x - T(x)|^2 of the whole composition on ``n_eval`` draws. The ``stage_fid`` metric defined
  here (registered by this module) reports ``fid_stage{j}_X`` for every prefix of a stacked map, and
  ``stage_l2_uvp`` reports ``l2_uvp_stage{j}`` on tasks with a known map.
- ``identity_map``: T(x) = x (the do-nothing row).
- ``gaussian_map``: the closed-form W2 map between Gaussian fits of the two pixel distributions,
  T(x) = m_q + A (x - m_p), A = S_p^{-1/2} (S_p^{1/2} S_q S_p^{1/2})^{1/2} S_p^{-1/2}, from ``n_samples`` draws of
  each side in float64. Pixel covariances are singular (Fashion-MNIST's smallest eigenvalues are ~1e-7), so each
  is regularised as S + reg * (tr S / d) I before the square roots (``reg`` = 1e-5 by default).
  ``distance`` is the Bures W2^2 between the two Gaussian fits.
- ``discrete_ot_map``: exact OT (POT's network simplex, ``ot.emd``) between ``n_support`` draws of each side with
  uniform weights; the barycentric projection T(x_i) = sum_j pi_ij y_j / a_i (a permutation for equal sizes) is
  extended out of sample by the ``neighbours`` nearest support points x_i of x (Euclidean, averaged):
  ``extension = "nearest"`` gives the average of their T(x_i); ``"displacement"`` gives x plus the average of
  their displacements T(x_i) - x_i. ``distance`` is the LP optimum (the empirical W2^2 of the subsets, biased up).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from otbench import Problem, Solution, Solver, hookimpl
from otbench.api import Metric, Truth
from otbench.api import InvalidInput, SolverDidNotConverge, UnsupportedProblem
from otbench.sampling import derive_seed
from otbench_plugins.maps.neural_ot import (_ResidualMap, evaluate_max_min, strong_transport, train_max_min,
                                            weak_transport)
from otbench_plugins.maps.tasks import gaussian_w2_map, gaussian_w2_squared
from otbench_plugins.nets import frozen_callable, seeded
from otbench_plugins.translation.nets import ResNetPotential, UNetMap

F64 = torch.float64
#: rows pushed through a network at once when a map is applied (bounds activation memory)
CHUNK = 512


def _chunked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] <= CHUNK:
        return fn(x)
    return torch.cat([fn(x[i:i + CHUNK]) for i in range(0, x.shape[0], CHUNK)])


class StageMap:
    """One trained stage: the map (flat images -> flat images) and its potential f (``[n, d] -> [n]``)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], potential: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self._fn, self.potential = fn, potential

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _chunked(self._fn, x)


class StackedMap:
    """The composition T_k o ... o T_1 of trained stages; ``stages`` lists them, ``prefix(j)`` is T_j o ... o T_1."""

    def __init__(self, stages: list[StageMap]) -> None:
        self.stages = list(stages)
        self.potential = self.stages[-1].potential

    def prefix(self, j: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The map made of the first ``j`` stages."""
        if not 1 <= j <= len(self.stages):
            raise ValueError(f"prefix needs 1 <= j <= {len(self.stages)}, got {j}")

        def apply(x: torch.Tensor) -> torch.Tensor:
            for stage in self.stages[:j]:
                x = stage(x)
            return x

        return apply

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.prefix(len(self.stages))(x)


class _ConvNOT(Solver):
    """Shared set-up of the convolutional NOT solvers (see the module docstring); subclasses build one stage's map."""

    kinds = frozenset({"continuous"})
    costs = frozenset({"sqeuclidean"})
    provides = frozenset({"map", "distance"})
    inputs = "images"
    threads = 1
    defaults = {
        "iterations": 1000,     # potential steps per stage, each followed by k_T map steps
        "k_T": 10,              # published NOT schedule
        "batch_size": 64,
        "lr_T": 1e-4,           # published learning rates (Adam), as in seed 002
        "lr_f": 1e-4,
        "betas": (0.9, 0.999),
        "channels": 16,         # UNet width at full resolution (x2, x4 below)
        "potential_channels": 16,
        "potential_blocks": 3,
        "stages": 1,            # seed 002's stacking: k maps trained in turn
        "n_eval": 1024,         # draws of P for the returned distance and the per-stage figures
        "trace_every": 50,
    }

    def _check_params(self, problem: Problem) -> None:
        p = self.params
        for key in ("iterations", "k_T", "batch_size", "channels", "potential_channels", "potential_blocks",
                    "stages", "n_eval", "trace_every"):
            if not isinstance(p[key], int) or isinstance(p[key], bool) or p[key] < 1:
                raise InvalidInput(f"{self.name}: {key} must be an integer >= 1, got {p[key]!r}")
        if not (float(p["lr_T"]) > 0 and float(p["lr_f"]) > 0):
            raise InvalidInput(f"{self.name}: lr_T and lr_f must be > 0, got {p['lr_T']!r}, {p['lr_f']!r}")
        _, h, w = problem.sample_shape
        if h % 4 or w % 4:
            raise UnsupportedProblem(f"{self.name}: the UNet map needs image sides divisible by 4, got {h}x{w}")

    def _stage_map(self, problem: Problem, stage: int) -> tuple[torch.nn.Module, Callable, Callable]:
        """``(module, transport, apply_map)`` of one stage (see ``neural_ot.strong_transport``)."""
        raise NotImplementedError

    def solve(self, problem: Problem) -> Solution:
        self.check_supported(problem)
        self._check_params(problem)
        p = self.params
        shape = problem.sample_shape
        stages: list[StageMap] = []
        trace: list[dict[str, float]] = []
        info: dict[str, float] = {}
        current = problem
        start = time.perf_counter()
        for j in range(1, int(p["stages"]) + 1):
            stage_start = time.perf_counter() - start
            seeded(derive_seed(problem.seed, self.name, "stage", j) % 2**31)
            potential = ResNetPotential(shape, int(p["potential_channels"]), int(p["potential_blocks"]))
            potential = potential.to(problem.device, problem.dtype)
            t_module, transport, apply_map = self._stage_map(problem, j)
            stage_trace = train_max_min(current, transport, list(t_module.parameters()), potential, p)
            t_module.eval()
            potential.eval()
            f = frozen_callable(potential, squeeze_last=True)
            for w in t_module.parameters():
                w.requires_grad_(False)
            cost, dual = evaluate_max_min(current, transport, f, int(p["n_eval"]))
            offset = (j - 1) * int(p["iterations"])
            trace += [{**t, "iteration": t["iteration"] + offset, "stage": j, "time": t["time"] + stage_start}
                      for t in stage_trace]
            info.update({f"stage{j}_cost": cost, f"stage{j}_dual_value": dual,
                         f"stage{j}_final_loss_f": stage_trace[-1]["loss_f"],
                         f"stage{j}_final_loss_T": stage_trace[-1]["loss_T"],
                         f"stage{j}_seconds": time.perf_counter() - start - stage_start})
            stage = StageMap(apply_map, f)
            stages.append(stage)
            current = dataclasses.replace(current, sample_p=_pushed(current.sample_p, stage))
        stacked = StackedMap(stages)
        with torch.no_grad():
            x = problem.sample_p(int(p["n_eval"]))
            distance = float((stacked(x) - x).to(F64).square().sum(-1).mean())
        info["dual_value"] = info[f"stage{len(stages)}_dual_value"]
        return Solution(distance=distance, map=stacked, iterations=int(p["iterations"]) * len(stages), trace=trace,
                        info=info)


def _pushed(sample: Callable[[int], torch.Tensor], stage: StageMap) -> Callable[[int], torch.Tensor]:
    """A sampler of the pushed measure: fresh draws of ``sample`` through the frozen ``stage``."""

    def draw(n: int) -> torch.Tensor:
        with torch.no_grad():
            return stage(sample(n))

    return draw


class NOTStrongConv(_ConvNOT):
    """Convolutional NOT, strong quadratic cost: UNet map, ResNet potential, optional stacking (seed 002)."""

    name = "not_strong_conv"

    def _stage_map(self, problem: Problem, stage: int) -> tuple[torch.nn.Module, Callable, Callable]:
        net = UNetMap(problem.sample_shape, int(self.params["channels"]))
        t_map = _ResidualMap(net, residual=True).to(problem.device, problem.dtype)
        return (t_map, *strong_transport(t_map))


class NOTWeakConv(_ConvNOT):
    """Convolutional NOT, gamma-weak quadratic cost: stochastic UNet map T(x, z) with noise channels, stacking."""

    name = "not_weak_conv"
    defaults = {**_ConvNOT.defaults, "gamma": 0.1, "z_channels": 1, "z_std": 1.0, "z_size": 4}

    def _check_params(self, problem: Problem) -> None:
        super()._check_params(problem)
        p = self.params
        if not (0 <= float(p["gamma"]) <= 1 and int(p["z_size"]) >= 2 and float(p["z_std"]) >= 0
                and int(p["z_channels"]) >= 1):
            raise InvalidInput(f"{self.name} needs 0 <= gamma <= 1, z_size >= 2, z_std >= 0, z_channels >= 1; "
                               f"got gamma={p['gamma']!r}, z_size={p['z_size']!r}, z_std={p['z_std']!r}, "
                               f"z_channels={p['z_channels']!r}")

    def _stage_map(self, problem: Problem, stage: int) -> tuple[torch.nn.Module, Callable, Callable]:
        p = self.params
        _, h, w = problem.sample_shape
        z_channels = int(p["z_channels"])
        net = UNetMap(problem.sample_shape, int(p["channels"]), z_channels=z_channels)
        t_map = _ResidualMap(net, residual=True).to(problem.device, problem.dtype)
        return (t_map, *weak_transport(t_map, problem.dim, z_channels * h * w, int(p["z_size"]), float(p["z_std"]),
                                       float(p["gamma"]), problem.seed, problem.device,
                                       label=f"{self.name}/stage{stage}"))


# ------------------------------------------------------------------------------------------------ baselines
class IdentityMap(Solver):
    """The identity map T(x) = x: the row every translation method must beat."""

    name = "identity_map"
    kinds = frozenset({"continuous"})
    provides = frozenset({"map"})
    defaults: dict = {}

    def solve(self, problem: Problem) -> Solution:
        self.check_supported(problem)
        return Solution(map=_identity)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


def _moments(sample: Callable[[int], torch.Tensor], n: int, reg: float) -> tuple[torch.Tensor, torch.Tensor]:
    x = sample(n).detach().to(F64)
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / (n - 1)
    ridge = reg * float(cov.trace()) / cov.shape[0]
    return mean, cov + ridge * torch.eye(cov.shape[0], dtype=F64, device=cov.device)


class GaussianMap(Solver):
    """Closed-form W2 map between Gaussian fits (mean and covariance, float64, ridge-regularised) of P and Q."""

    name = "gaussian_map"
    kinds = frozenset({"continuous"})
    costs = frozenset({"sqeuclidean"})
    provides = frozenset({"map", "distance"})
    defaults = {"n_samples": 20000, "reg": 1e-5}

    def solve(self, problem: Problem) -> Solution:
        self.check_supported(problem)
        n, reg = self.params["n_samples"], self.params["reg"]
        if not isinstance(n, int) or n < 2:
            raise InvalidInput(f"gaussian_map: n_samples must be an integer >= 2, got {n!r}")
        if not float(reg) >= 0:
            raise InvalidInput(f"gaussian_map: reg must be >= 0, got {reg!r}")
        mean_p, cov_p = _moments(problem.sample_p, n, float(reg))
        mean_q, cov_q = _moments(problem.sample_q, n, float(reg))
        if float(torch.linalg.eigvalsh(cov_p).min()) <= 0:
            raise SolverDidNotConverge("gaussian_map: the covariance of P is singular; use reg > 0")
        a64 = gaussian_w2_map(cov_p, cov_q)
        a = a64.to(problem.device, problem.dtype)
        mp, mq = mean_p.to(problem.device, problem.dtype), mean_q.to(problem.device, problem.dtype)

        def apply(x: torch.Tensor) -> torch.Tensor:
            return mq.to(x.dtype) + (x - mp.to(x.dtype)) @ a.to(x.dtype)  # A is symmetric

        distance = gaussian_w2_squared(mean_p, cov_p, mean_q, cov_q)
        eig = torch.linalg.eigvalsh(a64)
        return Solution(distance=distance, map=apply,
                        info={"map_eig_min": float(eig.min()), "map_eig_max": float(eig.max())})


class DiscreteOTMap(Solver):
    """Exact discrete OT (POT network simplex) between subsets; barycentric projection, nearest-neighbour extension."""

    name = "discrete_ot_map"
    kinds = frozenset({"continuous"})
    costs = frozenset({"sqeuclidean"})
    provides = frozenset({"map", "distance"})
    defaults = {"n_support": 2000, "neighbours": 1, "extension": "nearest", "max_iter": 10_000_000}

    def prepare(self, problem: Problem) -> None:
        import ot  # noqa: F401  (imported outside the timed solve)

    def solve(self, problem: Problem) -> Solution:
        import ot

        self.check_supported(problem)
        p = self.params
        n, k, ext = p["n_support"], p["neighbours"], p["extension"]
        if not isinstance(n, int) or n < 2:
            raise InvalidInput(f"discrete_ot_map: n_support must be an integer >= 2, got {n!r}")
        if not isinstance(k, int) or not 1 <= k <= n:
            raise InvalidInput(f"discrete_ot_map: neighbours must be an integer in [1, n_support], got {k!r}")
        if ext not in ("nearest", "displacement"):
            raise InvalidInput(f"discrete_ot_map: extension must be 'nearest' or 'displacement', got {ext!r}")
        xs = problem.sample_p(n).detach().to(F64)
        ys = problem.sample_q(n).detach().to(F64)
        cost = (torch.cdist(xs, ys) ** 2).cpu().numpy()
        a = torch.full((n,), 1.0 / n, dtype=F64).numpy()
        plan, log = ot.emd(a, a, cost, numItermax=int(p["max_iter"]), log=True)
        if log.get("warning"):
            raise SolverDidNotConverge(f"discrete_ot_map: ot.emd did not reach optimality ({log['warning']})")
        plan_t = torch.from_numpy(plan).to(xs.device)
        images = (plan_t @ ys) / plan_t.sum(1, keepdim=True)  # barycentric projection of each support point
        support = xs.to(problem.device, problem.dtype)
        targets = images.to(problem.device, problem.dtype)
        shifts = targets - support

        def apply(x: torch.Tensor) -> torch.Tensor:
            def chunk(xc: torch.Tensor) -> torch.Tensor:
                idx = torch.cdist(xc.to(support.dtype), support).topk(k, dim=1, largest=False).indices
                if ext == "nearest":
                    return targets[idx].mean(1).to(xc.dtype)
                return xc + shifts[idx].mean(1).to(xc.dtype)

            return _chunked(chunk, x)

        return Solution(distance=float(log["cost"]), map=apply, info={"lp_cost": float(log["cost"])})


# ------------------------------------------------------------------------------------------ per-stage FID
#: stacked maps are scored at up to this many stages (more stages are allowed; their later prefixes are not scored)
MAX_SCORED_STAGES = 6


class StageFID(Metric):
    """FID after each stage of a stacked map (seed 002, Table 1): ``fid_stage{j}_X`` for the prefix T_j o ... o T_1.

    Same extractor ``X``, held-out reference images and ``n_eval`` as the core ``fid`` metric
    (``otbench.metrics.generative``); the mapped inputs are one fresh draw of ``truth.sample_p`` shared by every
    prefix, so stage-to-stage differences are not sampling noise of the inputs. Applies to maps exposing
    ``.stages`` with two or more stages (``not_strong_conv`` / ``not_weak_conv`` with ``stages >= 2``).
    """

    name = "stage_fid"
    kinds = frozenset({"continuous"})
    needs = frozenset({"map"})
    truth_needs = frozenset({"sample_p", "sample_q", "dataset"})
    outputs = {f"fid_stage{j}_{label}": "min" for j in range(1, MAX_SCORED_STAGES + 1)
               for label in [f"{name}_cnn" for name in ("digits", "fashion_mnist", "mnist")] + ["inception"]}

    def applies(self, problem: Problem, truth: Truth, solution: Solution) -> str | None:
        reason = super().applies(problem, truth, solution)
        if reason is None and not problem.is_image:
            reason = f"points of shape {problem.sample_shape} are not images"
        if reason is None and len(getattr(solution.map, "stages", ())) < 2:
            reason = "the map is not stacked (no .stages, or a single stage)"
        return reason

    def compute(self, truth: Truth, solution: Solution, problem: Problem) -> dict[str, float]:
        from otbench.features import extract_features, resolve_extractor
        from otbench.metrics.generative import frechet_distance, heldout_features, heldout_samples, image_uint8, n_eval

        n = n_eval(truth)
        spec = resolve_extractor(truth.extra.get("feature_extractor", "classifier"), truth.extra.get("dataset"),
                                 truth.extra.get("inception_weights"))
        real_images = image_uint8(heldout_samples(truth, n), problem)
        real = heldout_features(truth, problem, spec, real_images)
        out: dict[str, float] = {}
        with torch.no_grad():
            x = truth.sample_p(n)
            for j, stage in enumerate(solution.map.stages[:MAX_SCORED_STAGES], start=1):
                x = stage(x)
                gen = extract_features(spec, image_uint8(x, problem), problem.device)
                out[f"fid_stage{j}_{spec.label}"] = frechet_distance(gen, real)
        return out


class StageL2UVP(Metric):
    """L2-UVP and displacement cosine after each stage of a stacked map, against the true map (known-map tasks).

    ``l2_uvp_stage{j}`` / ``map_cosine_stage{j}`` score the prefix T_j o ... o T_1 exactly as the core
    ``map_l2_uvp`` metric scores a map (``otbench.metrics.maps``, ``N_MAP`` fresh draws per stage).
    """

    name = "stage_l2_uvp"
    kinds = frozenset({"continuous"})
    needs = frozenset({"map"})
    truth_needs = frozenset({"map", "sample_p", "sample_q"})
    outputs = {f"{stat}_stage{j}": direction for j in range(1, MAX_SCORED_STAGES + 1)
               for stat, direction in (("l2_uvp", "min"), ("map_cosine", "max"))}

    def applies(self, problem: Problem, truth: Truth, solution: Solution) -> str | None:
        reason = super().applies(problem, truth, solution)
        if reason is None and len(getattr(solution.map, "stages", ())) < 2:
            reason = "the map is not stacked (no .stages, or a single stage)"
        return reason

    def compute(self, truth: Truth, solution: Solution, problem: Problem) -> dict[str, float]:
        from otbench.metrics.maps import N_MAP, _displacement_stats

        out: dict[str, float] = {}
        for j in range(1, min(len(solution.map.stages), MAX_SCORED_STAGES) + 1):
            stats = _displacement_stats(truth, Solution(map=solution.map.prefix(j)), N_MAP)
            out.update({f"{k}_stage{j}": v for k, v in stats.items()})
        return out


@hookimpl
def otbench_register_solvers(register: Callable[[type], None]) -> None:
    for cls in (NOTStrongConv, NOTWeakConv, IdentityMap, GaussianMap, DiscreteOTMap):
        register(cls)


@hookimpl
def otbench_register_metrics(register: Callable[[type], None]) -> None:
    register(StageFID)
    register(StageL2UVP)
