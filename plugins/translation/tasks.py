"""Unpaired image translation tasks on Fashion-MNIST (continuous problems on images, solution = a map).

- ``fmnist_shoes_to_bags``: P = shoes (sandal 5, sneaker 7, ankle boot 9), Q = bags (8), 1 x 28 x 28 in [0, 1];
  the offline analogue of seed 002's Zappos shoes -> Amazon handbags. The solver draws from the *train* splits
  (18000 shoes, 6000 bags); the truth keeps the *test* splits (3000 shoes, 1000 bags). No optimal map is known:
  the task is scored by FID / KID of mapped test shoes against test bags (``Truth.extra``: ``dataset``,
  ``classes``, ``feature_extractor``, ``n_eval``, read by ``otbench.metrics.generative``) and by the transport
  cost E|x - T(x)|^2 of the map (``map_cost``).
- ``fmnist_known_map``: Q = grad(psi) # P with P = Fashion-MNIST images and psi convex, so grad(psi) is the
  W2-optimal map (Brenier) and ``Truth.map`` is grad(psi). Two levels:
  ``linear``: psi(x) = 1/2 <x, A x>, A = a symmetric positive-definite blur applied by FFT (circular
  convolution) with Fourier multiplier m(k) = floor + (1 - floor) exp(-blur^2 |k|^2 / 2) in [floor, 1]. Then
  Q = A # P is exactly the Gaussian-fit map's target: Sigma_Q = A Sigma_P A, so the closed-form Gaussian map
  between the two pixel distributions *is* A (a sanity row).
  ``nonlinear``: psi(x) = 1/2 <x, A x> + sum_k w_k l softplus((<a_k, x> - c_k) / l), w_k > 0, with smooth
  random unit directions a_k (blurred noise images), offsets c_k at data quantiles of <a_k, x> so each kink
  cuts through the data, and width l a fraction of the projections' spread. Hess psi = A + sum_k
  (w_k / l) sigmoid'(.) a_k a_k^T >= A, so psi is floor-strongly convex; no linear map is exact
  (``Truth.extra['affine_l2_uvp']`` says how far the best affine fit is, on the test split).
  psi is *certified* before use (``certify_convexity``): autograd gradient = analytic gradient, Hessians at data
  points symmetric with smallest eigenvalue >= the claimed modulus, and monotonicity on data pairs; a failure
  raises ``ConvexityCertificateFailed``.
  The solver's P draws from one half of the train split and its Q pushes the *other* half (a fixed split per
  instance), so no image is seen on both sides; the truth uses the test split for both (evaluation only).
  Value range: both levels declare ``value_range = None``. The ridge terms add sum_k w_k sigmoid(.) a_k, which
  leaves [0, 1] by about +-1; the linear blur's kernel sums to 1 and is non-negative only up to ~1e-7
  (``Truth.extra['kernel_min']``: a Gaussian multiplier sampled on the DFT grid), so A x stays in [0, 1] up to
  ~1e-7 but not exactly. The FID metrics quantise over (0, 1) when no range is declared (values outside clip).

Sampling: every stream walks through its split in fresh random permutations (without replacement within a
pass), so an evaluation draw of n <= split size has no duplicates (a FID reference with repeated images would be
biased).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from otbench import Problem, Task, Truth, hookimpl
from otbench.api import InvalidInput
from otbench.sampling import derive_seed, make_generator, make_sampler_pair

F64 = torch.float64
SHAPE = (1, 28, 28)


class ConvexityCertificateFailed(InvalidInput):
    """A potential offered as convex failed its numerical certificate (its gradient is not an OT map)."""


# ------------------------------------------------------------------------------------------------ data
@functools.lru_cache(maxsize=8)
def _split(dataset: str, split: str, classes: tuple[int, ...] | None) -> torch.Tensor:
    """Flat float32 images ``[N, dim]`` of ``classes`` (all when None), loaded once per process."""
    from otbench.data import load_dataset

    x, _ = load_dataset(dataset, split, classes=classes)
    return x.reshape(x.shape[0], -1).contiguous()


def _permutation_draw(data: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
                      ) -> Callable[[int, torch.Generator], torch.Tensor]:
    """A draw ``(n, gen) -> [n, dim]`` walking through ``data`` in fresh random permutations (per generator)."""
    state: dict[int, tuple[torch.Tensor, int]] = {}

    def draw(n: int, gen: torch.Generator) -> torch.Tensor:
        order, pos = state.get(id(gen), (torch.empty(0, dtype=torch.int64), 0))
        picks = []
        while n > 0:
            if pos >= order.numel():
                order, pos = torch.randperm(data.shape[0], generator=gen), 0
            take = min(n, order.numel() - pos)
            picks.append(order[pos:pos + take])
            pos, n = pos + take, n - take
        state[id(gen)] = (order, pos)
        out = data[torch.cat(picks)] if picks else data[:0]
        return transform(out) if transform is not None else out

    return draw


def _on(device: torch.device, dtype: torch.dtype, draw: Callable[[int, torch.Generator], torch.Tensor]
        ) -> Callable[[int, torch.Generator], torch.Tensor]:
    return lambda n, gen: draw(n, gen).to(device=device, dtype=dtype)


def _classes(value: object, field: str) -> tuple[int, ...]:
    try:
        out = tuple(int(c) for c in value)  # type: ignore[union-attr]
    except TypeError as exc:
        raise InvalidInput(f"{field} must be a list of Fashion-MNIST class indices 0-9, got {value!r}") from exc
    if not out or any(not 0 <= c <= 9 for c in out) or len(set(out)) != len(out):
        raise InvalidInput(f"{field} must be a non-empty list of distinct class indices 0-9, got {value!r}")
    return out


def _fid_extra(extractor: object, classes: tuple[int, ...] | None, n_eval: int) -> dict[str, object]:
    if extractor is None:
        return {}
    if extractor not in ("classifier", "inception"):
        raise InvalidInput(f"feature_extractor must be 'classifier', 'inception' or None, got {extractor!r}")
    if n_eval < 2:
        raise InvalidInput(f"n_eval must be >= 2, got {n_eval!r}")
    return {"dataset": "fashion_mnist", "classes": classes, "feature_extractor": extractor, "n_eval": int(n_eval)}


# ------------------------------------------------------------------------------------------- shoes -> bags
class ShoesToBags(Task):
    """Fashion-MNIST shoes (sandal, sneaker, ankle boot) -> bags, 28x28: FID / KID and transport cost of the map."""

    name = "fmnist_shoes_to_bags"
    kind = "continuous"
    #: the classifier extractor's FID; with ``feature_extractor="inception"`` the instance ranks by ``fid_inception``
    #: (a runner that reads the class attribute ranks by the column below, absent then: see the suite's GPU budget)
    primary_metric = ("fid_fashion_mnist_cnn", "min")
    defaults = {"source_classes": (5, 7, 9), "target_classes": (8,), "feature_extractor": "classifier",
                "n_eval": 1000}

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        if self.params["feature_extractor"] == "inception":
            self.primary_metric = ("fid_inception", "min")  # type: ignore[misc]

    def build(self, seed: int, device: torch.device, dtype: torch.dtype) -> tuple[Problem, Truth]:
        src = _classes(self.params["source_classes"], "source_classes")
        tgt = _classes(self.params["target_classes"], "target_classes")
        if set(src) & set(tgt):
            raise InvalidInput(f"source_classes {src} and target_classes {tgt} overlap")
        extra = _fid_extra(self.params["feature_extractor"], tgt, int(self.params["n_eval"]))
        train_p, train_q = _split("fashion_mnist", "train", src), _split("fashion_mnist", "train", tgt)
        test_p, test_q = _split("fashion_mnist", "test", src), _split("fashion_mnist", "test", tgt)
        solver_p, solver_q, _, _ = make_sampler_pair(_on(device, dtype, _permutation_draw(train_p)),
                                                     _on(device, dtype, _permutation_draw(train_q)), seed, device)
        _, _, eval_p, eval_q = make_sampler_pair(_on(device, dtype, _permutation_draw(test_p)),
                                                 _on(device, dtype, _permutation_draw(test_q)), seed, device)
        dim = math.prod(SHAPE)
        problem = Problem(kind="continuous", dim=dim, cost="sqeuclidean", device=device, dtype=dtype,
                          sample_p=solver_p, sample_q=solver_q, seed=seed, shape=SHAPE, value_range=(0.0, 1.0),
                          info={"source_classes": list(src), "target_classes": list(tgt),
                                "n_train_p": int(train_p.shape[0]), "n_train_q": int(train_q.shape[0])})
        tq = test_q.to(F64)
        extra.update({"source_classes": src, "n_test_p": int(test_p.shape[0]), "n_test_q": int(test_q.shape[0]),
                      "var_q": float((tq - tq.mean(0)).square().sum(-1).mean())})
        return problem, Truth(sample_p=eval_p, sample_q=eval_q, extra=extra)


# ------------------------------------------------------------------------------------- convex potentials
def blur_multiplier(shape: tuple[int, ...], blur: float, floor: float) -> torch.Tensor:
    """Real Fourier multiplier ``[C, H, W//2 + 1]`` (rfft2 grid): floor + (1 - floor) exp(-blur^2 |k|^2 / 2).

    It is even in k, so the operator it defines is real and symmetric; its values are its eigenvalues.
    """
    c, h, w = shape
    ky = 2 * math.pi * torch.fft.fftfreq(h, dtype=F64)
    kx = 2 * math.pi * torch.fft.rfftfreq(w, dtype=F64)
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    m = floor + (1.0 - floor) * torch.exp(-0.5 * blur**2 * k2)
    return m.expand(c, h, w // 2 + 1).clone()


class ImagePotential:
    """psi(x) = 1/2 <x, A x> + sum_k w_k l softplus((<a_k, x> - c_k) / l) on flat images ``[n, C*H*W]``.

    ``A`` is the circular convolution with real even Fourier multiplier ``multiplier`` (rfft2 grid), applied by
    FFT. No convexity is assumed here: ``certify_convexity`` checks it. Float64 parameters; ``to`` casts a copy.
    """

    def __init__(self, shape: tuple[int, ...], multiplier: torch.Tensor, ridge_dirs: torch.Tensor,
                 ridge_offsets: torch.Tensor, ridge_weights: torch.Tensor, ridge_width: float) -> None:
        self.shape, self.multiplier = tuple(shape), multiplier
        self.ridge_dirs, self.ridge_offsets, self.ridge_weights = ridge_dirs, ridge_offsets, ridge_weights
        self.ridge_width = float(ridge_width)

    @property
    def claimed_modulus(self) -> float:
        """Strong-convexity modulus psi would have if every ridge weight is >= 0: the smallest eigenvalue of A."""
        return float(self.multiplier.min())

    def to(self, device: torch.device, dtype: torch.dtype) -> "ImagePotential":
        cast = [t.to(device=device, dtype=dtype) for t in (self.multiplier, self.ridge_dirs, self.ridge_offsets,
                                                           self.ridge_weights)]
        return ImagePotential(self.shape, cast[0], cast[1], cast[2], cast[3], self.ridge_width)

    def apply_quadratic(self, x: torch.Tensor) -> torch.Tensor:
        """A x for flat images (FFT circular convolution)."""
        img = x.reshape(x.shape[0], *self.shape)
        out = torch.fft.irfft2(torch.fft.rfft2(img) * self.multiplier.to(x.dtype), s=self.shape[-2:])
        return out.reshape(x.shape[0], -1)

    def _ridge_args(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.ridge_dirs.T.to(x.dtype) - self.ridge_offsets.to(x.dtype)) / self.ridge_width

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """psi(x), shape [n]."""
        value = 0.5 * (x * self.apply_quadratic(x)).sum(-1)
        if self.ridge_dirs.shape[0]:
            soft = torch.nn.functional.softplus(self._ridge_args(x))
            value = value + self.ridge_width * (soft * self.ridge_weights.to(x.dtype)).sum(-1)
        return value

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """grad psi(x), shape [n, dim] (analytic)."""
        out = self.apply_quadratic(x)
        if self.ridge_dirs.shape[0]:
            gate = torch.sigmoid(self._ridge_args(x)) * self.ridge_weights.to(x.dtype)
            out = out + gate @ self.ridge_dirs.to(x.dtype)
        return out


def hessian(psi: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The full Hessian ``[d, d]`` of ``psi`` at one point ``x`` ``[d]`` by double backward (float64).

    All d Hessian-vector products H e_i are taken at once over d copies of x; H is *not* symmetrised, so its
    asymmetry measures how well psi's second derivatives agree.
    """
    d = x.numel()
    xs = x.detach().to(F64).reshape(1, d).repeat(d, 1).requires_grad_(True)
    (g,) = torch.autograd.grad(psi(xs).sum(), xs, create_graph=True)
    (h,) = torch.autograd.grad((g * torch.eye(d, dtype=F64)).sum(), xs)
    return h  # row i = H e_i


def certify_convexity(psi: ImagePotential, points: torch.Tensor, n_hessians: int = 4, n_pairs: int = 512,
                      seed: int = 0, rtol: float = 1e-7) -> dict[str, float]:
    """Check numerically that psi is strongly convex with modulus ``psi.claimed_modulus`` and ``grad`` is its gradient.

    On float64 copies of data ``points`` ``[n, d]``:
    1. the analytic ``psi.grad`` equals autograd's gradient of ``psi`` (relative error < rtol);
    2. at ``n_hessians`` points the full Hessian (double backward) is symmetric (relative asymmetry < rtol)
       and its smallest eigenvalue is >= claimed modulus (1 - rtol) and > 0;
    3. monotonicity on ``n_pairs`` random pairs: <grad x - grad x', x - x'> >= modulus |x - x'|^2 (1 - rtol).
    Returns the measured figures; raises ``ConvexityCertificateFailed`` naming the first check that fails.
    """
    psi64 = psi.to(torch.device("cpu"), F64)
    pts = points.detach().to("cpu", F64)
    gen = make_generator(derive_seed(seed, "certificate"))
    mu = psi64.claimed_modulus
    probe = pts[torch.randperm(pts.shape[0], generator=gen)[:64]].requires_grad_(True)
    (auto,) = torch.autograd.grad(psi64(probe).sum(), probe)
    grad_err = float((auto - psi64.grad(probe.detach())).norm() / auto.norm().clamp_min(1e-300))
    if not grad_err < rtol:
        raise ConvexityCertificateFailed(f"psi.grad is not the gradient of psi (relative error {grad_err:.2e})")
    min_eig, asym = math.inf, 0.0
    for i in torch.randperm(pts.shape[0], generator=gen)[:n_hessians].tolist():
        h = hessian(psi64, pts[i])
        asym = max(asym, float((h - h.T).norm() / h.norm()))
        min_eig = min(min_eig, float(torch.linalg.eigvalsh(0.5 * (h + h.T)).min()))
    if not asym < rtol:
        raise ConvexityCertificateFailed(f"Hessian of psi is not symmetric (relative asymmetry {asym:.2e})")
    if not (min_eig > 0 and min_eig >= mu * (1 - rtol)):
        raise ConvexityCertificateFailed(
            f"psi is not strongly convex: smallest Hessian eigenvalue at data points {min_eig:.4g} "
            f"(claimed modulus {mu:.4g}; must be > 0 and >= the claim)")
    i = torch.randint(0, pts.shape[0], (n_pairs,), generator=gen)
    j = torch.randint(0, pts.shape[0], (n_pairs,), generator=gen)
    keep = i != j
    dx = pts[i[keep]] - pts[j[keep]]
    dg = psi64.grad(pts[i[keep]]) - psi64.grad(pts[j[keep]])
    ratio = float(((dg * dx).sum(-1) / dx.square().sum(-1)).min())
    if not (ratio > 0 and ratio >= mu * (1 - rtol)):
        raise ConvexityCertificateFailed(
            f"grad psi is not strongly monotone on data pairs: min <dg, dx> / |dx|^2 = {ratio:.4g} (claimed {mu:.4g})")
    return {"grad_rel_error": grad_err, "hessian_asymmetry": asym, "hessian_min_eig": min_eig,
            "monotone_min_ratio": ratio, "modulus": mu}


class KnownMap(Task):
    """Q = grad psi # P on Fashion-MNIST, psi convex (certified): linear blur level or blur + softplus ridges."""

    name = "fmnist_known_map"
    kind = "continuous"
    primary_metric = ("l2_uvp", "min")
    defaults = {"level": "linear", "classes": None, "blur": 1.5, "floor": 0.2, "n_ridges": 16,
                "ridge_weight": 3.0, "ridge_smooth": 2.0, "ridge_width": 0.05, "instance": 0,
                "feature_extractor": "classifier", "n_eval": 1000}

    def _classes(self) -> tuple[int, ...] | None:
        c = self.params["classes"]
        return None if c is None else _classes(c, "classes")

    def potential(self) -> ImagePotential:
        """The instance's psi (float64, CPU), drawn from ``instance`` and the training images (not the run seed)."""
        p = self.params
        if p["level"] not in ("linear", "nonlinear"):
            raise InvalidInput(f"fmnist_known_map: level must be 'linear' or 'nonlinear', got {p['level']!r}")
        if not (float(p["blur"]) >= 0 and 0 < float(p["floor"]) <= 1 and int(p["n_ridges"]) >= 0
                and float(p["ridge_weight"]) > 0 and float(p["ridge_smooth"]) >= 0 and float(p["ridge_width"]) > 0):
            raise InvalidInput("fmnist_known_map needs blur >= 0, 0 < floor <= 1, n_ridges >= 0, ridge_weight > 0, "
                               f"ridge_smooth >= 0, ridge_width > 0; got {p}")
        mult = blur_multiplier(SHAPE, float(p["blur"]), float(p["floor"]))
        dim = math.prod(SHAPE)
        k = int(p["n_ridges"]) if p["level"] == "nonlinear" else 0
        gen = make_generator(derive_seed(int(p["instance"]), "fmnist_known_map"))
        noise = torch.randn(k, *SHAPE, generator=gen, dtype=F64)
        smooth = blur_multiplier(SHAPE, float(p["ridge_smooth"]), 0.0)  # low-pass filter: smooth directions
        dirs = (torch.fft.irfft2(torch.fft.rfft2(noise) * smooth, s=SHAPE[-2:]).reshape(k, dim) if k
                else torch.zeros(0, dim, dtype=F64))
        dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-300)
        train = _split("fashion_mnist", "train", self._classes())[:10000].to(F64)
        proj = train @ dirs.T  # [n, k]
        quantile = 0.2 + 0.6 * torch.rand(k, generator=gen, dtype=F64)  # kinks inside the data
        offsets = torch.stack([torch.quantile(proj[:, j], float(quantile[j])) for j in range(k)]) if k else proj[0]
        width = float(p["ridge_width"]) * (float(proj.std(0).mean()) if k else 1.0)
        weights = float(p["ridge_weight"]) * (0.5 + torch.rand(k, generator=gen, dtype=F64))
        return ImagePotential(SHAPE, mult, dirs, offsets, weights, width)

    def build(self, seed: int, device: torch.device, dtype: torch.dtype) -> tuple[Problem, Truth]:
        ref = _known_map_reference(tuple(sorted((k, _hashable(v)) for k, v in self.params.items())))
        psi64: ImagePotential = ref["psi"]
        psi = psi64.to(device, dtype)
        classes = self._classes()
        train_p, train_q = _disjoint_halves(classes, int(self.params["instance"]))
        test = _split("fashion_mnist", "test", classes)

        def push(x: torch.Tensor) -> torch.Tensor:
            return psi.grad(x.to(device=device, dtype=dtype))

        solver_p, solver_q, _, _ = make_sampler_pair(_on(device, dtype, _permutation_draw(train_p)),
                                                     _on(device, dtype, _permutation_draw(train_q, push)), seed, device)
        _, _, eval_p, eval_q = make_sampler_pair(_on(device, dtype, _permutation_draw(test)),
                                                 _on(device, dtype, _permutation_draw(test, push)), seed, device)

        def true_map(x: torch.Tensor) -> torch.Tensor:
            return psi.grad(x) if x.dtype == dtype else psi64.to(x.device, x.dtype).grad(x)

        def sample_plan(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = eval_p(n)
            return x, true_map(x)

        problem = Problem(kind="continuous", dim=math.prod(SHAPE), cost="sqeuclidean", device=device, dtype=dtype,
                          sample_p=solver_p, sample_q=solver_q, seed=seed, shape=SHAPE,
                          value_range=None)
        extra = {"potential": psi64, "kernel_min": ref["kernel_min"], "var_q": ref["var_q"], "affine_l2_uvp": ref["affine_l2_uvp"],
                 "certificate": ref["certificate"], "strong_convexity": psi64.claimed_modulus}
        extra.update(_fid_extra(self.params["feature_extractor"], classes, int(self.params["n_eval"])))
        truth = Truth(distance=ref["distance"], distance_se=ref["distance_se"], sample_p=eval_p, sample_q=eval_q,
                      sample_plan=sample_plan, map=true_map, extra=extra)
        return problem, truth


@functools.lru_cache(maxsize=8)
def _disjoint_halves(classes: tuple[int, ...] | None, instance: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The train split cut in two disjoint halves (a fixed permutation per instance): P's images and the images
    whose pushes make Q, so that no training image appears on both sides (pairing cannot leak)."""
    train = _split("fashion_mnist", "train", classes)
    order = torch.randperm(train.shape[0], generator=make_generator(derive_seed(instance, "fmnist_known_map", "halves")))
    half = train.shape[0] // 2
    return train[order[:half]].contiguous(), train[order[half:2 * half]].contiguous()


def _hashable(v: object) -> object:
    return tuple(v) if isinstance(v, list) else v


@functools.lru_cache(maxsize=8)
def _known_map_reference(key: tuple) -> dict[str, object]:
    """The certified psi of an instance and float64 reference figures on the test split (cached per process).

    W2^2 = E|x - grad psi(x)|^2 over the test images (with its standard error as an estimate of the population
    value), Var(Q) on the pushed test images, and the L2-UVP of the best affine fit (least squares on the test
    split itself, so an optimistic figure of how far from affine the map is).
    """
    task = KnownMap(**dict(key))
    psi = task.potential()
    classes = task._classes()
    train = _split("fashion_mnist", "train", classes)
    cert = certify_convexity(psi, train[:4096], seed=int(task.params["instance"]))
    delta = torch.zeros(1, math.prod(SHAPE), dtype=F64)
    delta[0, 0] = 1.0
    kernel_min = float(psi.apply_quadratic(delta).min())
    x = _split("fashion_mnist", "test", classes).to(F64)
    y = psi.grad(x)
    cost = (x - y).square().sum(-1)
    var_q = float((y - y.mean(0)).square().sum(-1).mean())
    # best affine fit y ~ B (x - mean x) + mean y by least squares (normal equations, float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    gram = xc.T @ xc
    coef = torch.linalg.solve(gram + 1e-10 * gram.trace() * torch.eye(gram.shape[0], dtype=F64), xc.T @ yc)
    affine = 100 * float((xc @ coef - yc).square().sum(-1).mean()) / var_q
    return {"psi": psi, "certificate": cert, "kernel_min": kernel_min, "distance": float(cost.mean()),
            "distance_se": float(cost.std() / math.sqrt(cost.numel())), "var_q": var_q, "affine_l2_uvp": affine}


@hookimpl
def otbench_register_tasks(register: Callable[[type], None]) -> None:
    register(ShoesToBags)
    register(KnownMap)
