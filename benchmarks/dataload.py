"""One training epoch of the Fashion-MNIST CNN streamed from PNG files against in memory.

Network: ``examples/fashion_shift.yaml``'s model, richrep's ``cnn`` (channels [32, 64],
feature_dim 128, ``same`` padding) with a linear head to 10 classes; SGD, batch 128, fp32.

(a) in memory: ``load_task("fashion_mnist")``, the training split as one tensor;
(b) streamed: the same images exported once with ``richrep data export fashion_mnist DIR
    --size 28 --channels 1`` (60,000 + 10,000 PNGs) and read back with the ``image_folder``
    dataset: every batch decoded by Pillow in DataLoader worker processes
    (:func:`richrep.data.images.loader_workers`: half the thread budget, at least one) while
    the model trains on the others.

Both sides train the same initialization, one epoch each, in one process, the in-memory side
twice (before and after the streamed one, the mean reported) so a drift in machine load hits
both. Timed from the first training step to the last (``train_member``); the input statistics
(a seeded 4,096-image sample on the streamed side) and the export are timed apart.

Run: ``python benchmarks/dataload.py`` (exports to ``--folder``, default a folder under
``~/.cache/richrep``, once); ``--limit-per-class N`` for a quick run. The ratio is printed last.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from richrep.config import TrainingConfig
from richrep.data import Split, load_task
from richrep.data.image_folder import export_image_folder
from richrep.data.images import loader_workers
from richrep.models import Classifier, build_encoder
from richrep.runtime.seeding import seeded
from richrep.runtime.threads import ThreadBudget
from richrep.training.loop import train_member

CFG = TrainingConfig(epochs=1, batch_size=128, schedule="constant", lr=0.05)


def build(train: Split) -> tuple[Classifier, float]:
    with seeded(0, "init", "dataload"):
        enc = build_encoder("cnn", (1, 28, 28), channels=[32, 64], feature_dim=128)
        model = Classifier(enc, 10)
    t0 = time.perf_counter()
    model.encoder.set_input_stats(train.x)
    return model, time.perf_counter() - t0


def epoch(train: Split) -> tuple[float, float, float]:
    """(seconds of the epoch, seconds of the input statistics, final training loss)."""
    model, stats_s = build(train)
    t0 = time.perf_counter()
    out = train_member(model, train, CFG, 0, device=torch.device("cpu"), dtype=torch.float32)
    return time.perf_counter() - t0, stats_s, out["history"][-1]["loss"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = Path.home() / ".cache" / "richrep" / "fashion-mnist-png-28x1"
    ap.add_argument("--folder", type=Path, default=default)
    ap.add_argument("--limit-per-class", type=int, default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ThreadBudget(torch.get_num_threads()).apply()  # this process's edge: decoding follows it
    folder = (
        args.folder
        if args.limit_per_class is None
        else args.folder.with_name(f"{args.folder.name}-{args.limit_per_class}")
    )
    if not (folder / "train").is_dir():
        t0 = time.perf_counter()
        counts = export_image_folder(
            "fashion_mnist",
            {},
            folder,
            size=28,
            channels=1,
            limit_per_class=args.limit_per_class,
        )
        print(f"export: {counts} PNGs to {folder} in {time.perf_counter() - t0:.1f} s")
    mem = load_task("fashion_mnist", max_train_per_class=None)
    t0 = time.perf_counter()
    streamed = load_task("image_folder", {"path": str(folder), "size": 28, "channels": 1})
    scan_s = time.perf_counter() - t0
    mem_train = mem.train
    if args.limit_per_class is not None:  # the same number of examples on both sides
        mem_train = mem.train.subset(torch.arange(len(streamed.train)))
    n = len(streamed.train)
    steps = -(-n // CFG.batch_size)
    print(
        f"torch threads {torch.get_num_threads()}, decoding workers {loader_workers(steps)}; "
        f"{n} training images streamed, {len(mem_train)} in memory; folder scan + manifest "
        f"{scan_s:.2f} s"
    )
    a1, _, loss_a = epoch(mem_train)
    b, stats_s, loss_b = epoch(streamed.train)
    a2, _, _ = epoch(mem_train)
    a = (a1 + a2) / 2
    print(
        f"in memory: {a1:.2f} s, {a2:.2f} s (mean {a:.2f} s, {len(mem_train) / a:.0f} img/s), loss {loss_a:.3f}"
    )
    print(
        f"streamed:  {b:.2f} s ({n / b:.0f} img/s), loss {loss_b:.3f}; per-channel input "
        f"statistics {stats_s:.2f} s"
    )
    print(f"ratio streamed / in memory: {b / a:.2f}x")


if __name__ == "__main__":
    main()
