"""The run store: one folder per run, ``<out>/<name>-<hash>/``, written atomically and resumable.

Layout::

    config.yaml          the resolved experiment (registry defaults filled in, but a probe's
                         seed and device: the run fills those)
    richrep.json         the folder's format and the richrep that wrote it
    env.json             versions, device, git commit, task hashes
    checkpoints/         <member>.safetensors + <member>.json (sha256, metrics, status);
                         <member>.partial.* while a member trains (resume point)
    features/            cached features, one safetensors file per (representation, data)
    results/             <suite entry>-<hash>.jsonl, one file per evaluated suite entry
                         (written by write_jsonl: sidecar <...>.json holds sha256, bytes, rows)
    results.jsonl        the tidy rows of the run's entries, gathered from results/
    extra_entries.yaml   suite entries added after the experiment (richrep evaluate), kept
    analysis/            summary.json: the seed analysis
    finetune_work/       resume files of the finetune protocol, one folder per suite entry
    finetuned/           fine-tuned weights kept on request (keep_weights)
    plots/, report.html  the report
    quarantine/          files found corrupt, moved aside (never deleted) with a .reason
    run.lock             held by the process working on the run
    done                 written last: the run is complete

The folder's hash covers what determines the trained models (data, model, training), so a
changed evaluation suite reuses the training and evaluates only the new entries (DomainBed's
sweep does the same with its argument hash and ``done`` marker).

:class:`RunStore` (``run_store.py``) owns every path inside the folder; the files are written
and checked by ``files.py`` (atomic, sha256 sidecars, never through a symbolic link).
"""

from richrep.store.files import (
    CONFIG,
    QUARANTINE,
    TMP_PREFIX,
    file_mode,
    load_tensors,
    quarantine,
    read_json,
    read_jsonl,
    remove,
    save_tensors,
    sha256_file,
    sidecar,
    verify,
    write_atomic,
    write_json,
    write_jsonl,
)
from richrep.store.run_store import FORMAT, RUN_FOLDERS, RunStore

__all__ = [
    "CONFIG",
    "FORMAT",
    "QUARANTINE",
    "RUN_FOLDERS",
    "TMP_PREFIX",
    "RunStore",
    "file_mode",
    "load_tensors",
    "quarantine",
    "read_json",
    "read_jsonl",
    "remove",
    "save_tensors",
    "sha256_file",
    "sidecar",
    "verify",
    "write_atomic",
    "write_json",
    "write_jsonl",
]
