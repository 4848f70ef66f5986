"""Benchmark ``flagship``: the whole Fashion-MNIST study (``examples/fashion_shift.yaml``) end to
end, richrep at a reference commit against richrep now, on the same machine in one run.

Both sides run the *same* experiment file, the reference commit's own (by default), so the work
is the same: training the networks, then every suite entry. The reference is the commit's
source tree (``git archive``) run with this virtual environment; each side runs in a fresh
``--out`` folder (nothing cached), one after the other, never at the same time. The rows are
then compared (matched on entry, representation, seeds, size, draw and metric): how many are
identical and the largest difference; they differ where the arithmetic's order does (threads).

    python benchmarks/flagship.py [--reference 7e22129] [--experiment FILE] [--out DIR]
    python benchmarks/flagship.py --floor-only DIR [--reference-seconds S]

The ratio (reference time / current time) is printed last. Before it, the *floor* of the
current side: its training time (from its log) plus the feature extraction its suite cannot
avoid — every distinct example (train rows the probes use, test sets; rows cut from one root
counted once) through every encoder part, at the rate ``extract`` reaches on one thread here,
spread over all cores with no loss — with every probe fit, data shift and row written taken as
free. ``reference / floor`` bounds any ratio the current code's training and PyTorch's
convolutions allow on this machine. ``--floor-only DIR`` computes it again for the folder of an
earlier run (``DIR/current`` and ``DIR/current.log``), reading the reference's time from
``DIR/summary.json`` or ``--reference-seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = ("entry", "representation", "k", "seeds", "size", "draw", "metric")  # in both row formats


def reference_tree(commit: str, into: Path) -> Path:
    """The reference commit's files (``git archive``) under ``into``."""
    tar = into / "ref.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(tar), commit], check=True)
    with tarfile.open(tar) as t:
        t.extractall(into / "ref", filter="data")
    return into / "ref"


def run_side(name: str, src: Path, experiment: Path, out: Path) -> float:
    """Seconds for ``richrep run experiment --out out`` with the package under ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    log = out.with_suffix(".log")
    out.mkdir(parents=True, exist_ok=True)
    print(f"[{name}] richrep from {src} … (log: {log})", flush=True)
    t0 = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(
            [sys.executable, "-m", "richrep", "run", str(experiment), "--out", str(out)],
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=out,
        )
    seconds = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"[{name}] failed (exit {done.returncode}); see {log}")
    print(f"[{name}] {seconds:.0f} s", flush=True)
    return seconds


def rows(out: Path) -> dict[tuple, float]:
    (results,) = out.glob("*/results.jsonl")
    table = {}
    for line in results.read_text().splitlines():
        r = json.loads(line)
        table[tuple(json.dumps(r.get(k), sort_keys=True) for k in KEY)] = float(r["value"])
    return table


def compare(ref: dict[tuple, float], new: dict[tuple, float]) -> None:
    shared = ref.keys() & new.keys()
    same = sum(ref[k] == new[k] for k in shared)
    diffs = sorted((abs(ref[k] - new[k]), k) for k in shared)
    print(
        f"rows: reference {len(ref)}, current {len(new)}, matched {len(shared)}, "
        f"identical {same} ({same / max(len(shared), 1):.1%})"
    )
    if diffs and diffs[-1][0] > 0:
        big = diffs[-1]
        mean = sum(d for d, _ in diffs) / len(diffs)
        print(f"largest difference {big[0]:.4f} ({' · '.join(big[1][:3])}), mean {mean:.5f}")


def extraction_rows(run: object) -> tuple[int, list[str]]:
    """Distinct examples the suite's transfer and robustness entries extract features of (rows
    cut from one root counted once, as the feature cache gathers them), and the entries of
    other protocols (not counted)."""
    from richrep.evaluation.protocols import Context

    exp = run.exp
    ctx = Context(run.featurizer, run.source_task, exp.evaluation.probe, exp.seed)
    seen: dict[str, set[int]] = {}

    def add(split: object) -> None:
        rows = split.root_rows()
        seen.setdefault(rows.root, set()).update(rows.index.tolist())

    other = []
    for entry in exp.evaluation.suite:
        target = run.target(entry)
        if entry.protocol.name == "transfer":
            add(ctx.probe_sets(target, entry)[0])
        elif entry.protocol.name == "robustness":
            add(ctx.pool(run.source_task))
        else:
            other.append(entry.name)
            continue
        add(target.test)
    return sum(len(v) for v in seen.values()), other


def floor(side: Path, log: Path, images: int = 2048) -> float:
    """The floor of a finished side (module docstring), printed with its parts; seconds."""
    import torch

    from richrep.representations.features import extract
    from richrep.run import Run

    (folder,) = [p.parent for p in side.glob("*/config.yaml")]
    trained = re.search(r"trained \d+/\d+ members in ([\d.]+) s", log.read_text())
    if not trained:
        sys.exit(f"{log} does not say how long training took ('trained N/N members in S s')")
    train_s = float(trained.group(1))
    run = Run.open(folder)
    rows, other = extraction_rows(run)
    cores = os.cpu_count() or 1
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    x = run.source_task.test.x[:images]
    parts = sorted({p for r in run.representations() for p in r.parts if p != "input"})
    per_image = 0.0
    for part in parts:
        enc = run.encoder(part)
        extract(enc, x[:256], device=run.device, dtype=run.dtype)  # warm-up
        t0 = time.perf_counter()
        extract(enc, x, device=run.device, dtype=run.dtype)
        dt = (time.perf_counter() - t0) / len(x)
        per_image += dt
        print(f"  {part}: {1 / dt:,.0f} images/s on one thread")
    torch.set_num_threads(before)
    extract_s = rows * per_image / cores
    print(
        f"floor: training {train_s:.0f} s (its log) + extraction {rows:,} examples x "
        f"{len(parts)} encoder parts ({per_image * 1e3:.2f} ms per example on one thread) / "
        f"{cores} cores = {extract_s:.0f} s -> {train_s + extract_s:.0f} s, every probe fit "
        f"taken as free"
        + (f" (entries of other protocols not counted: {', '.join(other)})" if other else "")
    )
    return train_s + extract_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", default="7e22129", help="commit to compare with")
    ap.add_argument(
        "--experiment",
        type=Path,
        help="experiment file (default: the reference commit's examples/fashion_shift.yaml)",
    )
    ap.add_argument("--out", type=Path, help="where both run folders go (default: a temp dir)")
    ap.add_argument("--floor-only", type=Path, metavar="DIR", help="only the floor of DIR/current")
    ap.add_argument("--reference-seconds", type=float, help="the reference's time (--floor-only)")
    args = ap.parse_args()
    if args.floor_only:
        out = args.floor_only.resolve()
        summary = out / "summary.json"
        if not args.reference_seconds and not summary.exists():
            sys.exit(f"no {summary}: give the reference's time with --reference-seconds")
        t_ref = args.reference_seconds or json.loads(summary.read_text())["reference_seconds"]
        low = floor(out / "current", out / "current.log")
        print(f"best ratio the floor allows (reference {t_ref:.0f} s / floor): {t_ref / low:.2f}x")
        return
    work = Path(tempfile.mkdtemp(prefix="richrep-flagship-"))
    out = (args.out or work).resolve()
    ref_tree = reference_tree(args.reference, work)
    experiment = (args.experiment or ref_tree / "examples" / "fashion_shift.yaml").resolve()
    print(f"experiment {experiment}; reference {args.reference}; runs under {out}")
    t_ref = run_side("reference", ref_tree / "src", experiment, out / "reference")
    t_new = run_side("current", ROOT / "src", experiment, out / "current")
    compare(rows(out / "reference"), rows(out / "current"))
    (out / "summary.json").write_text(
        json.dumps({"reference_seconds": t_ref, "current_seconds": t_new}) + "\n"
    )
    low = floor(out / "current", out / "current.log")
    print(f"best ratio the floor allows (reference / floor): {t_ref / low:.2f}x")
    print(f"reference {t_ref:.0f} s, current {t_new:.0f} s")
    print(f"ratio (reference / current): {t_ref / t_new:.2f}x")


if __name__ == "__main__":
    main()
