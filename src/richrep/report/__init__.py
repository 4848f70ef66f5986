"""Report: the one comparison table (CLI, report, runs index), plots, the terminal rendering and
the self-contained HTML report, all from plain data."""

from richrep.report.html import ReportData, comparison_html, write_report
from richrep.report.summary import summary_lines
from richrep.report.tables import Comparison, build_comparison, metrics, to_csv, to_markdown
from richrep.report.terminal import render_table

__all__ = [
    "Comparison",
    "ReportData",
    "build_comparison",
    "comparison_html",
    "metrics",
    "render_table",
    "summary_lines",
    "to_csv",
    "to_markdown",
    "write_report",
]
