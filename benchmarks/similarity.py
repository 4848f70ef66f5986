"""Linear CKA of two 60,000 × 640 float32 feature matrices: feature space vs Gram matrices.

Compares richrep's feature-space linear CKA (three d×d products, float64 sums, O(n·d²), no
n×n matrix) with
  (a) the textbook Gram-matrix form HSIC = tr(K H L H)/(n−1)², K = XXᵀ, L = YYᵀ, with explicit
      n×n centering matrices H = I − 11ᵀ/n, timed on an n_sub-row subsample (a 60,000² float32
      Gram matrix alone would take 14.4 GB) and extrapolated to n as n² (optimistic: forming
      K and L is O(n²d); the products with H are O(n³)), plus richrep's cka_gram (float64,
      centering by mean subtraction, O(n²d)) on the same subsample;
  (b) the one matrix product XᵀY (float32) the measure cannot avoid — the machine's limit.
Also times debiased CKA and StreamingCKA over batches. Data: correlated random features
(X = Z A + noise, Y = Z B + noise with a shared 128-dim latent Z).

Run: ``python benchmarks/similarity.py`` (under a minute on 2 CPU threads).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from richrep.analysis import StreamingCKA, cka_gram, debiased_cka, gram_linear, linear_cka

N, D, LATENT = 60_000, 640, 128
N_SUB = 4_000
BATCH = 2_048
PEAK_GFLOPS = 320.0  # fp32 matmul peak quoted for this machine (2 threads)


def best_time(fn: Callable[[], float], repeat: int = 3) -> tuple[float, float]:
    """Best wall time of ``repeat`` runs and the value of the last run."""
    best, value = float("inf"), float("nan")
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def correlated(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, LATENT, generator=g)
    a, b = torch.randn(LATENT, d, generator=g), torch.randn(LATENT, d, generator=g)
    x = z @ a + 2.0 * torch.randn(n, d, generator=g) + 3.0
    y = torch.relu(z @ b + 4.0 * torch.randn(n, d, generator=g))
    return x.contiguous(), y.contiguous()


def textbook_gram_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA = HSIC(K,L)/√(HSIC(K,K) HSIC(L,L)), HSIC ∝ tr(KHLH), explicit H (float32)."""
    n = x.shape[0]
    k, lg = x @ x.T, y @ y.T
    h = torch.eye(n) - torch.full((n, n), 1.0 / n)
    kh, lh = k @ h, lg @ h
    hxy = (kh * lh.T).sum(dtype=torch.float64)  # tr(KH·LH)
    hxx = (kh * kh.T).sum(dtype=torch.float64)
    hyy = (lh * lh.T).sum(dtype=torch.float64)
    return float(hxy / (hxx * hyy).sqrt())


def streaming(x: torch.Tensor, y: torch.Tensor) -> float:
    s = StreamingCKA()
    for lo in range(0, x.shape[0], BATCH):
        s.update(x[lo : lo + BATCH], y[lo : lo + BATCH])
    return s.value()


def line(label: str, seconds: float, extra: str = "") -> None:
    print(f"{label:<48s}: {seconds:8.3f} s  {extra}")


def main() -> None:
    torch.set_num_threads(2)
    t_start = time.perf_counter()
    x, y = correlated(N, D)
    print(
        f"linear CKA of X, Y: {N} x {D} float32, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    xty_flop = 2.0 * N * D * D

    t_xty, _ = best_time(lambda: float((x.T @ y)[0, 0]), repeat=2)
    gflops = xty_flop / t_xty / 1e9
    line(
        "X^T Y, the one product it needs (float32)",
        t_xty,
        f"{gflops:6.1f} GFLOP/s ({100 * gflops / PEAK_GFLOPS:.0f}% of ~{PEAK_GFLOPS:.0f} peak)",
    )
    t_cka, v_cka = best_time(lambda: linear_cka(x, y), repeat=2)
    line(
        "linear_cka, feature space",
        t_cka,
        f"value {v_cka:.6f}  ({3 * xty_flop / t_cka / 1e9:.1f} GFLOP/s over its 3 d x d products)",
    )
    t_dcka, v_dcka = best_time(lambda: debiased_cka(x, y), repeat=1)
    line("debiased_cka, feature space", t_dcka, f"value {v_dcka:.6f}")
    t_str, v_str = best_time(lambda: streaming(x, y), repeat=2)
    line(
        f"StreamingCKA, {-(-N // BATCH)} batches of {BATCH}",
        t_str,
        f"value {v_str:.6f}  (|diff| vs full {abs(v_str - v_cka):.1e})",
    )
    t64, v_ref = best_time(lambda: linear_cka(x.double(), y.double()), repeat=1)
    line(
        "linear_cka on float64 copies (precision check)",
        t64,
        f"value {v_ref:.10f}  (float32 path |diff| {abs(v_cka - v_ref):.1e})",
    )

    xs, ys = x[:N_SUB].contiguous(), y[:N_SUB].contiguous()
    t_sub, v_sub = best_time(lambda: linear_cka(xs, ys), repeat=3)
    t_gram, v_gram = best_time(lambda: textbook_gram_cka(xs, ys), repeat=1)
    t_lib, v_lib = best_time(lambda: cka_gram(gram_linear(xs), gram_linear(ys)), repeat=1)
    line(f"n={N_SUB} subsample: feature space", t_sub, f"value {v_sub:.6f}")
    line(f"n={N_SUB} subsample: Gram, explicit H (float32)", t_gram, f"value {v_gram:.6f}")
    line(f"n={N_SUB} subsample: cka_gram (float64)", t_lib, f"value {v_lib:.6f}")
    scale = (N / N_SUB) ** 2
    line(
        f"Gram, explicit H, extrapolated to n={N} (n^2)",
        t_gram * scale,
        f"(n^3, as its H products scale: {t_gram * (N / N_SUB) ** 3:.0f} s; "
        f"{N * N * 4 / 1e9:.1f} GB per Gram matrix)",
    )
    print(f"total benchmark time {time.perf_counter() - t_start:.1f} s")
    print(f"ratio Gram (explicit H) / feature space, n={N_SUB}:            {t_gram / t_sub:8.1f}x")
    print(f"ratio cka_gram (float64) / feature space, n={N_SUB}:           {t_lib / t_sub:8.1f}x")
    print(
        f"ratio Gram (explicit H, n^2-extrapolated) / feature, n={N}: "
        f"{t_gram * scale / t_cka:8.1f}x"
    )
    print(f"ratio feature space / one X^T Y product, n={N} (ideal 3x): {t_cka / t_xty:8.2f}x")
    print(f"ratio streaming / feature space, n={N}:                    {t_str / t_cka:8.2f}x")


if __name__ == "__main__":
    main()
