"""Screenshots of a run's report in headless Chromium, to look at it as a reader does.

    python benchmarks/report_screenshots.py RUN_DIR [--out DIR] [--render] [--full 6000]

Writes ``report-1440x900.png`` and ``report-1024x768.png`` (desktop and laptop windows: what a
reader sees first) and, with ``--full H``, ``report-1440xH-full.png`` and ``report-1024xH-full.png``
(the page down to H pixels). ``--render`` rewrites the report first from the run's stored results
(``richrep run … --only report`` without the experiment file). Needs ``chromium`` on the PATH
(Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

SIZES = ((1440, 900), (1024, 768))


def chromium() -> str | None:
    """The Chromium (or Chrome) executable, None without one."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def screenshot(page: Path, out: Path, width: int, height: int, timeout: float = 120) -> Path:
    """``page`` rendered in a ``width`` × ``height`` window, saved as PNG to ``out``."""
    exe = chromium()
    if exe is None:
        raise SystemExit("no chromium on the PATH (Debian: apt-get install chromium)")
    out.unlink(missing_ok=True)
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",  # as root (CI)
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={out.parent / '.chromium'}",
        f"--window-size={width},{height}",
        f"--screenshot={out}",
        page.resolve().as_uri(),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not out.exists():
        raise SystemExit(f"chromium wrote no screenshot (exit {r.returncode}): {r.stderr[-800:]}")
    return out


def render(run_dir: Path) -> Path:
    """Rewrite ``run_dir``'s report from its stored results."""
    from richrep.run import Run
    from richrep.stages.report import report

    return report(Run.open(run_dir), log=lambda m: None)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/screenshots")
    ap.add_argument("--render", action="store_true", help="rewrite the report first")
    ap.add_argument("--full", type=int, default=0, help="also the page down to this height")
    a = ap.parse_args(argv)
    page = render(a.run_dir) if a.render else a.run_dir / "report.html"
    if not page.exists():
        raise SystemExit(f"{page} does not exist (write it with --render)")
    out = a.out or a.run_dir / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    sizes = list(SIZES) + [(w, a.full) for w, _ in SIZES if a.full]
    for w, h in sizes:
        name = f"report-{w}x{h}" + ("-full" if (w, h) not in SIZES else "") + ".png"
        print(screenshot(page, out / name, w, h))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
