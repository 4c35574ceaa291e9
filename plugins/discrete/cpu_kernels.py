"""Fused CPU kernels for dense Sinkhorn and IPOT iterations, compiled with numba (issue 15).

A dense iteration is two mat-vecs over the n x m kernel and is bound by memory bandwidth. These kernels do
both in one pass over the rows: for a group of 4 rows they form the 4 dot products ``K_i . v`` (reading ``v``
once for the 4), the 4 new scalings ``u_i``, and add ``K_i^T u_i`` for the 4 rows into a per-thread partial
``K^T u`` while the rows are still in cache. The kernel is therefore read from memory once per iteration, not twice
as by two BLAS gemv calls (POT's ``ot.sinkhorn``), and the rows of the matrix are split across the threads,
each with its own partial sum, so a second core adds memory bandwidth (torch's MKL gemv does not get faster
with a second thread on this machine; the row-block torch path in ``entropic.py`` runs on one).

The arithmetic is that of the textbook iterations; only the summation order of the dot products and of
``K^T u`` differs (vectorised partial sums, one partial per thread), so results agree with the torch path to
round-off. ``fastmath`` is limited to reassociation and contraction: no "no-NaN / no-inf" assumption, and
``error_model="numpy"`` makes a division by zero give inf as in torch (numba's default raises mid-loop): the
stabilised Sinkhorn detects overflow from the infinities these kernels produce.

Threads: the rows are cut into ``chunks_for(K)`` chunks, one per thread: ``torch.get_num_threads()`` (the
harness sets it per worker; 1 under ``--jobs auto``), or 1 for matrices under ``PARALLEL_MIN_ELEMENTS`` (a
parallel launch costs more than the work). numba's OpenMP layer shares the ``libgomp.so.1`` that torch's wheel
loads, so the two never run competing thread pools; the wrapper restores torch's thread count, which numba's
pool start-up overwrites. Backend choice: ``OTBENCH_CPU_KERNELS=torch`` turns these kernels off (the torch
row-block path then runs); they are also off when numba is not installed or a kernel cannot compile, so the
solvers never depend on them for correctness. Compiled code is cached on disk (``cache=True``): the first call
in a fresh environment compiles for ~3 s per dtype, later processes load it in ~0.3 s.
"""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np
import torch

try:  # numba is a dependency, but the solvers must still work (on the torch path) where it cannot load
    import numba
    from numba import njit, prange
except Exception:  # pragma: no cover - exercised only where numba is missing or broken
    numba = None

__all__ = ["enabled", "use_for", "chunks_for", "sinkhorn_sweeps", "ipot_scaling_step", "PARALLEL_MIN_ELEMENTS"]

PARALLEL_MIN_ELEMENTS = 1 << 18  # below ~256k entries (2 MiB in float64) one thread beats a parallel launch
_FASTMATH = {"reassoc", "contract"}
_DTYPES = (torch.float32, torch.float64)
_broken = False  # set when a kernel failed to compile or run: the torch path takes over for the process
_workqueue_lock = threading.Lock()  # numba's fallback threading layer ("workqueue") is not thread-safe


def enabled() -> bool:
    """Whether the numba kernels are on (numba importable, not turned off by OTBENCH_CPU_KERNELS=torch)."""
    return numba is not None and not _broken and os.environ.get("OTBENCH_CPU_KERNELS", "").lower() != "torch"


def use_for(mat: torch.Tensor, *vectors: torch.Tensor) -> bool:
    """Whether ``mat`` (and the vectors it is used with) can take the numba kernels: CPU, float32/64, contiguous,
    one dtype, no autograd."""
    if not enabled() or mat.device.type != "cpu" or mat.dtype not in _DTYPES or mat.ndim != 2:
        return False
    tensors = (mat, *vectors)
    return all(t.dtype == mat.dtype and t.device.type == "cpu" and t.is_contiguous() and not t.requires_grad
               for t in tensors)


def chunks_for(mat: torch.Tensor) -> int:
    """Row chunks (one partial ``K^T u`` each, one per thread): ``torch.get_num_threads()``, 1 for small matrices."""
    if mat.numel() < PARALLEL_MIN_ELEMENTS:
        return 1
    return max(1, min(torch.get_num_threads(), mat.shape[0] // 4))


def _call(kernel, mat: torch.Tensor, *args, chunks: int | None = None) -> None:
    """Run a kernel on numpy views of the tensors (no copies), one row chunk per thread."""
    global _broken
    chunks = chunks_for(mat) if chunks is None else max(1, int(chunks))
    arrays = [a.numpy() if isinstance(a, torch.Tensor) else a for a in (mat, *args)]
    torch_threads = torch.get_num_threads()
    try:
        numba.set_num_threads(min(chunks, numba.config.NUMBA_NUM_THREADS))
        if _layer() in ("", "workqueue"):  # unknown until the first parallel call
            with _workqueue_lock:
                kernel(*arrays, chunks)
        else:
            kernel(*arrays, chunks)
    except Exception as exc:  # compilation fails before any array is touched: fall back to torch for good
        _broken = True
        warnings.warn(f"otbench: numba CPU kernels disabled ({type(exc).__name__}: {exc}); using torch",
                      RuntimeWarning, stacklevel=3)
        raise _FallBack from exc
    finally:
        # torch's wheel ships its own libgomp.so.1, which numba's OpenMP layer then shares (one thread pool, no
        # contention); but numba's pool start-up sets that runtime's thread count, i.e. torch's: put it back
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)


class _FallBack(Exception):
    """Raised by a wrapper whose kernel could not run; the caller redoes the step on the torch path."""


def _layer() -> str:
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return ""


if numba is not None:
    try:  # decorating needs a cache locator (a writable source dir or user cache): without one, no kernels
        @njit(fastmath=_FASTMATH, error_model="numpy", cache=True, nogil=True)
        def _sum_rows(partials, out):  # pragma: no cover - compiled
            """``out[j] = sum_t partials[t, j]``: the per-chunk partial sums of ``K^T u`` added up."""
            for j in range(partials.shape[1]):
                acc = partials[0, j]
                for t in range(1, partials.shape[0]):
                    acc += partials[t, j]
                out[j] = acc

        @njit(parallel=True, fastmath=_FASTMATH, error_model="numpy", cache=True, nogil=True)
        def _sinkhorn_sweeps(K, a, b, u, v, KTu, iters, nchunks):  # pragma: no cover - compiled
            n, m = K.shape
            zero = a[0] - a[0]  # of the arrays' dtype (a[0] * 0 would be float64)
            partials = np.empty((nchunks, m), dtype=K.dtype)
            for _ in range(iters):
                for j in range(m):
                    v[j] = b[j] / KTu[j]
                for t in prange(nchunks):
                    lo = t * n // nchunks
                    hi = (t + 1) * n // nchunks
                    p = partials[t]
                    p[:] = zero
                    i = lo
                    while i + 4 <= hi:
                        r0 = K[i]
                        r1 = K[i + 1]
                        r2 = K[i + 2]
                        r3 = K[i + 3]
                        s0 = zero
                        s1 = zero
                        s2 = zero
                        s3 = zero
                        for j in range(m):
                            vj = v[j]
                            s0 += r0[j] * vj
                            s1 += r1[j] * vj
                            s2 += r2[j] * vj
                            s3 += r3[j] * vj
                        u0 = a[i] / s0
                        u1 = a[i + 1] / s1
                        u2 = a[i + 2] / s2
                        u3 = a[i + 3] / s3
                        u[i] = u0
                        u[i + 1] = u1
                        u[i + 2] = u2
                        u[i + 3] = u3
                        for j in range(m):
                            p[j] += r0[j] * u0 + r1[j] * u1 + r2[j] * u2 + r3[j] * u3
                        i += 4
                    while i < hi:
                        r0 = K[i]
                        s0 = zero
                        for j in range(m):
                            s0 += r0[j] * v[j]
                        u0 = a[i] / s0
                        u[i] = u0
                        for j in range(m):
                            p[j] += r0[j] * u0
                        i += 1
                _sum_rows(partials, KTu)
            return 0

        @njit(parallel=True, fastmath=_FASTMATH, error_model="numpy", cache=True, nogil=True)
        def _ipot_step(R, G, a, alpha, gb, as_, KTx, multiply, nchunks):  # pragma: no cover - compiled
            n, m = R.shape
            zero = a[0] - a[0]  # of the arrays' dtype (a[0] * 0 would be float64)
            partials = np.empty((nchunks, m), dtype=R.dtype)
            for t in prange(nchunks):
                lo = t * n // nchunks
                hi = (t + 1) * n // nchunks
                p = partials[t]
                p[:] = zero
                i = lo
                while i + 4 <= hi:
                    r0 = R[i]
                    r1 = R[i + 1]
                    r2 = R[i + 2]
                    r3 = R[i + 3]
                    s0 = zero
                    s1 = zero
                    s2 = zero
                    s3 = zero
                    if multiply:  # R *= G fused into the dot products: each row of R is read and written once
                        g0 = G[i]
                        g1 = G[i + 1]
                        g2 = G[i + 2]
                        g3 = G[i + 3]
                        for j in range(m):
                            w = gb[j]
                            q0 = r0[j] * g0[j]
                            q1 = r1[j] * g1[j]
                            q2 = r2[j] * g2[j]
                            q3 = r3[j] * g3[j]
                            r0[j] = q0
                            r1[j] = q1
                            r2[j] = q2
                            r3[j] = q3
                            s0 += q0 * w
                            s1 += q1 * w
                            s2 += q2 * w
                            s3 += q3 * w
                    else:
                        for j in range(m):
                            w = gb[j]
                            s0 += r0[j] * w
                            s1 += r1[j] * w
                            s2 += r2[j] * w
                            s3 += r3[j] * w
                    # as = a / (alpha * (R gb)); the column pass accumulates R^T (alpha * as)
                    c0 = a[i] / (alpha[i] * s0)
                    c1 = a[i + 1] / (alpha[i + 1] * s1)
                    c2 = a[i + 2] / (alpha[i + 2] * s2)
                    c3 = a[i + 3] / (alpha[i + 3] * s3)
                    as_[i] = c0
                    as_[i + 1] = c1
                    as_[i + 2] = c2
                    as_[i + 3] = c3
                    x0 = alpha[i] * c0
                    x1 = alpha[i + 1] * c1
                    x2 = alpha[i + 2] * c2
                    x3 = alpha[i + 3] * c3
                    for j in range(m):
                        p[j] += r0[j] * x0 + r1[j] * x1 + r2[j] * x2 + r3[j] * x3
                    i += 4
                while i < hi:
                    r0 = R[i]
                    s0 = zero
                    if multiply:
                        g0 = G[i]
                        for j in range(m):
                            q0 = r0[j] * g0[j]
                            r0[j] = q0
                            s0 += q0 * gb[j]
                    else:
                        for j in range(m):
                            s0 += r0[j] * gb[j]
                    c0 = a[i] / (alpha[i] * s0)
                    as_[i] = c0
                    x0 = alpha[i] * c0
                    for j in range(m):
                        p[j] += r0[j] * x0
                    i += 1
            _sum_rows(partials, KTx)
            return 0
    except Exception as exc:  # pragma: no cover - depends on the file system
        warnings.warn(f"otbench: numba CPU kernels unavailable ({type(exc).__name__}: {exc}); using torch",
                      RuntimeWarning, stacklevel=1)
        numba = None


def sinkhorn_sweeps(K: torch.Tensor, a: torch.Tensor, b: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                    KTu: torch.Tensor, iterations: int, chunks: int | None = None) -> bool:
    """``iterations`` Sinkhorn iterations ``v = b / K^T u; u = a / K v; K^T u`` in place (KTu holds ``K^T u`` on
    entry and exit). Returns False (nothing changed) when the kernels cannot take these tensors."""
    if iterations <= 0 or not use_for(K, a, b, u, v, KTu):
        return False
    try:
        _call(_sinkhorn_sweeps, K, a, b, u, v, KTu, int(iterations), chunks=chunks)
    except _FallBack:
        return False
    return True


def ipot_scaling_step(R: torch.Tensor, G: torch.Tensor, a: torch.Tensor, alpha: torch.Tensor, gb: torch.Tensor,
                      as_: torch.Tensor, KTx: torch.Tensor, multiply: bool, chunks: int | None = None) -> bool:
    """One IPOT scaling step's row pass in place: (``R *= G`` when ``multiply``), ``as = a / (alpha * R gb)``,
    ``KTx = R^T (alpha * as)``. Returns False (nothing changed) when the kernels cannot take these tensors."""
    if not use_for(R, G, a, alpha, gb, as_, KTx):
        return False
    try:
        _call(_ipot_step, R, G, a, alpha, gb, as_, KTx, bool(multiply), chunks=chunks)
    except _FallBack:
        return False
    return True
