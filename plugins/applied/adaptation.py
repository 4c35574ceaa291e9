"""Unsupervised domain adaptation on images: the offline domain-pair tasks, DASPOT and the baselines people use.

Tasks (``domain_adaptation``, kind ``adaptation``): labelled source training images and *unlabelled* target
training images of two domains from ``plugins/applied/domains.py`` (digits -> digits-M, Fashion-MNIST ->
Fashion-M, Fashion-MNIST -> inverted Fashion-MNIST offline; MNIST, MNIST-M, USPS, SVHN where a user passes a
path); the truth keeps the labelled target test split. ``domain_adaptation_oracle`` is its twin of kind
``transfer`` that exposes *all* target training labels: the ``target_only`` solver on it is the oracle ceiling
(an adaptation problem never exposes target labels, so the ceiling cannot be an adaptation solver).

Solvers (kind ``adaptation`` unless said; all on the LeNet-like trunk of ``plugins/applied/nets.py``):

- ``source_only``: cross-entropy on the source; the floor every method must beat.
- ``target_only`` (kind ``transfer``): cross-entropy on the labelled target training set only.
- ``ot_da``: POT's domain-adaptation transports (``ot.da.SinkhornTransport``, ``ot.da.EMDTransport``; Courty et
  al. 2017), the library a user would pick: train a source-only net, transport the source's trunk features (or
  its pixels) onto the target's by the barycentric map of the OT plan, and train a fresh head (or, for pixels, a
  fresh net) on the transported source with the source labels.
- ``deepjdot``: DeepJDOT (Damodaran et al. 2018): per mini-batch, an exact OT plan (POT's ``emd``) between source
  and target samples under the joint cost alpha |g(x_i) - g(y_j)|^2 + lambda_t CE(v_i, f(g(y_j))), and the loss
  CE(f(g(x)), v) + sum_ij gamma_ij C_ij, after a source-only warm-up.
- ``deep_coral``: Deep CORAL (Sun & Saenko 2016), the classic non-OT method: source cross-entropy plus
  lambda |C_s - C_t|_F^2 / (4 d^2) between the covariances of source and target trunk features.
- ``daspot``: DASPOT (seed 004 section 3.5, seed 000 section 4.1), below.

DASPOT trains a SPOT coupling between the domains jointly with two classifiers D_X = D_c o D_e,X and D_Y = D_c o
D_e,Y. As in seed 000's networks, the classifiers share the LeNet trunk and the class head and differ in their
first convolution (one stem per domain); the generator G(z) = (G_X(z), G_Y(z)) shares all layers but the last.
The critics lambda_X, lambda_Y follow the same layout (a stem per domain, a shared trunk, a head per domain)
but are a separate, spectrally normalised network: seed 000 hung its critic head on the classifier's trunk, but
then the 1-Lipschitz constraint binds the classifier and the max over the critics fights the min over the
classifiers on the same weights. Each iteration (seed 000's Algorithm 1):

1. critics: ascend eta (E lambda_X(G_X(z)) - E lambda_X(x) + E lambda_Y(G_Y(z)) - E lambda_Y(y)) (plugins/maps/
   spot.py's ``critic_gap`` / ``clip_weights``);
2. generator: descend E |D_e,X(G_X(z)) - D_e,Y(G_Y(z))|^2 + eta (E lambda_X(G_X(z)) + E lambda_Y(G_Y(z)));
3. classifiers: descend eta_s CE(D_X(x), v) + eta_da CE(D_Y(G_Y(z)), argmax D_X(G_X(z))) + eta_align
   E |D_e,X(G_X(z)) - D_e,Y(G_Y(z))|^2 (the Lagrangian's cost is minimised over D as well, seed 004 eq. after
   3.14).

Choices the seeds leave open: ``pretrain`` source-only steps of D_X before the joint loop (seed: none), and
D_Y's stem starts as a copy of D_X's (``init_y_from_x``), so D_Y starts as the source classifier rather than a
random net. The returned classifier is D_Y; ``plan_samples`` draws generated pairs (G_X(z), G_Y(z)).

Seed 000's settings (Adam 2e-4, batch 128, 30000 iterations, 20/50/500-wide trunk) are the defaults and the GPU
budget of suites/applied.yaml; the CPU budget shortens training and says so there. Measured on the CPU (digits ->
digits-M, 8/16/64 LeNet, 300 pretraining steps + 400 iterations, one seed): the generated pairs already look
like grey digits / coloured blobs, but the pseudo-labels of such pairs are poor and D_Y ends at 0.11 target
accuracy, below source-only (0.32): DASPOT needs the long schedule; short CPU budgets measure its early phase.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from otbench import Problem, Solution, Solver, Task, Truth, hookimpl
from otbench.api import InvalidInput
from otbench.sampling import derive_seed, make_generator
from otbench_plugins.applied.domains import DOMAINS, domain_pair
from otbench_plugins.applied.nets import (Classifier, as_classifier, batch_indices, lenet_trunk, train_supervised,
                                          trunk_out_size)
from otbench_plugins.maps.spot import clip_weights, critic_gap
from otbench_plugins.nets import seeded

__all__ = ["DomainAdaptationTask", "DomainOracleTask", "SourceOnly", "TargetOnly", "OTDA", "DeepJDOT",
           "DeepCORAL", "DASPOT"]


# ---------------------------------------------------------------------------------------------------- tasks

class DomainAdaptationTask(Task):
    """Unsupervised domain adaptation between two offline image domains (labelled source, unlabelled target)."""

    name = "domain_adaptation"
    kind = "adaptation"
    primary_metric = ("accuracy", "max")
    defaults = {
        "source": "digits",       # a domain of plugins/applied/domains.py DOMAINS
        "target": "digits_m",
        "n_source": None,         # None: all (of the source's half when both share a base dataset)
        "n_target": None,
        "n_test": None,           # None: the whole target test split
        "size": 28,               # image side (every domain is resized to it)
        "source_path": None,      # folder of the source data for mnist / usps / svhn
        "target_path": None,
    }

    def _check(self) -> None:
        p = self.params
        for key in ("source", "target"):
            if p[key] not in DOMAINS:
                raise InvalidInput(f"{self.name}: {key} must be one of {sorted(DOMAINS)}, got {p[key]!r}")
        if p["source"] == p["target"]:
            raise InvalidInput(f"{self.name}: source and target are the same domain {p['source']!r}")
        for key in ("n_source", "n_target", "n_test"):
            if p[key] is not None and int(p[key]) < 1:
                raise InvalidInput(f"{self.name}: {key} must be None or >= 1, got {p[key]!r}")
        if int(p["size"]) < 16:
            raise InvalidInput(f"{self.name}: size must be >= 16 (LeNet trunk), got {p['size']!r}")

    def build(self, seed: int, device: torch.device, dtype: torch.dtype) -> tuple[Problem, Truth]:
        self._check()
        p = self.params
        pair = domain_pair(p["source"], p["target"], seed, p["n_source"], p["n_target"], p["n_test"], int(p["size"]),
                           p["source_path"], p["target_path"])
        flat = lambda t: t.reshape(t.shape[0], -1).to(device, dtype)  # noqa: E731
        labels = lambda t: t.to(device, torch.int64)  # noqa: E731
        (xs, ls), (xt, lt), (xst, lst), (xtt, ltt) = pair.source_train, pair.target_train, pair.source_test, pair.target_test
        n_classes = int(max(int(ls.max()), int(lt.max()), int(ltt.max()))) + 1
        shape = pair.shape
        problem = Problem(self.kind, int(np.prod(shape)), "sqeuclidean", device, dtype, x=flat(xs), y=flat(xt),
                          x_labels=labels(ls), y_labels=labels(lt) if self.kind == "transfer" else None,
                          n_classes=n_classes, seed=seed, shape=shape, value_range=(0.0, 1.0),
                          info={"source": p["source"], "target": p["target"],
                                "oracle_twin": self.kind == "transfer"})
        truth = Truth(test_inputs=flat(xtt), test_labels=labels(ltt),
                      extra={"source_test_inputs": flat(xst), "source_test_labels": labels(lst)})
        return problem, truth


class DomainOracleTask(DomainAdaptationTask):
    """Twin of domain_adaptation that exposes ALL target training labels (kind transfer): the oracle's task."""

    name = "domain_adaptation_oracle"
    kind = "transfer"


# ---------------------------------------------------------------------------------------------- shared bits

_NET = {
    "widths": (20, 50),   # seed 000's trunk: conv 5x5 x20, conv 5x5 x50
    "features": 500,      # seed 000: 500
    "batch_size": 128,    # seed 000
    "lr": 2e-4,           # seed 000: Adam 2e-4
}


class _ImageClassifierSolver(Solver):
    """Plumbing shared by the solvers here: image-only, one thread, seeded nets and batches, parameter checks."""

    kinds = frozenset({"adaptation"})
    provides = frozenset({"classifier"})
    inputs = "images"
    threads = 1
    _positive: tuple[str, ...] = ("steps", "batch_size", "features", "trace_every")

    def _check_params(self) -> None:
        p = self.params
        for key in self._positive:
            if key in p and (p[key] is None or int(p[key]) < 1):
                raise InvalidInput(f"{self.name}: {key} must be an int >= 1, got {p[key]!r}")
        if "lr" in p and not float(p["lr"]) > 0:
            raise InvalidInput(f"{self.name}: lr must be > 0, got {p['lr']!r}")
        if "widths" in p and (len(p["widths"]) != 2 or min(int(w) for w in p["widths"]) < 1):
            raise InvalidInput(f"{self.name}: widths must be two positive channel counts, got {p['widths']!r}")

    def _start(self, problem: Problem) -> torch.Generator:
        self.check_supported(problem)
        self._check_params()
        seeded(problem.seed)
        return make_generator(derive_seed(problem.seed, self.name, "batches"), problem.device)

    def _net(self, problem: Problem) -> Classifier:
        p = self.params
        return Classifier(problem.sample_shape, int(problem.n_classes), p["widths"], int(p["features"])).to(
            problem.device, problem.dtype)


class SourceOnly(_ImageClassifierSolver):
    """Source only: the LeNet classifier trained on the labelled source and applied to the target (the floor)."""

    name = "source_only"
    defaults = {**_NET, "steps": 30000, "trace_every": 500}

    def solve(self, problem: Problem) -> Solution:
        gen = self._start(problem)
        p, trace = self.params, []
        net = self._net(problem)
        train_supervised(net, problem.x, problem.x_labels, int(p["steps"]), int(p["batch_size"]), float(p["lr"]),
                         gen, trace, int(p["trace_every"]))
        return Solution(classifier=as_classifier(net), iterations=int(p["steps"]), trace=trace,
                        info={"final_loss": trace[-1]["loss"]})


class TargetOnly(_ImageClassifierSolver):
    """Target only: the classifier trained on the labelled target training set (the oracle on the oracle twin task)."""

    name = "target_only"
    kinds = frozenset({"transfer"})
    defaults = {**_NET, "steps": 30000, "trace_every": 500}

    def solve(self, problem: Problem) -> Solution:
        gen = self._start(problem)
        p, trace = self.params, []
        net = self._net(problem)
        train_supervised(net, problem.y, problem.y_labels, int(p["steps"]), int(p["batch_size"]), float(p["lr"]),
                         gen, trace, int(p["trace_every"]))
        return Solution(classifier=as_classifier(net), iterations=int(p["steps"]), trace=trace,
                        info={"final_loss": trace[-1]["loss"], "n_target_labels": float(problem.y.shape[0])})


def _subsample(n: int, limit: int | None, seed: int, tag: str) -> torch.Tensor:
    if limit is None or n <= int(limit):
        return torch.arange(n)
    rng = np.random.default_rng(derive_seed(seed, tag))
    return torch.from_numpy(np.sort(rng.choice(n, size=int(limit), replace=False)))


def _embed(net: Classifier, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        out = torch.cat([net.embed(x[s:s + batch]) for s in range(0, x.shape[0], batch)])
    net.train()
    return out


class OTDA(_ImageClassifierSolver):
    """POT's ot.da transports (Sinkhorn or EMD) of source trunk features or pixels onto the target, then a classifier."""

    name = "ot_da"
    defaults = {
        **_NET,
        "transport": "sinkhorn",  # "sinkhorn" (ot.da.SinkhornTransport), "emd" (ot.da.EMDTransport) or
                                  # "sinkhorn_lpl1" (ot.da.SinkhornLpl1Transport: class-regularised, uses ys)
        "space": "features",      # "features": transport trunk features, refit the head; "pixels": refit a net
        "reg_e": 0.05,            # Sinkhorn's entropic regularisation (relative to the max-normalised cost)
        "reg_cl": 0.1,            # sinkhorn_lpl1: weight of the class (group-lasso) regulariser
        "norm": "max",            # POT's cost normalisation (None, "median", "max", "log", "loglog")
        "n_fit": 1000,            # points per side the plan is fitted on (EMD is cubic in it)
        "steps": 30000,           # source-only training of the net (pixels: also the refit on transported images)
        "head_steps": 2000,       # refit of the head on transported features
        "trace_every": 500,
    }
    _positive = ("steps", "batch_size", "features", "trace_every", "n_fit", "head_steps")

    def _check_params(self) -> None:
        super()._check_params()
        p = self.params
        if p["transport"] not in ("sinkhorn", "emd", "sinkhorn_lpl1"):
            raise InvalidInput(f"ot_da: transport must be 'sinkhorn', 'emd' or 'sinkhorn_lpl1', got {p['transport']!r}")
        if p["space"] not in ("features", "pixels"):
            raise InvalidInput(f"ot_da: space must be 'features' or 'pixels', got {p['space']!r}")
        if p["transport"] != "emd" and not float(p["reg_e"]) > 0:
            raise InvalidInput(f"ot_da: reg_e must be > 0, got {p['reg_e']!r}")

    def _transport(self, xs: np.ndarray, ys: np.ndarray, xt: np.ndarray) -> np.ndarray:
        import ot

        p = self.params
        if p["transport"] == "sinkhorn":
            mapping = ot.da.SinkhornTransport(reg_e=float(p["reg_e"]), norm=p["norm"], max_iter=1000)
        elif p["transport"] == "sinkhorn_lpl1":
            mapping = ot.da.SinkhornLpl1Transport(reg_e=float(p["reg_e"]), reg_cl=float(p["reg_cl"]), norm=p["norm"])
        else:
            mapping = ot.da.EMDTransport(norm=p["norm"])
        mapping.fit(Xs=xs, ys=ys, Xt=xt)
        return mapping.transform(Xs=xs)

    def solve(self, problem: Problem) -> Solution:
        gen = self._start(problem)
        p, trace = self.params, []
        start = time.perf_counter()
        steps, batch, lr = int(p["steps"]), int(p["batch_size"]), float(p["lr"])
        i_s = _subsample(problem.x.shape[0], p["n_fit"], problem.seed, "ot_da/source").to(problem.device)
        i_t = _subsample(problem.y.shape[0], p["n_fit"], problem.seed, "ot_da/target").to(problem.device)
        labels = problem.x_labels[i_s]
        if p["space"] == "pixels":
            xs = problem.x[i_s].double().cpu().numpy()
            moved = self._transport(xs, labels.cpu().numpy(), problem.y[i_t].double().cpu().numpy())
            moved_t = torch.as_tensor(moved, device=problem.device, dtype=problem.dtype)
            net = self._net(problem)
            train_supervised(net, moved_t, labels, steps, batch, lr, gen, trace, int(p["trace_every"]))
            shift = float(np.linalg.norm(moved - xs, axis=1).mean())
            return Solution(classifier=as_classifier(net), iterations=steps, trace=trace,
                            info={"final_loss": trace[-1]["loss"], "mean_transport_shift": shift})
        net = self._net(problem)
        train_supervised(net, problem.x, problem.x_labels, steps, batch, lr, gen, trace, int(p["trace_every"]))
        fs, ft = _embed(net, problem.x[i_s]), _embed(net, problem.y[i_t])
        fs64 = fs.double().cpu().numpy()
        moved = self._transport(fs64, labels.cpu().numpy(), ft.double().cpu().numpy())
        moved_t = torch.as_tensor(moved, device=problem.device, dtype=problem.dtype)
        for q in net.trunk.parameters():
            q.requires_grad_(False)
        head = nn.Linear(int(p["features"]), int(problem.n_classes)).to(problem.device, problem.dtype)
        train_supervised(head, moved_t, labels, int(p["head_steps"]), batch, float(p["lr"]) * 10, gen, trace,
                         int(p["trace_every"]), step_offset=steps)
        net.head = head
        trace.append({"iteration": steps + int(p["head_steps"]), "time": time.perf_counter() - start,
                      "mean_transport_shift": float(np.linalg.norm(moved - fs64, axis=1).mean())})
        return Solution(classifier=as_classifier(net), iterations=steps + int(p["head_steps"]), trace=trace,
                        info={"final_loss": trace[-2]["loss"], "mean_transport_shift": trace[-1]["mean_transport_shift"]})


def jdot_cost(gs: torch.Tensor, gt: torch.Tensor, logits_t: torch.Tensor, labels_s: torch.Tensor, alpha: float,
              lambda_t: float) -> torch.Tensor:
    """DeepJDOT's joint cost ``[n_s, n_t]``: alpha |g_i - g_j|^2 + lambda_t CE(v_i, f(g_j)), CE = -log softmax_j[v_i]."""
    feat = torch.cdist(gs, gt).square()
    label = -F.log_softmax(logits_t, dim=1).t()[labels_s]
    return alpha * feat + lambda_t * label


class DeepJDOT(_ImageClassifierSolver):
    """DeepJDOT (Damodaran et al. 2018): mini-batch exact OT on joint feature/label costs, trained end to end."""

    name = "deepjdot"
    defaults = {
        **_NET,
        "steps": 30000,        # joint steps after the warm-up
        "warmup": 2000,        # source-only steps first (the paper pre-trains on the source)
        "alpha": 0.001,        # weight of the feature distance (paper: 0.001)
        "lambda_t": 0.0001,    # weight of the target label loss in the cost (paper: 0.0001)
        "trace_every": 500,
    }
    _positive = ("steps", "batch_size", "features", "trace_every")

    def _check_params(self) -> None:
        super()._check_params()
        p = self.params
        if int(p["warmup"]) < 0 or float(p["alpha"]) < 0 or float(p["lambda_t"]) < 0:
            raise InvalidInput(f"deepjdot: warmup, alpha and lambda_t must be >= 0, got {p['warmup']!r}, "
                               f"{p['alpha']!r}, {p['lambda_t']!r}")

    def solve(self, problem: Problem) -> Solution:
        import ot

        gen = self._start(problem)
        p, trace = self.params, []
        batch, lr, warm = int(p["batch_size"]), float(p["lr"]), int(p["warmup"])
        net = self._net(problem)
        if warm:
            train_supervised(net, problem.x, problem.x_labels, warm, batch, lr, gen, trace, int(p["trace_every"]))
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        alpha, lam = float(p["alpha"]), float(p["lambda_t"])
        start = time.perf_counter()
        n_s, n_t = problem.x.shape[0], problem.y.shape[0]
        for it in range(1, int(p["steps"]) + 1):
            i_s, i_t = batch_indices(n_s, batch, gen), batch_indices(n_t, batch, gen)
            xs, vs, xt = problem.x[i_s], problem.x_labels[i_s], problem.y[i_t]
            gs, gt = net.embed(xs), net.embed(xt)
            logits_s, logits_t = net.head(gs), net.head(gt)
            cost = jdot_cost(gs, gt, logits_t, vs, alpha, lam)
            c64 = cost.detach().double().cpu().numpy()
            w_s, w_t = np.full(c64.shape[0], 1 / c64.shape[0]), np.full(c64.shape[1], 1 / c64.shape[1])
            gamma = torch.as_tensor(ot.emd(w_s, w_t, c64), device=cost.device, dtype=cost.dtype)
            ce = F.cross_entropy(logits_s, vs)
            align = (gamma * cost).sum()
            loss = ce + align
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if it % int(p["trace_every"]) == 0 or it == int(p["steps"]):
                trace.append({"iteration": warm + it, "time": time.perf_counter() - start, "loss": float(ce.detach()),
                              "jdot_loss": float(align.detach())})
        return Solution(classifier=as_classifier(net), iterations=warm + int(p["steps"]), trace=trace,
                        info={"final_loss": trace[-1]["loss"], "final_jdot_loss": trace[-1]["jdot_loss"]})


def coral_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Deep CORAL: |C_s - C_t|_F^2 / (4 d^2) between the feature covariances of two batches [n, d]."""
    d = fs.shape[1]

    def cov(f: torch.Tensor) -> torch.Tensor:
        c = f - f.mean(0, keepdim=True)
        return c.t() @ c / max(f.shape[0] - 1, 1)

    return (cov(fs) - cov(ft)).square().sum() / (4 * d * d)


class DeepCORAL(_ImageClassifierSolver):
    """Deep CORAL (Sun & Saenko 2016): source cross-entropy plus covariance alignment of trunk features."""

    name = "deep_coral"
    defaults = {**_NET, "steps": 30000, "lambda_coral": 1.0, "layer": "features", "trace_every": 500}

    def _check_params(self) -> None:
        super()._check_params()
        p = self.params
        if float(p["lambda_coral"]) < 0:
            raise InvalidInput(f"deep_coral: lambda_coral must be >= 0, got {p['lambda_coral']!r}")
        if p["layer"] not in ("features", "logits"):
            raise InvalidInput(f"deep_coral: layer must be 'features' or 'logits', got {p['layer']!r}")

    def solve(self, problem: Problem) -> Solution:
        gen = self._start(problem)
        p, trace = self.params, []
        batch, lam = int(p["batch_size"]), float(p["lambda_coral"])
        net = self._net(problem)
        opt = torch.optim.Adam(net.parameters(), lr=float(p["lr"]))
        start = time.perf_counter()
        n_s, n_t = problem.x.shape[0], problem.y.shape[0]
        for it in range(1, int(p["steps"]) + 1):
            i_s, i_t = batch_indices(n_s, batch, gen), batch_indices(n_t, batch, gen)
            gs, gt = net.embed(problem.x[i_s]), net.embed(problem.y[i_t])
            logits_s = net.head(gs)
            ce = F.cross_entropy(logits_s, problem.x_labels[i_s])
            aligned = (gs, gt) if p["layer"] == "features" else (logits_s, net.head(gt))
            coral = coral_loss(*aligned)
            loss = ce + lam * coral
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if it % int(p["trace_every"]) == 0 or it == int(p["steps"]):
                trace.append({"iteration": it, "time": time.perf_counter() - start, "loss": float(ce.detach()),
                              "coral_loss": float(coral.detach())})
        return Solution(classifier=as_classifier(net), iterations=int(p["steps"]), trace=trace,
                        info={"final_loss": trace[-1]["loss"], "final_coral_loss": trace[-1]["coral_loss"]})


# ------------------------------------------------------------------------------------------------- DASPOT

class _TwoStem(nn.Module):
    """A first convolution per domain, then a shared LeNet trunk (seed 000's discriminator/classifier layout)."""

    def __init__(self, shape: tuple[int, ...], widths: tuple[int, int], features: int, spectral: bool,
                 activation: Callable[[], nn.Module]):
        super().__init__()
        self.shape = shape
        trunk = lenet_trunk(shape[0], shape[1], widths, features, spectral=spectral, activation=activation)
        self.stem_x, self.shared = trunk[0], trunk[1:]
        wrap = nn.utils.parametrizations.spectral_norm if spectral else (lambda m: m)
        self.stem_y = wrap(nn.Conv2d(shape[0], int(widths[0]), 5))

    def embed_x(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(self.stem_x(x.reshape(x.shape[0], *self.shape)))

    def embed_y(self, y: torch.Tensor) -> torch.Tensor:
        return self.shared(self.stem_y(y.reshape(y.shape[0], *self.shape)))


class _DomainClassifier(nn.Module):
    """D_X or D_Y: the class head over one domain's embedding (shares its modules with the other domain's)."""

    def __init__(self, embed: _TwoStem, head: nn.Linear, domain: str):
        super().__init__()
        self.embed, self.head, self.domain = embed, head, domain

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed.embed_x(v) if self.domain == "x" else self.embed.embed_y(v))


class _PairGenerator(nn.Module):
    """z -> (G_X(z), G_Y(z)) images in [0, 1]: shared linear + deconvolution layers, one last layer per domain."""

    def __init__(self, latent: int, shape: tuple[int, ...], width: int):
        super().__init__()
        c, side = shape[0], shape[1]
        if side % 4:
            raise InvalidInput(f"daspot: the generator needs an image side divisible by 4, got {side}")
        self.shape, self.base = shape, side // 4
        w = int(width)
        self.fc = nn.Sequential(nn.Linear(latent, 2 * w * self.base * self.base), nn.BatchNorm1d(2 * w * self.base ** 2),
                                nn.PReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.BatchNorm2d(w), nn.PReLU())
        self.out_x = nn.ConvTranspose2d(w, c, 4, 2, 1)
        self.out_y = nn.ConvTranspose2d(w, c, 4, 2, 1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.up(self.fc(z).reshape(z.shape[0], -1, self.base, self.base))
        flat = lambda t: torch.sigmoid(t).reshape(z.shape[0], -1)  # noqa: E731
        return flat(self.out_x(h)), flat(self.out_y(h))


class DASPOT(_ImageClassifierSolver):
    """DASPOT (seed 004 s3.5, seed 000 s4.1): SPOT between the domains with an embedding cost, plus source and pseudo-label losses."""

    name = "daspot"
    provides = frozenset({"classifier", "plan_samples"})
    defaults = {
        **_NET,
        "iterations": 30000,       # seed 000
        "pretrain": 0,             # source-only classifier steps before the joint training (seed: none)
        "init_y_from_x": True,     # start D_Y's stem as a copy of D_X's (after the pretraining): D_Y starts as
                                   # the source classifier instead of a random one
        "eta": 10.0,               # weight of the marginal (critic) terms, as in plugins/maps/spot.py
        "eta_s": 1.0,              # source cross-entropy weight
        "eta_da": 1.0,             # pseudo-label loss weight on generated target images
        "eta_align": 1.0,          # weight of the embedding cost in the classifiers' loss
        "n_critic": 1,             # critic steps per generator step (seed 000's Algorithm 1: one)
        "latent_dim": 100,
        "gen_width": 64,
        "critic_widths": (20, 50),
        "critic_features": 100,    # seed 000's critic tail: 100 then 1
        "lipschitz": "spectral",   # "spectral" or "clip"
        "clip_value": 0.01,
        "lr_critic": None,         # None: lr
        "trace_every": 500,
    }
    _positive = ("iterations", "batch_size", "features", "trace_every", "n_critic", "latent_dim", "gen_width",
                 "critic_features")

    def _check_params(self) -> None:
        super()._check_params()
        p = self.params
        if p["lipschitz"] not in ("spectral", "clip"):
            raise InvalidInput(f"daspot: lipschitz must be 'spectral' or 'clip', got {p['lipschitz']!r}")
        for key in ("eta", "eta_s", "eta_da", "eta_align"):
            if float(p[key]) < 0:
                raise InvalidInput(f"daspot: {key} must be >= 0, got {p[key]!r}")
        if int(p["pretrain"]) < 0:
            raise InvalidInput(f"daspot: pretrain must be >= 0, got {p['pretrain']!r}")

    def solve(self, problem: Problem) -> Solution:
        gen = self._start(problem)
        p = self.params
        dev, dt, shape = problem.device, problem.dtype, problem.sample_shape
        batch, eta, k = int(p["batch_size"]), float(p["eta"]), int(problem.n_classes)
        lr = float(p["lr"])
        lr_c = float(p["lr_critic"]) if p["lr_critic"] is not None else lr
        trunk_out_size(shape[1])

        embed = _TwoStem(shape, p["widths"], int(p["features"]), False, nn.ReLU).to(dev, dt)
        head = nn.Linear(int(p["features"]), k).to(dev, dt)
        critic = _TwoStem(shape, p["critic_widths"], int(p["critic_features"]), p["lipschitz"] == "spectral",
                          nn.LeakyReLU).to(dev, dt)
        wrap = nn.utils.parametrizations.spectral_norm if p["lipschitz"] == "spectral" else (lambda m: m)
        tail_x = wrap(nn.Linear(int(p["critic_features"]), 1)).to(dev, dt)
        tail_y = wrap(nn.Linear(int(p["critic_features"]), 1)).to(dev, dt)
        pair_gen = _PairGenerator(int(p["latent_dim"]), shape, int(p["gen_width"])).to(dev, dt)

        def lam_x(v: torch.Tensor) -> torch.Tensor:
            return tail_x(critic.embed_x(v))

        def lam_y(v: torch.Tensor) -> torch.Tensor:
            return tail_y(critic.embed_y(v))

        betas = (0.5, 0.999)
        cls_params = list(embed.parameters()) + list(head.parameters())
        crit_params = list(critic.parameters()) + list(tail_x.parameters()) + list(tail_y.parameters())
        opt_d = torch.optim.Adam(cls_params, lr=lr, betas=betas)
        opt_c = torch.optim.Adam(crit_params, lr=lr_c, betas=betas)
        opt_g = torch.optim.Adam(pair_gen.parameters(), lr=lr, betas=betas)

        trace: list[dict[str, float]] = []
        pre = int(p["pretrain"])
        if pre:
            # D_X trained alone on the source first
            train_supervised(_DomainClassifier(embed, head, "x"), problem.x, problem.x_labels, pre, batch, lr, gen, trace, int(p["trace_every"]),
                             params=cls_params)

        if p["init_y_from_x"]:
            embed.stem_y.load_state_dict(embed.stem_x.state_dict())
        n_s, n_t = problem.x.shape[0], problem.y.shape[0]
        latent = int(p["latent_dim"])
        clip = float(p["clip_value"]) if p["lipschitz"] == "clip" else None
        start = time.perf_counter()
        total = int(p["iterations"])
        for it in range(1, total + 1):
            # 1. critics: ascend eta (E lambda(G(z)) - E lambda(data)) on both domains, generator fixed
            for _ in range(int(p["n_critic"])):
                z = torch.randn(batch, latent, generator=gen, device=dev, dtype=dt)
                with torch.no_grad():
                    gx, gy = pair_gen(z)
                xs, yt = problem.x[batch_indices(n_s, batch, gen)], problem.y[batch_indices(n_t, batch, gen)]
                gap_x, gap_y = critic_gap(lam_x, gx, xs), critic_gap(lam_y, gy, yt)
                opt_c.zero_grad(set_to_none=True)
                (-eta * (gap_x + gap_y)).backward()
                opt_c.step()
                if clip is not None:
                    clip_weights(crit_params, clip)
            # 2. generator: the embedding cost of the pairs plus eta times the critics' values
            z = torch.randn(batch, latent, generator=gen, device=dev, dtype=dt)
            gx, gy = pair_gen(z)
            transport = (embed.embed_x(gx) - embed.embed_y(gy)).square().sum(1).mean()
            loss_g = transport + eta * (lam_x(gx).mean() + lam_y(gy).mean())
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            # 3. classifiers: source labels, pseudo-labels of generated target images, embedding alignment
            i_s = batch_indices(n_s, batch, gen)
            gx, gy = gx.detach(), gy.detach()
            ce_s = F.cross_entropy(head(embed.embed_x(problem.x[i_s])), problem.x_labels[i_s])
            ex, ey = embed.embed_x(gx), embed.embed_y(gy)
            pseudo = head(ex).argmax(1).detach()
            ce_da = F.cross_entropy(head(ey), pseudo)
            align = (ex - ey).square().sum(1).mean()
            loss_d = float(p["eta_s"]) * ce_s + float(p["eta_da"]) * ce_da + float(p["eta_align"]) * align
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            if it % int(p["trace_every"]) == 0 or it == total:
                trace.append({"iteration": pre + it, "time": time.perf_counter() - start,
                              "transport_cost": float(transport.detach()), "critic_gap_x": float(gap_x.detach()),
                              "critic_gap_y": float(gap_y.detach()), "loss": float(ce_s.detach()),
                              "pseudo_label_loss": float(ce_da.detach())})

        pair_gen.eval()  # batch norm on running statistics: a draw does not depend on its batch
        for q in pair_gen.parameters():
            q.requires_grad_(False)
        plan_rng = make_generator(derive_seed(problem.seed, self.name, "plan_samples"), dev)

        def plan_samples(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            """Paired (G_X(z), G_Y(z)): the learnt coupling of source and target (flat, in [0, 1])."""
            with torch.no_grad():
                return pair_gen(torch.randn(int(n), latent, generator=plan_rng, device=dev, dtype=dt))

        last = trace[-1]
        return Solution(classifier=as_classifier(_DomainClassifier(embed, head, "y")), plan_samples=plan_samples, iterations=pre + total, trace=trace,
                        info={k2: last[k2] for k2 in ("transport_cost", "critic_gap_x", "critic_gap_y", "loss",
                                                        "pseudo_label_loss")})


@hookimpl
def otbench_register_tasks(register: Callable[[type], None]) -> None:
    register(DomainAdaptationTask)
    register(DomainOracleTask)


@hookimpl
def otbench_register_solvers(register: Callable[[type], None]) -> None:
    for cls in (SourceOnly, TargetOnly, OTDA, DeepJDOT, DeepCORAL, DASPOT):
        register(cls)
