"""The compiled CPU kernels (plugins/discrete/cpu_kernels.py) compute the textbook Sinkhorn and IPOT iterations:
same plans as explicit formulas and as the torch paths, for any number of row chunks (one partial K^T u per
thread), with overflow still detected, and the torch path taking over where they do not apply."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from otbench.api import SolverDidNotConverge
from otbench_plugins.discrete import cpu_kernels
from otbench_plugins.discrete.entropic import ipot_solve, sinkhorn_solve
from test_entropic_fused import N, ipot_reference  # Algorithm 1 (seed 004) on explicit matrices
from test_entropic_fused import problem as fused_problem

pytestmark = pytest.mark.skipif(not cpu_kernels.enabled(), reason="numba not available: the torch path runs")


@pytest.fixture(autouse=True)
def kernels_never_fall_back():
    """A kernel that raised (e.g. numba's default ZeroDivisionError on an overflowing division) would silently hand
    the step to the torch path and these comparisons would test torch against itself."""
    yield
    assert not cpu_kernels._broken, "a compiled kernel failed and the torch path took over"

def problem(seed: int = 3, dtype: torch.dtype = torch.float64):
    """test_entropic_fused's problem (53 x 41: 4-row groups and a remainder in every chunking tried) in ``dtype``."""
    return tuple(t.to(dtype) for t in fused_problem(seed))


@pytest.fixture(params=[1, 2, 3], ids=lambda k: f"{k}chunks")
def chunks(request, monkeypatch):
    """Force a number of row chunks (3 > the 2 threads here: chunks are independent of the thread count)."""
    monkeypatch.delenv("OTBENCH_CPU_KERNELS", raising=False)
    monkeypatch.setattr(cpu_kernels, "chunks_for", lambda mat: request.param)
    return request.param


def test_sweeps_are_the_textbook_iteration(chunks):
    # a chunk that skips its remainder rows, partials that are overwritten instead of summed, or a stale v
    # would give another plan
    a, b, c = problem()
    K = torch.exp(-c / 0.05)
    u = torch.full_like(a, 1.0 / N)
    ref_u = u.clone()
    KTu = K.t() @ u
    v = torch.empty_like(b)
    assert cpu_kernels.sinkhorn_sweeps(K, a, b, u, v, KTu, 37)
    for _ in range(37):
        ref_v = b / (K.t() @ ref_u)
        ref_u = a / (K @ ref_v)
    torch.testing.assert_close(u, ref_u, rtol=1e-12, atol=0)
    torch.testing.assert_close(v, ref_v, rtol=1e-12, atol=0)
    torch.testing.assert_close(KTu, K.t() @ ref_u, rtol=1e-12, atol=0)


def test_kernel_sinkhorn_solver_uses_them_and_matches_torch(chunks, monkeypatch):
    a, b, c = problem(4)
    calls = []
    real = cpu_kernels.sinkhorn_sweeps
    monkeypatch.setattr(cpu_kernels, "sinkhorn_sweeps", lambda *args, **kw: calls.append(1) or real(*args, **kw))
    res = sinkhorn_solve(a, b, c, 0.05, method="kernel", max_iter=137, tol=-1.0, trace=False)
    assert calls, "the compiled kernel was not used on a CPU float64 problem"
    monkeypatch.setenv("OTBENCH_CPU_KERNELS", "torch")
    ref = sinkhorn_solve(a, b, c, 0.05, method="kernel", max_iter=137, tol=-1.0, trace=False)
    assert res.iterations == ref.iterations == 137
    torch.testing.assert_close(res.plan, ref.plan, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stabilized_with_absorptions_matches_torch(chunks, monkeypatch, dtype):
    # absorptions replace u, v and refresh K in place: a kernel that kept stale arrays would diverge
    a, b, c = problem(5, dtype)
    kw = dict(method="stabilized", max_iter=300, tol=-1.0, tau=10.0, trace=False)
    res = sinkhorn_solve(a, b, c, 2e-3, **kw)
    monkeypatch.setenv("OTBENCH_CPU_KERNELS", "torch")
    ref = sinkhorn_solve(a, b, c, 2e-3, **kw)
    assert ref.info["absorptions"] > 0 and res.info["absorptions"] == ref.info["absorptions"]
    tol = dict(rtol=1e-9, atol=1e-14) if dtype == torch.float64 else dict(rtol=2e-3, atol=1e-7)
    torch.testing.assert_close(res.plan, ref.plan, **tol)


def test_overflow_is_still_detected(chunks, monkeypatch):
    # fastmath that assumed "no inf / NaN" could hide the overflow of the kernel method in float32 (C / eps up to
    # 2000: the torch path overflows too); the stabilised method must then still converge to a finite plan
    a, b, c = problem(6, torch.float32)
    with pytest.raises(SolverDidNotConverge, match="over/underflowed"):
        sinkhorn_solve(a, b, c, 5e-4, method="kernel", max_iter=200, tol=-1.0, trace=False)
    res = sinkhorn_solve(a, b, c, 5e-4, method="stabilized", max_iter=200, tol=-1.0, trace=False)
    assert torch.isfinite(res.plan).all() and res.marginal_error < 1e-2
    monkeypatch.setenv("OTBENCH_CPU_KERNELS", "torch")
    with pytest.raises(SolverDidNotConverge, match="over/underflowed"):
        sinkhorn_solve(a, b, c, 5e-4, method="kernel", max_iter=200, tol=-1.0, trace=False)


def test_division_by_zero_gives_inf_not_an_exception(chunks):
    # an underflowed kernel column makes K^T u = 0: the kernel must give v = inf as torch does (numba's default
    # error model raises ZeroDivisionError in the serial part of the loop, leaving the state half-updated), so that
    # the solver sees the overflow
    a, b, c = problem()
    K = torch.exp(-c / 0.05)
    K[:, 5] = 0.0
    u = torch.ones_like(a)
    KTu = K.t() @ u
    v = torch.empty_like(b)
    assert cpu_kernels.sinkhorn_sweeps(K, a, b, u, v, KTu, 1)
    assert torch.isinf(v[5]) and torch.isfinite(v[:5]).all() and torch.isfinite(v[6:]).all()


@pytest.mark.parametrize("check_every", [10, 7, 25])
def test_ipot_is_algorithm_1(chunks, check_every):
    # R *= G skipped or applied twice, or rows scaled with another row's alpha, would fail; tau small enough that
    # absorptions (R rescaled in place, G recomputed) happen inside the 120 steps, at checkpoints or between them
    a, b, c = problem(7)
    res = ipot_solve(a, b, c, beta=0.1, max_iter=120, tol=-1.0, tau=1e6, check_every=check_every, trace=False)
    assert res.info["absorptions"] > 0
    torch.testing.assert_close(res.plan, ipot_reference(a, b, c, 0.1, 120), rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ipot_inner_iterations_match_torch(chunks, monkeypatch, dtype):
    # L = 2: the multiply happens on the first inner step only
    a, b, c = problem(9, dtype)
    kw = dict(beta=0.05, inner_iters=2, max_iter=200, tol=-1.0, tau=1e6 if dtype == torch.float64 else 1e4,
              trace=False)
    res = ipot_solve(a, b, c, **kw)
    monkeypatch.setenv("OTBENCH_CPU_KERNELS", "torch")
    ref = ipot_solve(a, b, c, **kw)
    tol = dict(rtol=1e-9, atol=1e-15) if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-7)
    torch.testing.assert_close(res.plan, ref.plan, **tol)


@pytest.mark.parametrize("check_every", [10, 7])
def test_ipot_checkpoints_see_the_current_plan(chunks, monkeypatch, check_every):
    # the checkpoints (marginal error, certificate, trace, stopping) read R and the scalings the kernel wrote: a
    # stale or half-updated R or alpha would report another plan and stop at another iteration
    a, b, c = problem(10)
    kw = dict(beta=0.1, max_iter=3000, tol=0.05, tol_marginal=1e-4, check_every=check_every, trace=True)
    res = ipot_solve(a, b, c, **kw)
    monkeypatch.setenv("OTBENCH_CPU_KERNELS", "torch")
    ref = ipot_solve(a, b, c, **kw)
    assert res.converged and res.iterations == ref.iterations
    assert [p["iteration"] for p in res.trace] == [p["iteration"] for p in ref.trace]
    for key in ("value", "marginal_error", "dual_bound"):
        got = [p[key] for p in res.trace]
        want = [p[key] for p in ref.trace]
        assert got == pytest.approx(want, rel=1e-9, abs=1e-13), key


def test_torch_path_where_the_kernels_do_not_apply(monkeypatch):
    a, b, c = problem()
    K = torch.exp(-c / 0.05)
    assert cpu_kernels.use_for(K, a, b)
    assert not cpu_kernels.use_for(K.t(), a, b)  # not contiguous
    assert not cpu_kernels.use_for(K, a.float(), b)  # mixed dtypes
    assert not cpu_kernels.use_for(K.requires_grad_(), a, b)  # autograd
    monkeypatch.setenv("OTBENCH_CPU_KERNELS", "torch")
    assert not cpu_kernels.enabled()


def test_chunks_follow_torch_threads():
    big = torch.empty(1024, 1024)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert cpu_kernels.chunks_for(big) == 1
        torch.set_num_threads(2)
        assert cpu_kernels.chunks_for(big) == 2
        assert cpu_kernels.chunks_for(torch.empty(50, 50)) == 1  # small: no parallel launch
    finally:
        torch.set_num_threads(old)


def test_kernels_leave_torch_thread_count_alone():
    # numba's OpenMP pool shares torch's libgomp and its start-up (the first parallel call in a process) sets that
    # runtime's thread count: a wrapper that did not restore it would put a 1-thread harness worker on 2 threads
    code = """
import torch
torch.set_num_threads(1)
from otbench_plugins.discrete import cpu_kernels
K = torch.rand(64, 48, dtype=torch.float64)
a, b = torch.full((64,), 1 / 64, dtype=torch.float64), torch.full((48,), 1 / 48, dtype=torch.float64)
u = torch.ones(64, dtype=torch.float64)
assert cpu_kernels.sinkhorn_sweeps(K, a, b, u, torch.empty_like(b), K.t() @ u, 3, chunks=2)
print(torch.get_num_threads())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "1"
