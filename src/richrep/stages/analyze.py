"""The analyze stage: are a run's seeds different? Extracts the trained (and untrained) seeds'
features on a split of the source task through the run's feature cache, compares them with
:func:`richrep.analysis.compare_seeds` and writes ``analysis/summary.json``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from richrep.analysis import DEFAULT_MEASURES, compare_seeds
from richrep.errors import ConfigError
from richrep.plugins import all_registries
from richrep.run import Run
from richrep.stages.budget import check_permutations
from richrep.store import write_json


def analyze(
    run: Run,
    *,
    split: str = "test",
    measures: Sequence[str] = DEFAULT_MEASURES,
    max_samples: int = 5000,
    n_permutations: int = 200,
    n_clusters: int = 16,
    log: Callable[[str], None] = print,
    yes: bool = False,
) -> dict:
    """Compare the run's trained seeds; write and return the summary. More permutations than
    :data:`~richrep.runtime.limits.MAX_PERMUTATIONS` are refused unless ``yes``."""
    if max_samples < 2:
        raise ConfigError(f"--max-samples must be at least 2, got {max_samples}")
    if n_permutations < 1:
        raise ConfigError(f"--permutations must be at least 1, got {n_permutations}")
    check_permutations(n_permutations, yes)
    measures_reg = all_registries()["measures"]
    for m in measures:
        measures_reg.entry(m, where="--measure")
    task = run.source_task
    if split not in task.splits():
        raise ConfigError(f"--split must be one of train, val, test; got {split!r}")
    trained = [t for t in run.trained() if t.kind == "single"]
    if len(trained) < 2:
        raise ConfigError(
            f"{run.store.root} has {len(trained)} trained seed(s); the analysis compares at least two"
        )
    data = task.splits()[split]
    if len(data) > max_samples:
        g = torch.Generator().manual_seed(run.exp.seed)
        data = data.subset(torch.randperm(len(data), generator=g)[:max_samples].sort().values)
    feats = run.featurizer
    a = [feats.part(t.name, data) for t in trained]
    r = [feats.part(f"random-{t.name}", data) for t in trained]
    log(f"analysis on {len(data)} {split} examples of {task.name}, {len(trained)} seeds")
    shas = {t.name: run.checkpoint_sha(t.name) for t in trained}
    summary = compare_seeds(
        a,
        r,
        [t.name for t in trained],
        measures=measures,
        n_permutations=n_permutations,
        n_clusters=n_clusters,
        seed=run.exp.seed,
        checkpoint_sha256=shas,
        split=split,
        seeds=[t.seed for t in trained],
    )
    write_json(run.store.analysis, summary)
    for w in summary.get("warnings", []):
        log(f"WARNING: {w}")
    return summary
