"""Discrete OT tasks whose truth is the exact LP optimum and plan (POT's network simplex, float64).

- ``point_clouds``: n points against m points in ``dim`` dimensions, ``uniform`` (both U[0,1]^d, the
  scalability test of seed 004) or ``gaussian`` (N(0, I) against a shifted, anisotropic Gaussian), with
  ``uniform`` or ``random`` (non-uniform, positive) weights.
- ``histograms_1d``: two random Gaussian mixtures on a regular grid of [0, 1] (seed 004's convergence test).
- ``color_transfer``: the RGB colour distributions of two images shipped with scikit-image (astronaut and
  coffee by default), either ``subsample`` (n random pixels per image, uniform weights) or ``binned`` (a
  bins^3 colour histogram, non-empty bins at their centres weighted by pixel counts), as in seed 004 §2.4.4.

Costs: ``sqeuclidean`` or ``euclidean``, **normalised to max 1**: the points are rescaled so that the largest
pairwise cost is 1, so ``Problem.cost_matrix`` equals ``Problem.ground_cost(x, y)`` and epsilon / beta mean
the same thing on every task (the scale is kept in ``problem.info["cost_scale"]``). Points are drawn in
float64 on the CPU from the seed, the LP is solved on the float64 cost, and the problem is then cast to the
run's device and dtype; the metrics measure plans on the float64 cost (``truth.extra["cost_matrix"]``).

Truth cache: the exact optimum and its sparse plan are computed once per task instance, i.e. per (task name,
version, parameters, seed), and kept in an in-process LRU cache (``TRUTH_CACHE_SIZE`` entries, a sparse plan
holds at most n + m - 1 entries). Nothing is written to disk.
"""

from __future__ import annotations

import functools
import json
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from otbench import Problem, Task, Truth, hookimpl
from otbench.api import InvalidInput
from otbench.costs import pairwise_cost
from otbench.sampling import derive_seed, make_generator

__all__ = ["PointClouds", "Histograms1D", "ColorTransfer", "exact_truth", "clear_truth_cache", "TRUTH_CACHE_SIZE"]

COSTS = ("sqeuclidean", "euclidean")
TRUTH_CACHE_SIZE = 64
_TRUTH_CACHE: OrderedDict[str, tuple[float, np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
_cache_stats = {"hits": 0, "misses": 0}


def clear_truth_cache() -> None:
    _TRUTH_CACHE.clear()
    _cache_stats.update(hits=0, misses=0)


def truth_cache_stats() -> dict[str, int]:
    return {**_cache_stats, "size": len(_TRUTH_CACHE)}


def exact_truth(key: str, a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """``(OPT, rows, cols, values)`` of the exact LP, from the cache when ``key`` was solved before."""
    hit = _TRUTH_CACHE.get(key)
    if hit is not None:
        _TRUTH_CACHE.move_to_end(key)
        _cache_stats["hits"] += 1
        return hit
    from otbench_plugins.discrete.exact_lp import exact_emd

    _cache_stats["misses"] += 1
    plan, opt = exact_emd(a, b, cost)
    rows, cols = np.nonzero(plan)
    entry = (float(opt), rows.astype(np.int64), cols.astype(np.int64), plan[rows, cols].copy())
    _TRUTH_CACHE[key] = entry
    while len(_TRUTH_CACHE) > TRUTH_CACHE_SIZE:
        _TRUTH_CACHE.popitem(last=False)
    return entry


def _normalise(x: torch.Tensor, y: torch.Tensor, cost: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Rescale the points so that the largest pairwise cost is 1; return ``(x, y, C, scale)`` with C = c / scale."""
    c = pairwise_cost(x, y, cost)
    scale = float(c.max())
    if not scale > 0:
        raise InvalidInput("all pairwise costs are zero: nothing to transport")
    factor = math.sqrt(scale) if cost == "sqeuclidean" else scale
    x, y = x / factor, y / factor
    c = pairwise_cost(x, y, cost)
    return x, y, c, scale


class _DiscreteTask(Task):
    """Shared build: draw float64 CPU data, normalise the cost, attach the cached exact truth."""

    kind = "discrete"
    primary_metric = ("lp_gap", "min")

    def _data(self, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """``(x [n, d], y [m, d], a [n], b [m], info)`` in float64 on the CPU."""
        raise NotImplementedError

    def _cache_key(self, seed: int) -> str:
        return json.dumps([self.name, self.version, sorted(self.params.items()), int(seed)], default=str)

    def build(self, seed: int, device: torch.device, dtype: torch.dtype) -> tuple[Problem, Truth]:
        cost_name = self.params["cost"]
        if cost_name not in COSTS:
            raise InvalidInput(f"{self.name}: cost must be one of {COSTS}, got {cost_name!r}")
        x, y, a, b, info = self._data(seed)
        x, y, c, scale = _normalise(x, y, cost_name)
        a, b = a / a.sum(), b / b.sum()
        opt, rows, cols, vals = exact_truth(self._cache_key(seed), a.numpy(), b.numpy(), c.numpy())
        plan = torch.zeros(c.shape, dtype=torch.float64)
        plan[torch.as_tensor(rows), torch.as_tensor(cols)] = torch.as_tensor(vals)
        device = torch.device(device)
        info = {**info, "cost_normalization": "max", "cost_scale": scale, "n": int(c.shape[0]), "m": int(c.shape[1])}
        problem = Problem(kind="discrete", dim=int(x.shape[1]), cost=cost_name, device=device, dtype=dtype,
                          a=a.to(device, dtype), b=b.to(device, dtype), x=x.to(device, dtype), y=y.to(device, dtype),
                          cost_matrix=c.to(device, dtype), seed=seed, info=info)
        truth = Truth(distance=opt, distance_se=0.0, plan=plan.to(device),
                      extra={"cost_matrix": c.to(device), "lp_support_size": int(len(vals))})
        return problem, truth


def _weights(kind: str, n: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "uniform":
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    if kind == "random":  # exponential weights floored at 5% of the mean: strongly non-uniform, all positive
        w = -torch.log(torch.rand(n, generator=gen, dtype=torch.float64)) + 0.05
        return w / w.sum()
    raise InvalidInput(f"weights must be 'uniform' or 'random', got {kind!r}")


class PointClouds(_DiscreteTask):
    """Random point clouds (uniform cube or Gaussians) in D dimensions; exact LP truth; cost max-normalised."""

    name = "point_clouds"
    defaults = {"n": 500, "m": None, "dim": 16, "distribution": "uniform", "weights": "uniform",
                "cost": "sqeuclidean"}

    def _data(self, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        n = int(self.params["n"])
        m = int(self.params["m"]) if self.params["m"] is not None else n
        dim = int(self.params["dim"])
        if n < 2 or m < 2 or dim < 1:
            raise InvalidInput(f"point_clouds needs n, m >= 2 and dim >= 1, got n={n}, m={m}, dim={dim}")
        gen = make_generator(derive_seed(seed, "point_clouds"))
        dist = self.params["distribution"]
        if dist == "uniform":
            x = torch.rand(n, dim, generator=gen, dtype=torch.float64)
            y = torch.rand(m, dim, generator=gen, dtype=torch.float64)
        elif dist == "gaussian":
            x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
            scales = torch.linspace(0.5, 1.5, dim, dtype=torch.float64)
            y = 1.0 / math.sqrt(dim) + scales * torch.randn(m, dim, generator=gen, dtype=torch.float64)
        else:
            raise InvalidInput(f"point_clouds: distribution must be 'uniform' or 'gaussian', got {dist!r}")
        a = _weights(self.params["weights"], n, gen)
        b = _weights(self.params["weights"], m, gen)
        return x, y, a, b, {}


class Histograms1D(_DiscreteTask):
    """Two random Gaussian mixtures on a grid of [0, 1] (seed 004's 1-D convergence test); exact LP truth."""

    name = "histograms_1d"
    defaults = {"n": 256, "components": 2, "floor": 1e-3, "cost": "sqeuclidean"}

    def _data(self, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        n, k, floor = int(self.params["n"]), int(self.params["components"]), float(self.params["floor"])
        if n < 2 or k < 1 or not 0 <= floor < 1:
            raise InvalidInput(f"histograms_1d needs n >= 2, components >= 1, 0 <= floor < 1; got {self.params}")
        gen = make_generator(derive_seed(seed, "histograms_1d"))
        grid = torch.linspace(0.0, 1.0, n, dtype=torch.float64)

        def mixture() -> torch.Tensor:
            means = 0.1 + 0.8 * torch.rand(k, generator=gen, dtype=torch.float64)
            stds = 0.03 + 0.09 * torch.rand(k, generator=gen, dtype=torch.float64)
            mix = -torch.log(torch.rand(k, generator=gen, dtype=torch.float64))
            dens = (mix[None, :] / stds[None, :]
                    * torch.exp(-0.5 * ((grid[:, None] - means[None, :]) / stds[None, :]) ** 2)).sum(1)
            # a small uniform floor keeps every bin positive (float32 runs would otherwise see zero weights)
            return (1 - floor) * dens / dens.sum() + floor / n

        a, b = mixture(), mixture()
        return grid[:, None], grid[:, None].clone(), a, b, {}


#: the RGB pictures scikit-image ships inside its wheel; any other name is refused (no download at run time)
SHIPPED_RGB_IMAGES = ("astronaut", "chelsea", "coffee", "colorwheel", "hubble_deep_field", "immunohistochemistry",
                      "logo", "retina", "rocket")


@functools.lru_cache(maxsize=8)
def _image(name: str) -> np.ndarray:
    """An RGB image shipped inside scikit-image's wheel, as float64 pixels in [0, 1], shape [h * w, 3]."""
    from skimage import data

    if name not in SHIPPED_RGB_IMAGES:  # other skimage.data functions download files (one downloads them all)
        raise InvalidInput(f"color_transfer: source and target must be one of {list(SHIPPED_RGB_IMAGES)} (RGB "
                           f"images shipped inside scikit-image's wheel), got {name!r}")
    loader = getattr(data, name, None)
    if loader is None:
        raise InvalidInput(f"color_transfer: scikit-image has no image {name!r}")
    img = np.asarray(loader())
    if img.ndim != 3 or img.shape[2] < 3:
        raise InvalidInput(f"color_transfer: image {name!r} is not an RGB image (shape {img.shape})")
    return img[..., :3].reshape(-1, 3).astype(np.float64) / 255.0


def _binned(pixels: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-empty bins of a bins^3 RGB histogram: (centres [k, 3], counts [k])."""
    idx = np.minimum((pixels * bins).astype(np.int64), bins - 1)
    flat = (idx[:, 0] * bins + idx[:, 1]) * bins + idx[:, 2]
    occupied, counts = np.unique(flat, return_counts=True)
    cells = np.stack([occupied // (bins * bins), (occupied // bins) % bins, occupied % bins], axis=1)
    return (cells + 0.5) / bins, counts.astype(np.float64)


class ColorTransfer(_DiscreteTask):
    """Colour distributions of two scikit-image pictures (subsampled pixels or RGB histogram); exact LP truth."""

    name = "color_transfer"
    defaults = {"source": "astronaut", "target": "coffee", "mode": "subsample", "n": 1000, "bins": 8,
                "cost": "sqeuclidean"}

    def _data(self, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        src, tgt = _image(str(self.params["source"])), _image(str(self.params["target"]))
        mode = self.params["mode"]
        if mode == "subsample":
            n = int(self.params["n"])
            if n < 2 or n > min(len(src), len(tgt)):
                raise InvalidInput(f"color_transfer: n must be in [2, {min(len(src), len(tgt))}], got {n}")
            gen = make_generator(derive_seed(seed, "color_transfer"))
            ix = torch.randperm(len(src), generator=gen)[:n].numpy()
            iy = torch.randperm(len(tgt), generator=gen)[:n].numpy()
            x, y = src[ix], tgt[iy]
            a = np.full(n, 1.0 / n)
            b = np.full(n, 1.0 / n)
        elif mode == "binned":
            bins = int(self.params["bins"])
            if not 2 <= bins <= 64:
                raise InvalidInput(f"color_transfer: bins must be in [2, 64], got {bins}")
            x, a = _binned(src, bins)
            y, b = _binned(tgt, bins)
        else:
            raise InvalidInput(f"color_transfer: mode must be 'subsample' or 'binned', got {mode!r}")
        t = functools.partial(torch.as_tensor, dtype=torch.float64)
        return t(x), t(y), t(a), t(b), {"source": str(self.params["source"]), "target": str(self.params["target"])}


@hookimpl
def otbench_register_tasks(register: Callable[[type], None]) -> None:
    register(PointClouds)
    register(Histograms1D)
    register(ColorTransfer)
