"""Features per second of catK extraction: richrep's ``Featurizer`` against a plain loop.

Five encoders of the Fashion-MNIST CNN (richrep's ``cnn`` family, 32/64 channels, 128
features; weights do not change the speed) turn the 60,000-image training pool into cat5
features (60,000 × 640):

(a) plain loop: for each encoder, ``torch.no_grad()``, eval mode, NCHW fp32, batches of 256,
    ``torch.cat`` at the end — the obvious way;
(b) richrep: ``Featurizer`` over the five parts (eval mode, no gradients, channels_last, bf16
    autocast where the CPU supports it, batches sized to the cache by ``batch_size_for``), then the same call again, answered
    by the cache;
(c) richrep in fp32 (same memory format and batches, no autocast), to separate the gain of
    bf16 from that of layout and batching.

Also printed: achieved GFLOP/s against fp32/bf16 matmul peaks measured in the same run, and
the largest difference between the plain features and richrep's. Run:
``python benchmarks/extract.py [--device cuda] [--n 60000]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from richrep.data import Split, load_task
from richrep.models import build_encoder
from richrep.representations import Representation
from richrep.representations.features import FeatureCache, Featurizer, batch_size_for
from richrep.runtime.device import resolve_device, resolve_precision
from richrep.runtime.seeding import seeded


def peak(dtype: torch.dtype, device: torch.device) -> float:
    a = torch.randn(2048, 2048, device=device).to(dtype)
    b = torch.randn(2048, 2048, device=device).to(dtype)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 5 * 2 * 2048**3 / (time.perf_counter() - t) / 1e9


def forward_flops(enc: torch.nn.Module) -> float:
    """Multiply-adds ×2 of one image's forward pass (convolutions and linear layers)."""
    flops, hooks = [0.0], []

    def conv(m, i, o):
        flops[0] += 2 * o.numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1] / o.shape[0]

    def lin(m, i, o):
        flops[0] += 2 * m.in_features * m.out_features

    for m in enc.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(lin))
    with torch.no_grad():
        enc(torch.zeros(1, 1, 28, 28))
    for h in hooks:
        h.remove()
    return flops[0]


@torch.no_grad()
def plain(encoders: list[torch.nn.Module], x: torch.Tensor, device: torch.device) -> torch.Tensor:
    outs = []
    for enc in encoders:
        enc.eval().to(device)
        outs.append(torch.cat([enc(xb.to(device)).cpu() for xb in x.split(256)]))
    return torch.cat(outs, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=60_000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_precision("auto", device)
    task = load_task("fashion_mnist", {"download": False})
    pool = Split(
        torch.cat([task.train.x, task.val.x])[: args.n],
        torch.cat([task.train.y, task.val.y])[: args.n],
    )
    encoders = []
    for s in range(5):
        with seeded(s, "bench-extract"):
            enc = build_encoder("cnn", (1, 28, 28), channels=[32, 64], feature_dim=128)
        enc.set_input_stats(pool.x)
        encoders.append(enc)
    flops = forward_flops(encoders[0]) * len(pool) * len(encoders)
    p32, p16 = peak(torch.float32, device), peak(dtype, device)
    print(
        f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}; cat5 of "
        f"{len(pool)} images → {len(pool)} × 640; {flops / len(pool) / 5 / 1e6:.1f} MFLOP per image per encoder"
    )
    print(
        f"matmul peak (2048², same run): fp32 {p32:.0f} GFLOP/s, {str(dtype)[6:]} {p16:.0f} GFLOP/s"
    )
    print(f"richrep batch size here: {batch_size_for(encoders[0], pool.x, device)}")
    rep = Representation("cat", 5, tuple(range(5)), tuple(f"s{i}" for i in range(5)), 640, 0)
    names = dict(zip(rep.parts, encoders, strict=True))
    plain(encoders, pool.x[:512], device)  # warm-up
    t = time.perf_counter()
    ref = plain(encoders, pool.x, device)
    t_plain = time.perf_counter() - t
    results = {}
    for label, dt in (("richrep fp32", torch.float32), (f"richrep {str(dtype)[6:]}", dtype)):
        feats = Featurizer(names, device=device, dtype=dt, cache=FeatureCache())
        feats(rep, Split(pool.x[:512], pool.y[:512]))  # warm-up
        t = time.perf_counter()
        out = feats(rep, pool)
        results[label] = (time.perf_counter() - t, out, feats)
    label_fast = f"richrep {str(dtype)[6:]}"
    t = time.perf_counter()
    results[label_fast][2](rep, pool)
    t_cached = time.perf_counter() - t
    n = len(pool)
    print(
        f"plain loop (NCHW fp32, batch 256)   {t_plain:6.2f} s  {n / t_plain:9.0f} images/s  "
        f"{flops / t_plain / 1e9:6.1f} GFLOP/s ({100 * flops / t_plain / 1e9 / p32:.0f}% of fp32 peak)"
    )
    for label, (sec, out, _) in results.items():
        err = float((out - ref).abs().max() / ref.abs().max())
        pk = p32 if "fp32" in label else p16
        print(
            f"{label:<35} {sec:6.2f} s  {n / sec:9.0f} images/s  {flops / sec / 1e9:6.1f} GFLOP/s "
            f"({100 * flops / sec / 1e9 / pk:.0f}% of its peak); max |Δ| / max |f| = {err:.1e}"
        )
    print(f"richrep, the same call again (cache) {t_cached * 1e3:6.1f} ms")
    best = min(sec for sec, _, _ in results.values())
    print(
        f"extract speedup vs plain loop: {t_plain / best:.2f}x ({label_fast}); "
        f"fp32 alone {t_plain / results['richrep fp32'][0]:.2f}x"
    )


if __name__ == "__main__":
    main()
