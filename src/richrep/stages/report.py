"""The report stage: gathers what the report shows from the run folder (result rows, member
records, the seed analysis, config and environment) and writes ``report.html`` and its plots."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from richrep.analysis.advise import advise
from richrep.analysis.advise_text import advice_lines, verdict
from richrep.errors import RichrepError, StoreError
from richrep.evaluation import stored
from richrep.report.html import ReportData, write_report
from richrep.run import Run, member_costs
from richrep.stages.evaluate import read_results
from richrep.store import read_json


def report_data(run: Run) -> ReportData:
    """Everything the report shows, as plain data."""
    exp = run.exp
    rows = read_results(run)
    suite = run.suite  # the experiment's entries, then the run's extra entries
    chance = {}
    warnings = []
    for e in suite:
        mine = [r for r in rows if r.entry == e.name]
        if mine:
            chance[e.name] = _chance(run, e)
        warnings += sorted({str(r.extra["warning"]) for r in mine if r.extra.get("warning")})
    if left := stored.left_out(run.store.results_dir, {e.name for e in suite}):
        warnings.append(stored.left_out_message(left, run.store.root))
    analysis = None
    if run.store.analysis.exists():
        try:
            analysis = read_json(run.store.analysis)
        except StoreError as e:
            warnings.append(f"the seed analysis could not be read: {e}")
    members = members_info(run)
    for m in members:
        if m["status"] not in ("finished", "failed"):
            warnings.append(
                f"member {m['name']} is {m['status']}{': ' + m['error'] if m['error'] else ''}"
            )
    t = exp.training
    intro = {
        "encoder": exp.model.encoder,
        "width": exp.model.width,
        "dataset": exp.data.dataset,
        "source": ", ".join(s.label() for s in exp.data.source) or "all classes",
        "seeds": len(t.seed_list),
        "epochs": t.epochs,
        "optimizer": t.optimizer,
        "lr": t.lr,
        "weight_decay": t.weight_decay,
        "objective": t.objective.label(),
        "baselines": [f"{b.kind}{b.k}" for b in t.baselines],
    }
    advice = []
    try:
        if any(r.metric == "accuracy" for r in rows):
            for a in advise(rows, member_costs(run.store), order=[e.name for e in suite]):
                advice.append({"verdict": verdict(a), "lines": advice_lines(a)[1:]})
    except RichrepError as e:
        warnings.append(f"no advice: {e}")
    config = run.store.config
    return ReportData(
        name=exp.name,
        run_id=run.store.root.name,
        rows=rows,
        entries=[e.name for e in suite],
        entry_protocols={e.name: e.protocol.name for e in suite},
        chance=chance,
        intro=intro,
        members=members,
        analysis=analysis,
        config_text=config.read_text() if config.exists() else "",
        env=run.store.read_env(),
        warnings=warnings,
        advice=advice,
    )


def members_info(run: Run) -> list[dict[str, Any]]:
    """Each planned member's state and training record."""
    out = []
    for m in run.members:
        s = run.ledger.status(m.name)
        meta = s.meta
        out.append(
            {
                "name": m.name,
                "kind": m.kind,
                "k": m.k,
                "seed": m.seed,
                "status": s.state.value,
                "error": s.error,
                "encoder_params": meta.get("encoder_params"),
                "feature_dim": meta.get("feature_dim"),
                "val_acc": meta.get("val_acc"),
                "train_seconds": meta.get("train_seconds"),
                "precision": meta.get("precision"),
                "device": meta.get("device"),
                "history": meta.get("history", []),
            }
        )
    return out


def _chance(run: Run, entry) -> float:  # noqa: ANN001
    """1 / the number of classes of an entry's target (without building it when avoidable)."""
    for s in entry.shifts:
        if s.name == "classes" and s.params.get("keep"):
            return 1.0 / len(s.params["keep"])
    if entry.dataset is None:
        return 1.0 / run.base_task.num_classes
    return 1.0 / run.target(entry).num_classes


def report(run: Run, *, log: Callable[[str], None] = print) -> Path:
    """Write the run's ``report.html`` (and plots); return its path."""
    path = write_report(report_data(run), run.store.root)
    log(f"report: {path}")
    return path
