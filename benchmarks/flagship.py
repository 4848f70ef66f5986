"""Benchmark ``flagship``: the whole Fashion-MNIST study (``examples/fashion_shift.yaml``) end to
end, richrep at a reference commit against richrep now, on the same machine in one run.

Both sides run the *same* experiment file, the reference commit's own (by default), so the work
is the same: training the networks, then every suite entry. The reference is the commit's
source tree (``git archive``) run with this virtual environment; each side runs in a fresh
``--out`` folder (nothing cached), one after the other, never at the same time. The rows are
then compared (matched on entry, representation, seeds, size, draw and metric): how many are
identical and the largest difference; they differ where the arithmetic's order does (threads).

    python benchmarks/flagship.py [--reference 7e22129] [--experiment FILE] [--out DIR]

The ratio (reference time / current time) is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", default="7e22129", help="commit to compare with")
    ap.add_argument(
        "--experiment",
        type=Path,
        help="experiment file (default: the reference commit's examples/fashion_shift.yaml)",
    )
    ap.add_argument("--out", type=Path, help="where both run folders go (default: a temp dir)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="richrep-flagship-"))
    out = (args.out or work).resolve()
    ref_tree = reference_tree(args.reference, work)
    experiment = (args.experiment or ref_tree / "examples" / "fashion_shift.yaml").resolve()
    print(f"experiment {experiment}; reference {args.reference}; runs under {out}")
    t_ref = run_side("reference", ref_tree / "src", experiment, out / "reference")
    t_new = run_side("current", ROOT / "src", experiment, out / "current")
    compare(rows(out / "reference"), rows(out / "current"))
    print(f"reference {t_ref:.0f} s, current {t_new:.0f} s")
    print(f"ratio (reference / current): {t_ref / t_new:.2f}x")


if __name__ == "__main__":
    main()
