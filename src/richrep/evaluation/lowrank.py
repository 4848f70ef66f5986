"""The block-diagonal + low-rank preconditioner of the probe solver, for many features.

The full preconditioner (:class:`richrep.evaluation.solver.Preconditioner`) forms ``M = a Sigma
+ lam I`` (d x d) and inverts it by Cholesky once per C: d^3 work and 2 d^2 float64 memory, 3 TFLOP
and 7 GB at d = 20,480. Here ``Sigma`` is approximated as ``V diag(s) V^T + B``: its top ``r``
eigenpairs, found once for the whole C path by a randomized SVD of a sample of the standardized
examples (Halko, Martinsson & Tropp, SIAM Rev. 53, 2011, Alg. 4.4 + 5.1: ``torch.svd_lowrank``),
and the residual ``Sigma - V S V^T`` kept on diagonal blocks of ``BLOCK`` consecutive features
(``B``: the correlations within one network's features of a cat-K; the top eigenpairs carry
those shared across networks). ``M^{-1}`` is applied by the Woodbury identity, with a Cholesky
of each block and one r x r Cholesky per C: O(n_s d (r + b)) once, O(d b^2 + d r^2) per C and
O(d (b + r) k) per iteration -- linear in d for a fixed block size ``b``.
"""

from __future__ import annotations

import torch

RANK = 256  # eigenpairs kept
BLOCK = 2048  # features per diagonal block (a ResNet-50's features in a cat-K)
OVERSAMPLE = 16  # extra random directions of the sketch (Halko et al. Sec. 4.2)
POWER_ITERATIONS = 2  # subspace iterations of the sketch (ibid. Alg. 4.4)


def _blocks(d: int, size: int) -> list[slice]:
    return [slice(i, min(d, i + size)) for i in range(0, d, size)]


class Spectrum:
    """``Sigma ~ V diag(s) V^T + blockdiag(R_j)`` for standardized features (each of mean 0).

    ``sample``: (n_s, d) standardized examples (rows); ``diag``: the variance of every feature
    over all the examples (a rare feature that the sample misses keeps its own variance).
    ``V`` spans the sketch's top subspace and ``s`` are the Rayleigh-Ritz values there
    (``V^T Sigma V = diag(s)``: the part of ``Sigma`` in that subspace, exactly); ``R_j`` are
    diagonal blocks of the rest, ``(I - V V^T) Sigma (I - V V^T)``, from the sample with its
    top subspace projected out: Gram matrices, so positive semi-definite by construction."""

    def __init__(
        self,
        sample: torch.Tensor,
        diag: torch.Tensor,
        rank: int | None = None,
        block: int | None = None,
        seed: int = 0,
    ) -> None:
        n_s, d = sample.shape
        rank = RANK if rank is None else rank
        q = max(1, min(rank + OVERSAMPLE, n_s, d))
        gen_state = torch.random.get_rng_state()  # svd_lowrank draws from the global generator
        try:
            torch.manual_seed(seed)
            _, _, V = torch.svd_lowrank(sample, q=q, niter=POWER_ITERATIONS)
        finally:
            torch.random.set_rng_state(gen_state)
        V = V[:, : min(rank, q)]
        AV = sample @ V  # (n_s, r)
        s, Q = torch.linalg.eigh((AV.t() @ AV).to(torch.float64) / n_s)  # Rayleigh-Ritz
        s, Q = s.flip(0), Q.flip(1)
        ok = s > 1e-10 * float(s.max()) if s.numel() else s.bool()
        self.V = (V @ Q[:, ok].to(V.dtype)).contiguous()  # (d, r), the solver's dtype
        self.s = s[ok]  # float64
        AV = AV @ Q[:, ok].to(AV.dtype)
        diag = diag.to(torch.float64)
        floor = 1e-6 * float(diag.max()) if d else 1.0
        self.blocks = _blocks(d, BLOCK if block is None else block)
        self.R = []  # residual covariance of each block, float64
        for cols in self.blocks:
            Rj = sample[:, cols] - AV @ self.V[cols].t()  # the block, top subspace removed
            R = (Rj.t() @ Rj).to(torch.float64) / n_s
            Vj = self.V[cols].to(torch.float64)
            rest = torch.clamp(diag[cols] - (Vj * Vj) @ self.s, min=floor)
            R.diagonal().copy_(torch.maximum(rest, R.diagonal()))
            self.R.append(R)

    @property
    def rank(self) -> int:
        return int(self.s.numel())


def _spd_inverse(A: torch.Tensor) -> torch.Tensor:
    """``A^{-1}`` of a symmetric positive definite float64 matrix by Cholesky; a matrix that
    round-off left slightly indefinite gets a jitter of its diagonal until it factors."""
    jitter = 0.0
    scale = float(A.diagonal().abs().max()) if A.numel() else 1.0
    for _ in range(8):
        L, info = torch.linalg.cholesky_ex(
            A if jitter == 0 else A + jitter * torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
        )
        if int(info) == 0:
            return torch.cholesky_inverse(L)
        jitter = max(jitter * 10, 1e-10 * scale)
    raise torch.linalg.LinAlgError("preconditioner block is not positive definite")


class LowRankPreconditioner:
    """Applies ``M^{-1}`` with ``M = blockdiag(a (V S V^T + B) + lam I, a)`` by the Woodbury
    identity: with ``U = V (a S)^{1/2}`` and ``G = (a B + lam I)^{-1}`` (block by block),
    ``M^{-1} = G - G U K^{-1} U^T G``, ``K = I + U^T G U`` (r x r). Same interface as the full
    one."""

    def __init__(self, spectrum: Spectrum, lam: float, a: float, dtype: torch.dtype) -> None:
        lam = max(lam, 1e-12)
        self.blocks = spectrum.blocks
        self.G = []
        U = spectrum.V.to(torch.float64) * torch.sqrt(a * spectrum.s)
        GU = torch.empty_like(U)
        for cols, R in zip(self.blocks, spectrum.R, strict=True):
            M = a * R
            M.diagonal().add_(lam)
            G = _spd_inverse(M)
            GU[cols] = G @ U[cols]
            self.G.append(G.to(dtype))
        K = U.t() @ GU
        K.diagonal().add_(1.0)
        self.Kinv = _spd_inverse(K).to(dtype)
        self.GU = GU.to(dtype)
        self.U = U.to(dtype)
        self.inv_a = 1.0 / a

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        r = torch.empty_like(q)
        for cols, G in zip(self.blocks, self.G, strict=True):
            # (q^T G)^T: see the full preconditioner on MKL's float32 layouts
            r[:-1][cols] = (q[:-1][cols].t() @ G).t()
        if self.U.shape[1]:
            u = self.Kinv @ (self.U.t() @ r[:-1])  # (r, k)
            r[:-1] -= self.GU @ u
        torch.mul(q[-1], self.inv_a, out=r[-1])
        return r
