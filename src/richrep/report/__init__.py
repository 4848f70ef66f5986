"""Report: the comparison table, accuracy-vs-K plots and the self-contained HTML report."""

from richrep.report.html import write_report
from richrep.report.tables import build_comparison, to_markdown

__all__ = ["build_comparison", "to_markdown", "write_report"]
