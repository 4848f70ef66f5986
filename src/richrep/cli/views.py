"""The special views of ``richrep results``: the ood entries' tables (``--ood``) and the
domain_generalization entries' DomainBed tables (``--dg``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from richrep.errors import RichrepError

OOD_HELP = (
    "The ood entries as algorithm × initialization tables, one per selection rule (markdown, "
    "in %: mean ± 95% half-width (n); --metric, default worst_env_accuracy)."
)
DG_HELP = (
    "The domain_generalization entries as DomainBed tables: methods × test domains and their "
    "average, one per selection rule (markdown, in %: mean ± 95% half-width (n) over "
    "restarts; --metric, default accuracy), and each method's time."
)


def print_ood(rows: list[Any], run_dir: Path, metric: str | None) -> None:
    """The ood entries as algorithm × initialization tables, one per selection rule."""
    from richrep.report.ood_tables import MEANING, RULES, ood_entries, ood_markdown, ood_table

    names = ood_entries(rows)
    if not names:
        raise RichrepError(f"{run_dir} has no entry evaluated by the ood protocol")
    for e in names:
        comp = ood_table(rows, e, metric or "worst_env_accuracy")
        for rule in RULES:
            print(f"**{e}** · {comp.metric} (%) · {rule} selection\n")
            print(ood_markdown(comp, rule))
            print(f"\n_{MEANING}_\n")


def print_dg(rows: list[Any], run_dir: Path, metric: str | None) -> None:
    """The domain_generalization entries as DomainBed tables, one per selection rule."""
    from richrep.report.figures.domain_generalization import dg_entries, markdown

    dicts = [r.to_dict() for r in rows]
    names = dg_entries(dicts)
    if not names:
        raise RichrepError(
            f"{run_dir} has no entry evaluated by the domain_generalization protocol"
        )
    for e in names:
        print(markdown(dicts, e, metric or "accuracy"))
