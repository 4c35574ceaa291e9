"""The fused row-block iterations of Sinkhorn and IPOT (plugins/discrete/entropic.py, FUSED_BLOCK_BYTES) give the
plan of the textbook formulas, the same plan as the plain two-mat-vec path, on uneven blocks and n != m. These are
the torch paths (OTBENCH_CPU_KERNELS=torch); the compiled kernels that replace them when numba is present are
tested in test_cpu_kernels.py."""

from __future__ import annotations

import pytest
import torch

from otbench_plugins.discrete import entropic
from otbench_plugins.discrete.entropic import ipot_solve, row_blocks, sinkhorn_solve

N, M = 53, 41  # 53 rows in blocks of 8: six full blocks and a short one


def problem(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, 2, generator=g, dtype=torch.float64)
    y = torch.rand(M, 2, generator=g, dtype=torch.float64)
    c = torch.cdist(x, y).square()
    c = c / c.max()
    a = torch.rand(N, generator=g, dtype=torch.float64) + 0.2
    b = torch.rand(M, generator=g, dtype=torch.float64) + 0.2
    return a / a.sum(), b / b.sum(), c


@pytest.fixture(autouse=True)
def torch_path(monkeypatch):
    monkeypatch.setenv("OTBENCH_CPU_KERNELS", "torch")


@pytest.fixture
def fused(monkeypatch):
    """Force the fused path on a tiny matrix: blocks of 8 rows."""
    monkeypatch.setattr(entropic, "FUSED_MIN_BYTES", 0)
    monkeypatch.setattr(entropic, "FUSED_BLOCK_BYTES", 8 * M * 8)


@pytest.fixture
def plain(monkeypatch):
    monkeypatch.setattr(entropic, "FUSED_MIN_BYTES", 1 << 62)


def test_row_blocks_cover_rows_once_in_order(fused):
    # a blocking that skips or repeats the last short block would fail
    blocks = row_blocks(torch.zeros(N, M, dtype=torch.float64))
    assert len(blocks) == 7
    assert torch.cat([torch.arange(N)[s] for s in blocks]).tolist() == list(range(N))
    assert row_blocks(torch.zeros(N, M, dtype=torch.float64), min_bytes=1 << 30) == [slice(0, N)]


def sinkhorn_reference(a, b, c, eps, iters):
    """Textbook kernel Sinkhorn, same update order as the solver: v = b / K^T u, then u = a / K v."""
    K = torch.exp(-c / eps)
    u = torch.full_like(a, 1.0 / a.numel())
    for _ in range(iters):
        v = b / (K.t() @ u)
        u = a / (K @ v)
    return u[:, None] * K * v[None, :]


def test_fused_kernel_sinkhorn_is_the_textbook_iteration(fused):
    # a fused loop that overwrites K^T u per block instead of accumulating it, or uses a stale v, would fail
    a, b, c = problem()
    res = sinkhorn_solve(a, b, c, 0.05, method="kernel", max_iter=137, tol=-1.0, check_every=10, trace=False)
    assert res.iterations == 137
    torch.testing.assert_close(res.plan, sinkhorn_reference(a, b, c, 0.05, 137), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_stabilized_matches_plain_path(monkeypatch, dtype):
    # small epsilon: absorptions and the epsilon ramp run through the fused path; a fused path that kept views
    # of a replaced u / K (stale after absorption) would give a different plan
    a, b, c = (t.to(dtype) for t in problem(5))
    kw = dict(method="stabilized", max_iter=300, tol=-1.0, tau=10.0, trace=False)
    monkeypatch.setattr(entropic, "FUSED_MIN_BYTES", 1 << 62)
    ref = sinkhorn_solve(a, b, c, 2e-3, **kw)
    monkeypatch.setattr(entropic, "FUSED_MIN_BYTES", 0)
    monkeypatch.setattr(entropic, "FUSED_BLOCK_BYTES", 8 * M * c.element_size())
    res = sinkhorn_solve(a, b, c, 2e-3, **kw)
    assert ref.info["absorptions"] > 0 and res.info["absorptions"] == ref.info["absorptions"]
    tol = dict(rtol=1e-9, atol=1e-14) if dtype == torch.float64 else dict(rtol=2e-3, atol=1e-7)
    torch.testing.assert_close(res.plan, ref.plan, **tol)


def ipot_reference(a, b, c, beta, iters):
    """Seed 004 Algorithm 1 with L = 1 on explicit matrices."""
    G = torch.exp(-c / beta)
    gamma = torch.ones_like(c)
    bs = torch.full_like(b, 1.0 / b.numel())
    for _ in range(iters):
        Q = G * gamma
        as_ = a / (Q @ bs)
        bs = b / (Q.t() @ as_)
        gamma = as_[:, None] * Q * bs[None, :]
    return gamma


@pytest.mark.parametrize("inner_iters", [1, 3])
def test_fused_ipot_is_algorithm_1(fused, inner_iters):
    # R *= G applied per block more than once per step (L > 1), or a block's rows scaled with the wrong alpha,
    # would fail; tau small enough that absorptions happen inside the 120 steps
    a, b, c = problem(7)
    res = ipot_solve(a, b, c, beta=0.1, inner_iters=inner_iters, max_iter=120, tol=-1.0, tau=1e6, trace=False)
    assert res.info["absorptions"] > 0
    if inner_iters == 1:
        torch.testing.assert_close(res.plan, ipot_reference(a, b, c, 0.1, 120), rtol=1e-8, atol=1e-14)


def test_fused_ipot_matches_plain_path(monkeypatch):
    a, b, c = problem(9)
    kw = dict(beta=0.05, inner_iters=2, max_iter=200, tol=-1.0, tau=1e6, trace=False)
    monkeypatch.setattr(entropic, "FUSED_MIN_BYTES", 1 << 62)
    ref = ipot_solve(a, b, c, **kw)
    monkeypatch.setattr(entropic, "FUSED_MIN_BYTES", 0)
    monkeypatch.setattr(entropic, "FUSED_BLOCK_BYTES", 8 * M * 8)
    res = ipot_solve(a, b, c, **kw)
    torch.testing.assert_close(res.plan, ref.plan, rtol=1e-9, atol=1e-15)
