"""Report: the one comparison table (CLI, report, runs index), plots, the terminal rendering and
the self-contained HTML report, all from plain data. Names load on first use, so registering a
figure plug-in (:mod:`.figures`) imports no HTML or table code."""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "Comparison": "richrep.report.tables",
    "ReportData": "richrep.report.html",
    "build_comparison": "richrep.report.tables",
    "comparison_html": "richrep.report.html",
    "metrics": "richrep.report.tables",
    "render_table": "richrep.report.terminal",
    "summary_lines": "richrep.report.summary",
    "to_csv": "richrep.report.tables",
    "to_markdown": "richrep.report.tables",
    "write_report": "richrep.report.html",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'richrep.report' has no attribute {name!r}")
