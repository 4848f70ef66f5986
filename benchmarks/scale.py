"""Benchmark ``scale``: LinearProbe at the paper's scale, on synthetic cat-K features with a known
answer (``_scale_data.py``: the Bayes accuracy of the generating model is the ceiling).

Three curves, each fit in its own process (so that its peak memory, ``VmHWM``, is its own):

1. **d** -- cat-K of K = 1, 2, 5, 10 "ResNet-50s" (2,048 features each: d = 2,048 ... 20,480) at
   fixed n, 100 classes, ``runtime.memory`` 8 GB: time and peak memory per fit, scikit-learn
   where it fits in memory and time (``--sklearn-max``);
2. **n** -- n up to 1,000,000 at d = 2,048 (10 classes) with a 4 GB budget: above it the probe
   streams the features from disk in blocks for every pass;
3. **catK** -- K = 1 ... 20 networks of 512 features: accuracy against K (and the ceiling),
   time and memory.

Every fit: the usual grid (8 values of C), chosen on the last 10 % of the training rows, refit
on all of them, scored on 10,000 test rows. Features are bf16 safetensors files, one per
network (as richrep's feature cache keeps them), concatenated lazily
(:class:`~richrep.data.feature_rows.ConcatColumns`). Prints the log-log slopes of time against
d and n and saves the curves (``--plot``, default ``docs/img/scale.png``).

    python benchmarks/scale.py --preset quick            # minutes: moderate sizes
    python benchmarks/scale.py --preset paper --part d   # the issue's sizes (an hour or more)
    python benchmarks/scale.py --device cuda             # the probe on a GPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)
TEST = 10_000
PRESETS = {
    "smoke": {  # seconds: the script end to end
        "d": ([1, 2], 3_000, 10, "8GB"),
        "n": ([2_000, 6_000], 256, 10, 1 << 20),  # bytes: below runtime.memory's minimum
        "catk": ([1, 2], 3_000, 10, "4GB"),
    },
    # part: (sizes, fixed n or d, classes, memory budget)
    "quick": {
        "d": ([1, 2, 5, 10], 20_000, 100, "8GB"),
        "n": ([10_000, 30_000, 100_000, 300_000], 2048, 10, "4GB"),
        "catk": ([1, 2, 3, 5, 10, 15, 20], 20_000, 10, "4GB"),
    },
    "paper": {
        "d": ([1, 10], 100_000, 100, "8GB"),  # the two ends: an hour on 2 cores
        "n": ([10_000, 100_000, 300_000, 1_000_000], 2048, 10, "4GB"),
        "catk": ([1, 2, 3, 5, 10, 15, 20], 50_000, 10, "4GB"),
    },
}


def peak_rss() -> int:
    """This process's peak resident memory (bytes), from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def data(root: Path, n: int, K: int, p: int, k: int) -> dict:
    """Train (n rows) and test files of K networks of p features, k classes (cached)."""
    from _scale_data import labels, write

    base = root / f"p{p}-k{k}"
    train = write(base / f"train-{n}", n, K, p, k)
    test = write(base / "test", TEST, K, p, k, offset=10**8)
    y, bayes = labels(n, k, 0)
    yt, bayes_t = labels(TEST, k, 0, offset=10**8)
    return {
        "train": [str(f) for f in train],
        "test": [str(f) for f in test],
        "y": y,
        "yt": yt,
        "bayes": bayes_t,
    }


def fit_one(spec: dict) -> dict:
    """One LinearProbe fit (in this process): the files of ``spec``, its budget and device."""
    import torch

    from richrep.data.feature_rows import ConcatColumns, FileRows
    from richrep.evaluation.probes import LinearProbe
    from richrep.runtime.cpu_policy import probe_compute_policy
    from richrep.runtime.memory import MemoryBudget

    torch.set_num_threads(spec["threads"])
    y, yt = np.load(spec["labels"])["y"], np.load(spec["labels"])["yt"]
    t = time.perf_counter()
    X = ConcatColumns([FileRows(f) for f in spec["train"]])  # sha256 of each file checked once
    Xt = ConcatColumns([FileRows(f) for f in spec["test"]])
    check_s = time.perf_counter() - t
    n, d = X.shape
    n_tr = n - n // 10
    memory = spec["memory"]
    budget = MemoryBudget(memory) if isinstance(memory, int) else MemoryBudget.resolve(memory)
    probe = LinearProbe(Cs=GRID, device=spec["device"])
    t = time.perf_counter()
    with (
        budget.applied(),
        probe_compute_policy(n * d, probe.device if probe.device != "auto" else "cpu"),
    ):
        probe.fit(X[:n_tr], y[:n_tr], X[n_tr:], y[n_tr:])
        seconds = time.perf_counter() - t
        acc = probe.score(Xt, yt)
    st = probe.solver_stats_
    io = read_rates(X, st["stream"]["block_rows"]) if st.get("stream") else None
    return {
        "io": io,
        "n": n,
        "d": d,
        "k": int(y.max()) + 1,
        "seconds": seconds,
        "check_s": check_s,
        "peak": peak_rss(),
        "budget": budget.bytes,
        "evals": st["evals"],
        "iters": probe.n_iter_.tolist(),
        "C": probe.C_,
        "acc": acc,
        "gflops": st["flops"] / seconds / 1e9,
        "stream": st.get("stream"),
        "device": probe.device_,
        "fast_matmul": st["fast_matmul"],
    }


def read_rates(X, rows: int) -> dict:
    """GB/s of one pass that only reads the files (page cache or disk) in the probe's blocks,
    of one that also converts them to float32, and of a float32 memory copy (the bandwidth
    ceiling)."""
    import torch

    t, nbytes = time.perf_counter(), 0
    for part in X.parts:
        for start in range(0, part.shape[0], rows):
            nbytes += part.file.read(start, start + rows).numel() * part.file.itemsize
    raw = nbytes / (time.perf_counter() - t) / 1e9
    t = time.perf_counter()
    for _ in X.blocks(rows):
        pass
    converted = nbytes / (time.perf_counter() - t) / 1e9
    a = torch.ones(1 << 28, dtype=torch.uint8)  # both touched first: the copy, not page faults
    b = torch.zeros_like(a)
    t = time.perf_counter()
    b.copy_(a)
    copy = a.numel() / (time.perf_counter() - t) / 1e9
    return {"read_GBps": raw, "read_float32_GBps": converted, "memcpy_GBps": copy, "bytes": nbytes}


def fit_sklearn(spec: dict) -> dict:
    """The same protocol with scikit-learn's LogisticRegression (lbfgs), features in memory."""
    from probe import run_sklearn

    from richrep.data.feature_rows import ConcatColumns, FileRows

    y, yt = np.load(spec["labels"])["y"], np.load(spec["labels"])["yt"]
    X = ConcatColumns([FileRows(f) for f in spec["train"]]).to_tensor().numpy()
    Xt = ConcatColumns([FileRows(f) for f in spec["test"]]).to_tensor().numpy()
    n_tr = len(y) - len(y) // 10
    d = {"x_train": X[:n_tr], "y_train": y[:n_tr], "x_val": X[n_tr:], "y_val": y[n_tr:]}
    s = run_sklearn({**d, "x_test": Xt, "y_test": yt}, spec["sklearn_iter"], warm=True)
    return {
        "seconds": s["seconds"],
        "C": s["C"],
        "acc": s["test"],
        "peak": peak_rss(),
        "unconverged": s["unconverged"],
    }


def child(spec: dict, what: str) -> dict:
    """Run ``fit_one`` or ``fit_sklearn`` in a fresh process; its JSON result."""
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    cmd = [sys.executable, __file__, "--child", what, json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_part(part: str, args: argparse.Namespace) -> list[dict]:
    sizes, fixed, k, memory = PRESETS[args.preset][part]
    sizes = args.sizes or sizes
    rows = []
    for size in sizes:
        if part == "d":
            n, K, p = fixed, size, 2048
        elif part == "n":
            n, K, p = size, 1, fixed
        else:
            n, K, p = fixed, size, 512
        t = time.perf_counter()
        files = data(args.data, n, K if part != "catk" else 20, p, k)
        files["train"], files["test"] = files["train"][:K], files["test"][:K]
        labels = args.data / f"labels-{part}-{n}-{k}.npz"
        np.savez(labels, y=files["y"], yt=files["yt"])
        gen = time.perf_counter() - t
        spec = {
            **files,
            "labels": str(labels),
            "threads": args.threads,
            "device": args.device,
            "memory": memory,
            "sklearn_iter": args.sklearn_iter,
        }
        del spec["y"], spec["yt"]
        r = child(spec, "probe")
        r.update(part=part, K=K, bayes=files["bayes"], generated_s=gen)
        if n * K * p * k <= args.sklearn_max:
            r["sklearn"] = child(spec, "sklearn")
        rows.append(r)
        print(line(r), flush=True)
    return rows


def line(r: dict) -> str:
    s = r.get("stream")
    how = "in memory"
    if s:
        io = r["io"]
        how = (
            f"streamed: {s['passes']} passes of {io['bytes'] / 1e9:.2f} GB, "
            f"{s['bytes'] / r['seconds'] / 1e9:.2f} GB/s over the fit "
            f"(the reader thread alone: {s['bytes'] / max(s['load_s'], 1e-9) / 1e9:.2f} GB/s; "
            f"the solver waited {s['wait_s']:.0f} s); reading only: {io['read_GBps']:.2f} GB/s, "
            f"+ float32: {io['read_float32_GBps']:.2f} GB/s, memcpy {io['memcpy_GBps']:.1f} GB/s"
        )
    text = (
        f"{r['part']:4s} n={r['n']:>9,} d={r['d']:>6,} k={r['k']:>3} K={r['K']:>2}: {r['seconds']:8.1f} s, "
        f"peak {r['peak'] / 2**30:5.2f} GiB (budget {r['budget'] / 2**30:.1f}), {r['evals']:4d} evals, "
        f"{r['gflops']:5.1f} GFLOP/s, C={r['C']:g}, test {100 * r['acc']:.2f} % (Bayes {100 * r['bayes']:.2f} %); {how}"
    )
    if "sklearn" in r:
        sk = r["sklearn"]
        text += (
            f"\n     scikit-learn: {sk['seconds']:8.1f} s, peak {sk['peak'] / 2**30:.2f} GiB, C={sk['C']:g}, "
            f"test {100 * sk['acc']:.2f} % ({100 * (r['acc'] - sk['acc']):+.2f} points for the probe)"
        )
    return text


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0]) if len(xs) > 1 else math.nan


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in ("d", "n", "catk") if results.get(p)]
    fig, axes = plt.subplots(1, len(parts), figsize=(5 * len(parts), 4), squeeze=False)
    for ax, part in zip(axes[0], parts, strict=True):
        rows = results[part]
        if part == "catk":
            K = [r["K"] for r in rows]
            ax.plot(K, [100 * r["acc"] for r in rows], "o-", label="LinearProbe")
            sk = [(r["K"], 100 * r["sklearn"]["acc"]) for r in rows if "sklearn" in r]
            if sk:
                ax.plot(*zip(*sk, strict=True), "s--", label="scikit-learn")
            ax.axhline(100 * rows[0]["bayes"], color="gray", ls=":", label="Bayes ceiling")
            ax.set(xlabel="K (networks of 512 features)", ylabel="test accuracy (%)", title="cat-K")
            tw = ax.twinx()
            tw.plot(K, [r["seconds"] for r in rows], "x:", color="C3")
            tw.set_ylabel("seconds per fit", color="C3")
            ax.legend(loc="lower right")
            continue
        x = [r[part] for r in rows]
        t = [r["seconds"] for r in rows]
        ax.loglog(x, t, "o-", label=f"LinearProbe (slope {slope(x, t):.2f})")
        sk = [(r[part], r["sklearn"]["seconds"]) for r in rows if "sklearn" in r]
        if sk:
            ax.loglog(*zip(*sk, strict=True), "s--", label="scikit-learn")
        for r in rows:
            ax.annotate(
                f"{r['peak'] / 2**30:.1f} GiB",
                (r[part], r["seconds"]),
                fontsize=7,
                xytext=(3, -10),
                textcoords="offset points",
            )
        fixed = f"n={rows[0]['n']:,}" if part == "d" else f"d={rows[0]['d']:,}"
        ax.set(
            xlabel=part,
            ylabel="seconds per fit (8 C + refit)",
            title=f"time vs {part} ({fixed}, {rows[0]['k']} classes)",
        )
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--part", choices=["d", "n", "catk", "all"], default="all")
    ap.add_argument("--device", default="cpu", help="the probe's device: cpu, cuda")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--data", type=Path, default=Path("/tmp/richrep-scale"), help="synthetic feature files"
    )
    ap.add_argument(
        "--sklearn-max",
        type=float,
        default=3e9,
        help="scikit-learn only where n d k is at most this",
    )
    ap.add_argument("--sklearn-iter", type=int, default=300)
    ap.add_argument(
        "--sizes",
        type=lambda v: [int(x) for x in v.split(",")],
        default=None,
        help="the part's sizes instead of the preset's (comma-separated: K for d and catk, n for n)",
    )
    ap.add_argument(
        "--results",
        type=Path,
        default=None,
        help="JSON of the rows (default: <data>/results-<preset>.json)",
    )
    ap.add_argument("--plot", type=Path, default=HERE.parent / "docs" / "img" / "scale.png")
    args = ap.parse_args()
    results_path = args.results or args.data / f"results-{args.preset}.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for part in ("d", "n", "catk") if args.part == "all" else (args.part,):
        results[part] = run_part(part, args)
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=1))
        rows = results[part]
        if part in ("d", "n") and len(rows) > 1:
            xs, ts = [r[part] for r in rows], [r["seconds"] for r in rows]
            print(
                f"log-log slope of time against {part}: {slope(xs, ts):.2f} (first to last: {math.log(ts[-1] / ts[0]) / math.log(xs[-1] / xs[0]):.2f})"
            )
        print(
            f"peak memory: {max(r['peak'] for r in rows) / 2**30:.2f} GiB (budget {rows[0]['budget'] / 2**30:.1f} GiB)"
        )
    plot(results, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        spec = json.loads(sys.argv[3])
        result = fit_one(spec) if sys.argv[2] == "probe" else fit_sklearn(spec)
        print(json.dumps(result))
    else:
        main()
