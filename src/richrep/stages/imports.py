"""``training.seeds: {from_checkpoints: [...]}``: K encoder checkpoints someone already has
become the run's seeds without training. Each file is read (sha256 checked against the
experiment's record), its keys and shapes checked against the configured encoder (a
:class:`~richrep.errors.DataError` names the file, the key and both shapes), and the member is
written to the ledger as finished, so catK, the single seeds, the floors and any baseline
(a distill student of the imported seeds, say) go through the usual stages. The classifier
head is taken from the file when it has one of the right shape (a richrep checkpoint of the
same classes); otherwise the seed's initial head stays and ``val_acc`` is not measured."""

from __future__ import annotations

import time
from collections.abc import Callable

from richrep.errors import DataError
from richrep.members import kind_of
from richrep.models import count_params
from richrep.models.weights import load_encoder_weights, load_head_weights, read_weights
from richrep.run import Run
from richrep.store.ledger import Status
from richrep.store.weightfiles import Checkpoints
from richrep.training.checkpoint import save_checkpoint
from richrep.training.loop import accuracy


def import_checkpoints(run: Run, log: Callable[[str], None] = print) -> dict[str, Status]:
    """Write each checkpoint of ``training.seeds.from_checkpoints`` as seed ``i``'s finished
    member (``single-s<i>``); members already imported from the same file are kept."""
    spec = run.exp.training.seeds
    if not isinstance(spec, Checkpoints):
        return {}
    singles = [m for m in run.members if m.kind == "single"]
    out = {}
    t0 = time.perf_counter()
    imported = 0
    for member, path, sha in zip(singles, spec.from_checkpoints, spec.sha256, strict=True):
        status = run.ledger.status(member.name)
        if status.ok and status.meta.get("source_sha256") == sha:
            out[member.name] = status
            continue
        wf = read_weights(path, sha)
        model = kind_of(member).build(member, run.exp, run.source_task)
        kept = load_encoder_weights(model.encoder, wf)
        head = load_head_weights(model.head, wf)
        students = [m.name for m in run.members if member.name in m.requires]
        if students and not head:
            raise DataError(
                f"{path}: no classifier head of the task's shape ({run.source_task.num_classes} "
                f"classes) in the file, and {students} learn from {member.name}'s outputs; "
                f"import checkpoints with their head or leave those baselines out"
            )
        model.eval()
        val_acc = accuracy(model, run.source_task.val, run.device, run.dtype) if head else None
        meta = {
            "member": member.to_dict(),
            "encoder_params": count_params(model.encoder),
            "feature_dim": model.encoder.feature_dim,
            "val_acc": val_acc,
            "history": [],
            "train_seconds": 0.0,
            "device": "cpu",
            "precision": "float32",
            "strategy": "imported",
            "task_hash": run.source_task.hash,
            "imported_from": str(path),
            "source_sha256": sha,
            "source_layout": wf.layout,
            "head_imported": head,
            "task_input_stats": [k for k in kept if k.startswith("standardize.")] != [],
        }
        save_checkpoint(run.ledger.final(member.name), model.cpu(), **meta)
        run.ledger.clear_failure(member.name)
        out[member.name] = run.ledger.status(member.name)
        imported += 1
    if imported:
        log(
            f"imported {imported} checkpoint(s) as seeds in {time.perf_counter() - t0:.1f} s "
            f"(training.seeds.from_checkpoints)"
        )
    return out
