"""K seeds × E epochs of the 225k-parameter Fashion-MNIST CNN: richrep's K-seed engine against
the plain PyTorch loop, measured in one run.

Network (richrep's ``cnn`` family, ``padding="valid"``): conv 1→32 3×3, 2× max-pool, ReLU
(26→13), conv 32→64 3×3, pool, ReLU (11→5), FC 1600→128, ReLU, linear head to 10 classes:
225,034 parameters, ≈ 15.4 MFLOP per image per training step (forward + backward).

Data: the full 60,000-image training pool (richrep's train + validation splits of
``load_task("fashion_mnist")``), in memory; test accuracy on the 10,000 test images.

(a) plain loop: NCHW, fp32, batch 256, SGD (lr 0.05, momentum 0.9, weight decay 5e-4),
    in-memory tensors indexed by a permutation, the seeds one after another — written out
    below as the obvious alternative;
(b) richrep: ``train_group`` (strategy ``auto`` unless ``--strategy``) on the same seeds, same
    initializations, same data order and the same constant learning rate.

The plain loop's seeds are split around the engine's run (first half before, rest after) so a
drift in machine load hits both variants. Each part runs in a fresh process (see
``in_fresh_process``) that loads the data itself and is timed from its first training step to
its last: process start, data loading and evaluation are not counted. Also measured in the
same run: the fp32 and bf16 matmul peaks (2048² products) that the achieved GFLOP/s are
compared with. ``--profile`` appends the top operators of one training step of each variant.

``--encoder resnet18``: the same measurement for a narrow ResNet-18 (He et al. 2016) with the
CIFAR stem (3×3 stride-1 first convolution, no max-pool) and stage widths 8/16/32/64
(176,258 parameters with its head, ≈ 43 MFLOP per image per training step, counted by
``torch.utils.flop_counter``): BatchNorm and residual blocks do not fold, so the engine trains
its seeds in threads (or one after another) rather than as one fused module.

Run: ``python benchmarks/train_seeds.py`` (about 2 minutes on 2 CPU cores);
``--device cuda`` runs both variants on the GPU; ``--subset N`` for a quick run;
``--encoder resnet18 --subset 10000 --seeds 2`` for the ResNet (about 4 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from richrep.config import TrainingConfig
from richrep.data import Split, load_task
from richrep.models import Classifier, build_encoder, count_params
from richrep.runtime.device import autocast, resolve_precision
from richrep.runtime.seeding import seeded
from richrep.runtime.threads import ThreadBudget
from richrep.training.allocator import tune_cpu_allocator
from richrep.training.loop import accuracy, epoch_order
from richrep.training.plan import STRATEGIES
from richrep.training.workers import train_group

MFLOP_PER_IMAGE = 15.4  # forward + backward of the network above, per training image
BATCH, LR, MOMENTUM, WD = 256, 0.05, 0.9, 5e-4


ENCODERS = {
    "cnn": ("cnn", dict(padding="valid", channels=[32, 64], feature_dim=128)),
    "resnet18": ("resnet18", dict(cifar_stem=True, widths=[8, 16, 32, 64])),
}


def build(seed: int, train: Split | None, encoder: str = "cnn") -> Classifier:
    name, params = ENCODERS[encoder]
    with seeded(seed, "init", "bench"):
        enc = build_encoder(name, (1, 28, 28), **params)
        model = Classifier(enc, 10)
    if train is not None:
        model.encoder.set_input_stats(train.x)
    return model


def mflop_per_image(encoder: str) -> float:
    """Forward + backward FLOPs of one training image (``torch.utils.flop_counter``)."""
    if encoder == "cnn":
        return MFLOP_PER_IMAGE
    from torch.utils.flop_counter import FlopCounterMode

    model = build(0, None, encoder)
    x = torch.randn(8, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), torch.zeros(8, dtype=torch.long)).backward()
    return counter.get_total_flops() / 8 / 1e6


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_loop(
    model: Classifier, train: Split, seed: int, epochs: int, device: torch.device
) -> None:
    """What one writes without thinking about speed: NCHW, fp32, SGD, in-memory tensors."""
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    x, y = train.x.to(device), train.y.to(device)
    for epoch in range(epochs):
        order = epoch_order(seed, epoch, len(train)).to(device)
        for i in range(0, len(train), BATCH):
            idx = order[i : i + BATCH]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 8) -> float:
    """Best GFLOP/s of an n×n×n product in ``dtype`` (the machine's practical peak)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(reps + 2):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def load_data(subset: int = 0) -> tuple[Split, Split]:
    """The training pool (train + validation splits) and the test split."""
    task = load_task("fashion_mnist")
    train = Split(torch.cat([task.train.x, task.val.x]), torch.cat([task.train.y, task.val.y]))
    if subset:
        train = Split(train.x[:subset], train.y[:subset])
    return train, task.test


def run_variant(kind: str, seeds: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """Load the data, then train ``seeds`` with the plain loop or the engine in this process;
    time and test them. (Loading here, as a training script does, matters: glibc raises its
    allocator thresholds when the loader frees its large buffers; a process handed its data
    through shared memory instead page-faults ~10,000 times a step in the plain loop and runs
    it ~30 % slower, which would flatter the engine.)"""
    train, test = load_data(args.subset)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = resolve_precision(args.precision, device)
    models = [build(s, train, args.encoder) for s in seeds]
    cfg = TrainingConfig(
        seeds=seeds,
        epochs=args.epochs,
        batch_size=BATCH,
        lr=LR,
        momentum=MOMENTUM,
        weight_decay=WD,
        schedule="constant",
    )
    sync(device)
    t0 = time.perf_counter()
    if kind == "plain":
        for s, m in zip(seeds, models, strict=True):
            plain_loop(m, train, s, args.epochs, device)
        strategy, failed = "plain", []
    else:
        out = train_group(
            models,
            train,
            cfg,
            seeds,
            device=device,
            dtype=dtype,
            budget=ThreadBudget.resolve(args.threads),
            strategy=args.strategy,
        )
        strategy = out[0]["strategy"]
        failed = [s for s, r in zip(seeds, out, strict=True) if "failed" in r]
    sync(device)
    seconds = time.perf_counter() - t0
    accs = [accuracy(m, test, device, torch.float32) for m in models]
    return {
        "seconds": seconds,
        "accs": accs,
        "strategy": strategy,
        "failed": failed,
        "dtype": str(dtype).replace("torch.", ""),
    }


def profile_variant(kind: str, args: argparse.Namespace, steps: int = 20) -> str:
    """Top operators of ``steps`` training steps: the plain loop's (all threads, fp32, NCHW), or
    one engine worker's (bf16 autocast, channels_last, tuned allocator, one thread)."""
    from torch.profiler import ProfilerActivity, profile

    train, _ = load_data(args.subset)
    device = torch.device(args.device)
    model = build(0, train, args.encoder).to(device)
    engine = kind == "engine"
    dtype = resolve_precision(args.precision, device) if engine else torch.float32
    if engine and device.type == "cpu":
        tune_cpu_allocator()
        torch.set_num_threads(1)
    if engine:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    x, y = train.x.to(device), train.y.to(device)

    def step(i: int) -> None:
        idx = torch.arange(i * BATCH, (i + 1) * BATCH, device=device) % len(train)
        xb = x[idx].contiguous(memory_format=torch.channels_last) if engine else x[idx]
        with autocast(device, dtype):
            loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(5):
        step(i)
    sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=acts, record_shapes=True) as prof:
        for i in range(steps):
            step(i)
        sync(device)
    ms = (time.perf_counter() - t0) / steps * 1e3
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by=sort, row_limit=14, max_name_column_width=34, max_shapes_column_width=46
    )
    threads = torch.get_num_threads()
    return f"{ms:.1f} ms per step (under the profiler), {threads} thread(s)\n{table}"


def _child(queue: Any, fn: Any, *a: Any) -> None:
    queue.put(fn(*a))


def in_fresh_process(fn: Any, *a: Any) -> Any:
    """``fn(*a)`` in a fresh (spawned) process, so that no variant inherits another's warm
    caches, thread pools or allocator settings (the engine tunes glibc's allocator process-wide,
    which would otherwise also speed up a plain loop that runs after it)."""
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    proc = ctx.Process(target=_child, args=(queue, fn, *a))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def load(t_start: float) -> str:
    return f"1-min load {os.getloadavg()[0]:.2f} at {time.perf_counter() - t_start:.0f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--subset", type=int, default=0, help="train on the first N images only")
    ap.add_argument("--strategy", default="auto", choices=["auto", *STRATEGIES])
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    ap.add_argument("--profile", action="store_true", help="also print the top operators")
    ap.add_argument("--encoder", default="cnn", choices=sorted(ENCODERS), help="network family")
    args = ap.parse_args()

    t_start = time.perf_counter()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_train = len(load_data(args.subset)[0])
    seeds = list(range(args.seeds))
    dtype = resolve_precision(args.precision, device)
    lo = str(dtype).replace("torch.", "")
    print(
        f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}; "
        f"{len(seeds)} seeds x {args.epochs} epoch(s) x {n_train} images (train + "
        f"validation pool), batch {BATCH}; {args.encoder} with "
        f"{count_params(build(0, None, args.encoder))} parameters, "
        f"{mflop_per_image(args.encoder):.1f} MFLOP per training image; {load(t_start)}"
    )
    peak32 = matmul_peak(torch.float32, device)
    peak_lo = matmul_peak(dtype, device) if dtype != torch.float32 else peak32
    print(
        f"matmul peak (2048^2, {torch.get_num_threads()} threads): fp32 {peak32:.0f} GFLOP/s, "
        f"{lo} {peak_lo:.0f} GFLOP/s"
    )

    half = (len(seeds) + 1) // 2
    parts = [("plain", seeds[:half]), ("engine", seeds), ("plain", seeds[half:])]
    plain_time, plain_accs, engine = 0.0, [], None
    for kind, part in parts:
        if not part:
            continue
        r = in_fresh_process(run_variant, kind, part, args)
        if kind == "plain":
            plain_time += r["seconds"]
            plain_accs += r["accs"]
            print(f"  plain loop, seeds {part}: {r['seconds']:.1f} s; {load(t_start)}", flush=True)
        else:
            engine = r
            bad = f"  FAILED seeds {r['failed']}" if r["failed"] else ""
            print(
                f"  richrep train_group ({r['strategy']}, {r['dtype']}), seeds {part}: "
                f"{r['seconds']:.1f} s; {load(t_start)}{bad}",
                flush=True,
            )
    assert engine is not None
    if args.profile:
        for kind in ("plain", "engine"):
            print(f"\nprofile, {kind}: {in_fresh_process(profile_variant, kind, args)}")
    acc_plain = 100 * sum(plain_accs) / len(plain_accs)
    acc_engine = 100 * sum(engine["accs"]) / len(engine["accs"])
    images = n_train * args.epochs * len(seeds)
    gflop = mflop_per_image(args.encoder) * 1e6 * images / 1e9
    name = f"richrep ({engine['strategy']}, {engine['dtype']})"
    rows = (
        ("plain loop (NCHW, fp32)", plain_time, acc_plain),
        (name, engine["seconds"], acc_engine),
    )
    for name, t, acc in rows:
        rate = gflop / t
        print(
            f"{name:<30} {t:7.1f} s  {images / t:7.0f} images/s  test acc {acc:6.2f} %  "
            f"{rate:6.1f} GFLOP/s = "
            f"{100 * rate / peak32:5.1f} % of fp32 peak, {100 * rate / peak_lo:5.1f} % of "
            f"{lo} peak"
        )
    print(
        f"train_seeds speedup vs plain loop: {plain_time / engine['seconds']:.2f}x (target 3x); "
        f"accuracy difference: {acc_engine - acc_plain:+.2f} points"
    )


if __name__ == "__main__":
    main()
