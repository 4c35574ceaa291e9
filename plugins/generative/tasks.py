"""Generative tasks: noise -> data. The solver sees a latent sampler and the training data; the truth keeps a
held-out stream (or the test split) for the metrics.

- ``gaussian_mixture``: equal-weight isotropic Gaussian mixtures with exact scoring. Layouts: ``circle`` (k modes
  on a circle in the first two coordinates, the classic 8-Gaussians), ``grid`` (a sqrt(k) x sqrt(k) grid, e.g.
  5 x 5 = 25 modes, in the first two coordinates), ``axes`` (the 2D points +-radius e_i: 16 modes in 8-D) and
  ``random`` (k centres uniform on the sphere of the given radius, from ``mixture_seed``). Truth keeps the
  modes ``[k, dim]`` and ``mode_radius`` for mode coverage: ``radius_in_std`` (3) standard deviations times
  ``sqrt(dim / 2)``, i.e. the usual 3 sigma in 2-D, and in any dimension a ball holding ~99 % of a mode's mass.
- ``known_plan_target``: the Q measure (uniform on the box) or, with ``side: p``, the P measure (mass pushed
  towards the funnel centres / kinks) of a known-plan W1 pair from ``plugins/w1/known_plans.py`` (``min_funnel``
  or ``maxmin_net``, its parameters under ``pair``), built with that module's potential and sampler.
- ``digits_images`` / ``fashion_mnist_images``: scikit-learn's 8x8 digits and Fashion-MNIST 28x28 (optionally a
  subset of ``classes``, e.g. the shoes [5, 7, 9]), flat in [0, 1]. Training draws come from the train split,
  the truth's from the test split; both are shuffled epochs (no repeats within ``len(split)`` draws), so an
  FID on ``n_eval <= len(test)`` test images uses distinct images. Truth.extra names the dataset, the classes,
  the feature extractor the FID should use (``classifier``: the small dataset classifier for CPU suites,
  ``inception`` for GPU suites) and ``n_eval``.

The latent measure is a standard normal ``[n, latent_dim]`` on every task.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from otbench import Problem, Task, Truth, hookimpl
from otbench.api import InvalidInput
from otbench.data import DATASETS, load_dataset
from otbench.sampling import derive_seed, make_sampler_pair

__all__ = ["GaussianMixture", "KnownPlanTarget", "DigitsImages", "FashionMnistImages", "mixture_modes",
           "epoch_sampler"]

FEATURE_EXTRACTORS = ("classifier", "inception")


def _positive_int(name: str, field: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"{name}: parameter {field!r} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _positive_float(name: str, field: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{name}: parameter {field!r} must be a number, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise InvalidInput(f"{name}: parameter {field!r} must be a positive finite number, got {value!r}")
    return v


def _latent_draw(latent_dim: int, device: torch.device, dtype: torch.dtype) -> Callable[[int, torch.Generator], torch.Tensor]:
    def draw(n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(n, latent_dim, generator=gen, device=device, dtype=dtype)

    return draw


# ---------------------------------------------------------------------------------------------------------------
# Gaussian mixtures

MIXTURE_LAYOUTS = ("circle", "grid", "axes", "random")


def mixture_modes(layout: str, modes: int | None, dim: int, radius: float, mixture_seed: int = 0) -> torch.Tensor:
    """Mode centres ``[k, dim]`` (float64) of a mixture layout (see the module docstring)."""
    if layout == "circle":
        k = 8 if modes is None else modes
        angle = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
        centres = torch.zeros(k, dim, dtype=torch.float64)
        centres[:, 0], centres[:, 1] = radius * angle.cos(), radius * angle.sin()
        return centres
    if layout == "grid":
        k = 25 if modes is None else modes
        side = math.isqrt(k)
        if side * side != k:
            raise InvalidInput(f"gaussian_mixture: layout 'grid' needs a square number of modes, got {k}")
        # spacing `radius` between neighbours, centred on the origin
        ticks = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * radius
        gx, gy = torch.meshgrid(ticks, ticks, indexing="ij")
        centres = torch.zeros(k, dim, dtype=torch.float64)
        centres[:, 0], centres[:, 1] = gx.reshape(-1), gy.reshape(-1)
        return centres
    if layout == "axes":
        if modes is not None and modes != 2 * dim:
            raise InvalidInput(f"gaussian_mixture: layout 'axes' has 2 * dim = {2 * dim} modes, got modes={modes}")
        eye = torch.eye(dim, dtype=torch.float64) * radius
        return torch.cat([eye, -eye])
    if layout == "random":
        k = 10 if modes is None else modes
        gen = torch.Generator().manual_seed(derive_seed(mixture_seed, "gaussian_mixture", dim, k))
        v = torch.randn(k, dim, generator=gen, dtype=torch.float64)
        return radius * v / v.norm(dim=1, keepdim=True)
    raise InvalidInput(f"gaussian_mixture: parameter 'layout' must be one of {MIXTURE_LAYOUTS}, got {layout!r}")


class GaussianMixture(Task):
    """Equal-weight Gaussian mixture (8 on a circle, 5x5 grid, +-e_i axes, random sphere) from N(0, I) noise."""

    name = "gaussian_mixture"
    kind = "generative"
    primary_metric = ("sample_w1", "min")
    defaults = {"layout": "circle", "modes": None, "dim": 2, "radius": 2.0, "std": 0.05, "latent_dim": 8,
                "radius_in_std": 3.0, "mixture_seed": 0, "n_eval": 1000}

    def modes(self) -> torch.Tensor:
        """The mode centres ``[k, dim]`` (float64)."""
        p = self.params
        dim = _positive_int(self.name, "dim", p["dim"])
        if p["layout"] in ("circle", "grid") and dim < 2:
            raise InvalidInput(f"gaussian_mixture: layout {p['layout']!r} needs dim >= 2, got {dim}")
        modes = None if p["modes"] is None else _positive_int(self.name, "modes", p["modes"])
        return mixture_modes(p["layout"], modes, dim, _positive_float(self.name, "radius", p["radius"]),
                             int(p["mixture_seed"]))

    def build(self, seed: int, device: torch.device, dtype: torch.dtype) -> tuple[Problem, Truth]:
        p = self.params
        device = torch.device(device)
        centres = self.modes()
        std = _positive_float(self.name, "std", p["std"])
        latent = _positive_int(self.name, "latent_dim", p["latent_dim"])
        k, dim = centres.shape
        # radius_in_std standard deviations in 2-D (the usual "high-quality sample" radius), scaled by
        # sqrt(dim / 2) so that a perfect generator keeps ~99 % of its samples inside in any dimension
        mode_radius = std * _positive_float(self.name, "radius_in_std", p["radius_in_std"]) * math.sqrt(dim / 2)
        c = centres.to(device=device, dtype=dtype)

        def draw_q(n: int, gen: torch.Generator) -> torch.Tensor:
            idx = torch.randint(0, k, (n,), generator=gen, device=device)
            return c[idx] + std * torch.randn(n, dim, generator=gen, device=device, dtype=dtype)

        solver_p, solver_q, eval_p, eval_q = make_sampler_pair(_latent_draw(latent, device, dtype), draw_q, seed,
                                                               device)
        problem = Problem(kind="generative", dim=dim, cost="euclidean", device=device, dtype=dtype,
                          sample_p=solver_p, sample_q=solver_q, seed=seed, latent_dim=latent,
                          info={"family": self.name, "layout": p["layout"], "modes": k})
        truth = Truth(sample_p=eval_p, sample_q=eval_q,
                      extra={"modes": c, "mode_radius": mode_radius, "mode_std": std,
                             "n_eval": _positive_int(self.name, "n_eval", p["n_eval"], minimum=2)})
        return problem, truth


# ---------------------------------------------------------------------------------------------------------------
# a side of a known-plan W1 pair


class KnownPlanTarget(Task):
    """The Q (uniform box) or P (pushed) measure of a known-plan W1 pair (min_funnel / maxmin_net) from noise."""

    name = "known_plan_target"
    kind = "generative"
    primary_metric = ("sample_w1", "min")
    defaults = {"family": "min_funnel", "side": "q", "pair": {}, "latent_dim": 8, "n_eval": 1000}

    def _pair_task(self) -> Task:
        from otbench_plugins.w1.known_plans import MaxMinNetPair, MinFunnelPair

        families = {"min_funnel": MinFunnelPair, "maxmin_net": MaxMinNetPair}
        fam = self.params["family"]
        if fam not in families:
            raise InvalidInput(f"known_plan_target: parameter 'family' must be one of {sorted(families)}, got {fam!r}")
        pair = self.params["pair"] or {}
        if not isinstance(pair, dict):
            raise InvalidInput(f"known_plan_target: parameter 'pair' must be a mapping of {fam} parameters, "
                               f"got {pair!r}")
        return families[fam](**pair)

    def build(self, seed: int, device: torch.device, dtype: torch.dtype) -> tuple[Problem, Truth]:
        from otbench_plugins.w1.known_plans import degeneracy_radius

        device = torch.device(device)
        side = self.params["side"]
        if side not in ("p", "q"):
            raise InvalidInput(f"known_plan_target: parameter 'side' must be 'p' or 'q', got {side!r}")
        latent = _positive_int(self.name, "latent_dim", self.params["latent_dim"])
        pair_task = self._pair_task()
        pot = pair_task.potential(device)
        rho = degeneracy_radius(dtype, pot.box, pot.dim)

        def draw_data(n: int, gen: torch.Generator) -> torch.Tensor:
            y = pot.draw_q(n, gen)
            if side == "p":
                y, _ = pot.move(y, rho)
            return y.to(dtype)

        solver_p, solver_q, eval_p, eval_q = make_sampler_pair(_latent_draw(latent, device, dtype), draw_data,
                                                               seed, device)
        problem = Problem(kind="generative", dim=pot.dim, cost="euclidean", device=device, dtype=dtype,
                          sample_p=solver_p, sample_q=solver_q, seed=seed, latent_dim=latent,
                          info={"family": self.name, "pair": pair_task.name, "side": side, "box": pot.box})
        truth = Truth(sample_p=eval_p, sample_q=eval_q,
                      extra={"box": float(pot.box),
                             "n_eval": _positive_int(self.name, "n_eval", self.params["n_eval"], minimum=2)})
        return problem, truth


# ---------------------------------------------------------------------------------------------------------------
# image datasets


def epoch_sampler(data: torch.Tensor, seed: int) -> Callable[[int], torch.Tensor]:
    """``n -> [n, ...]`` rows of ``data`` in seeded shuffled epochs: no row repeats within ``len(data)`` draws."""
    gen = torch.Generator().manual_seed(int(seed))
    state = {"perm": torch.randperm(len(data), generator=gen), "pos": 0}

    def sample(n: int) -> torch.Tensor:
        taken: list[torch.Tensor] = []
        need = int(n)
        while need > 0:
            if state["pos"] >= len(data):
                state["perm"], state["pos"] = torch.randperm(len(data), generator=gen), 0
            idx = state["perm"][state["pos"]: state["pos"] + need]
            state["pos"] += len(idx)
            need -= len(idx)
            taken.append(idx)
        idx = torch.cat(taken) if taken else torch.empty(0, dtype=torch.int64)
        return data[idx.to(data.device)]

    return sample


class _ImageTask(Task):
    """Shared build of the image tasks.

    Ranked by the FID of the task's feature extractor: ``fid_<dataset>_cnn`` (the small dataset classifier of
    ``otbench.features``) by default; an instance with ``feature_extractor: inception`` carries
    ``primary_metric = ("fid_inception", "min")`` (a runner that reads the instance's attribute ranks by it; the
    two FIDs are never mixed in one ranking).
    """

    kind = "generative"
    dataset: str = ""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.params["feature_extractor"] == "inception":
            self.primary_metric = ("fid_inception", "min")

    def build(self, seed: int, device: torch.device, dtype: torch.dtype) -> tuple[Problem, Truth]:
        p = self.params
        device = torch.device(device)
        latent = _positive_int(self.name, "latent_dim", p["latent_dim"])
        n_eval = _positive_int(self.name, "n_eval", p["n_eval"], minimum=2)
        if p["feature_extractor"] not in FEATURE_EXTRACTORS:
            raise InvalidInput(f"{self.name}: parameter 'feature_extractor' must be one of {FEATURE_EXTRACTORS}, "
                               f"got {p['feature_extractor']!r}")
        classes = p["classes"]
        if classes is not None:
            if isinstance(classes, (int, str)) or not all(isinstance(c, int) and 0 <= c <= 9 for c in classes):
                raise InvalidInput(f"{self.name}: parameter 'classes' must be null (all) or a list of labels "
                                   f"0..9, got {classes!r}")
            classes = sorted(set(int(c) for c in classes))
        path = p.get("path")
        train_x, train_y = load_dataset(self.dataset, "train", path=path, classes=classes)
        test_x, test_y = load_dataset(self.dataset, "test", path=path, classes=classes)
        if len(train_x) == 0 or len(test_x) == 0:
            raise InvalidInput(f"{self.name}: classes {classes} select no images")
        shape = tuple(train_x.shape[1:])
        dim = math.prod(shape)
        train = train_x.reshape(len(train_x), dim).to(device=device, dtype=dtype)
        test = test_x.reshape(len(test_x), dim).to(device=device, dtype=dtype)
        sp, _, ep, _ = make_sampler_pair(_latent_draw(latent, device, dtype), _latent_draw(1, device, dtype),
                                         seed, device)
        problem = Problem(kind="generative", dim=dim, cost="euclidean", device=device, dtype=dtype,
                          sample_p=sp, sample_q=epoch_sampler(train, derive_seed(seed, "solver", "q")),
                          seed=seed, latent_dim=latent, shape=shape, value_range=(0.0, 1.0),
                          info={"family": self.name, "dataset": self.dataset, "n_train": len(train)})
        truth = Truth(sample_p=ep, sample_q=epoch_sampler(test, derive_seed(seed, "eval", "q")),
                      extra={"dataset": self.dataset, "classes": classes,
                             "feature_extractor": p["feature_extractor"], "n_eval": min(n_eval, len(test)),
                             "n_test": len(test)})
        return problem, truth


class DigitsImages(_ImageTask):
    """scikit-learn's 8x8 digits (1347 train / 450 test images, optionally some classes) from N(0, I) noise."""

    name = "digits_images"
    dataset = "digits"
    primary_metric = ("fid_digits_cnn", "min")
    defaults = {"classes": None, "latent_dim": 16, "feature_extractor": "classifier", "n_eval": 450}


class FashionMnistImages(_ImageTask):
    """Fashion-MNIST 28x28 (60k train / 10k test, optionally some classes, e.g. shoes [5, 7, 9]) from noise."""

    name = "fashion_mnist_images"
    dataset = "fashion_mnist"
    primary_metric = ("fid_fashion_mnist_cnn", "min")
    defaults = {"classes": None, "latent_dim": 32, "feature_extractor": "classifier", "n_eval": 2000,
                "path": None}


assert all(t.dataset in DATASETS for t in (DigitsImages, FashionMnistImages))


@hookimpl
def otbench_register_tasks(register: Callable[[type], None]) -> None:
    for cls in (GaussianMixture, KnownPlanTarget, DigitsImages, FashionMnistImages):
        register(cls)
