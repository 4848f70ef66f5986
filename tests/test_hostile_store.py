"""Hostile stores: nothing a user owns is ever deleted or written through, nothing computed is
lost. ``data export`` onto the current, home or root folder, a file, a link or a folder richrep
did not export; a "complete" run with a corrupt checkpoint, a lost sidecar or a damaged results
file; a user's ``.*.tmp`` files; symbolic links in place of a run's folders; a failed pre-flight."""

from __future__ import annotations

import copy
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from tests.conftest import TINY
from typer.testing import CliRunner

from richrep import store
from richrep.cli import app
from richrep.config import parse_experiment
from richrep.errors import ConfigError, StoreError
from richrep.pipeline import run_experiment
from richrep.store import RunStore, sidecar, write_atomic

runner = CliRunner()
MINE = "the user's own notes"


def _user_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "notes.txt").write_text(MINE)
    return path


def _snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root`` (links by target, never followed), with its content."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, names in os.walk(root):
        for n in dirnames + names:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = f"-> {os.readlink(p)}"
            elif p.is_file():
                out[rel] = p.read_bytes()
            else:
                out[rel] = "dir"
    return out


# --- data export ----------------------------------------------------------------------------


def _tripwire(monkeypatch: pytest.MonkeyPatch) -> None:
    """No deletion or rename at all (for targets such as ``/`` where a slip would be ruinous)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"export tried to delete or move {args!r}")

    for name in ("rmtree",):
        monkeypatch.setattr(shutil, name, refuse)
    for name in ("rename", "replace", "unlink", "rmdir", "remove"):
        monkeypatch.setattr(os, name, refuse)


def _case_dot(tmp: Path, mp: pytest.MonkeyPatch) -> str:
    mp.chdir(_user_folder(tmp / "work"))
    return "."


def _case_parent(tmp: Path, mp: pytest.MonkeyPatch) -> str:
    _user_folder(tmp / "work")
    mp.chdir(_user_folder(tmp / "work" / "inner"))
    return ".."


def _case_home(tmp: Path, mp: pytest.MonkeyPatch) -> str:
    mp.setenv("HOME", str(_user_folder(tmp / "home")))
    return "~"


def _case_root(tmp: Path, mp: pytest.MonkeyPatch) -> str:
    _tripwire(mp)
    return "/"


def _case_user_folder(tmp: Path, mp: pytest.MonkeyPatch) -> str:
    return str(_user_folder(tmp / "mine"))


def _case_file(tmp: Path, mp: pytest.MonkeyPatch) -> str:
    (tmp / "afile.png").write_text(MINE)
    return str(tmp / "afile.png")


def _case_link(tmp: Path, mp: pytest.MonkeyPatch) -> str:
    (tmp / "link").symlink_to(_user_folder(tmp / "mine"))
    return str(tmp / "link")


def _case_link_to_empty(tmp: Path, mp: pytest.MonkeyPatch) -> str:
    (tmp / "empty").mkdir()
    (tmp / "link").symlink_to(tmp / "empty")
    return str(tmp / "link")


def _case_dangling_link(tmp: Path, mp: pytest.MonkeyPatch) -> str:
    (tmp / "link").symlink_to(tmp / "nowhere")
    return str(tmp / "link")


def _case_under_a_file(tmp: Path, mp: pytest.MonkeyPatch) -> str:
    (tmp / "afile").write_text(MINE)
    return str(tmp / "afile" / "sub")


def _case_export_with_user_file(tmp: Path, mp: pytest.MonkeyPatch) -> str:
    out = tmp / "exp"
    r = runner.invoke(app, ["data", "export", "digits", str(out), "--limit-per-class", "1"])
    assert r.exit_code == 0, r.output
    (out / "train" / "notes.txt").write_text(MINE)
    return str(out)


EXPORT_CASES: dict[str, tuple[Callable[[Path, pytest.MonkeyPatch], str], str]] = {
    "dot": (_case_dot, "current folder"),
    "parent-of-cwd": (_case_parent, "current folder"),
    "home": (_case_home, "home folder"),
    "root": (_case_root, "root folder"),
    "user-folder": (_case_user_folder, "richrep did not export"),
    "file": (_case_file, "is a file"),
    "link": (_case_link, "symbolic link"),
    "link-to-empty": (_case_link_to_empty, "symbolic link"),
    "dangling-link": (_case_dangling_link, "symbolic link"),
    "under-a-file": (_case_under_a_file, "not a folder"),
    "export-with-user-file": (_case_export_with_user_file, "notes.txt"),
}


@pytest.mark.parametrize("force", [True, False], ids=["force", "no-force"])
@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export_never_replaces_what_richrep_did_not_export(case, force, tmp_path, monkeypatch):
    setup, message = EXPORT_CASES[case]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    target = setup(scratch, monkeypatch)
    before = _snapshot(scratch) if case != "root" else None
    args = ["data", "export", "digits", target, "--limit-per-class", "1"]
    r = runner.invoke(app, args + (["--force"] if force else []))
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert message in r.output.replace("\n", " "), r.output
    if before is not None:
        assert _snapshot(scratch) == before  # nothing deleted, nothing left behind


def test_force_replaces_only_richreps_own_export(tmp_path):
    out = tmp_path / "exp"
    args = ["data", "export", "digits", str(out)]
    assert runner.invoke(app, [*args, "--limit-per-class", "1"]).exit_code == 0
    assert (out / ".richrep-export.json").is_file()
    _user_folder(tmp_path)  # a user's file beside the export
    r = runner.invoke(app, [*args, "--limit-per-class", "2", "--force"])
    assert r.exit_code == 0, r.output
    assert len(list(out.rglob("*.png"))) == 40 and (tmp_path / "notes.txt").read_text() == MINE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "notes.txt"]  # no leftovers


# --- run folders ----------------------------------------------------------------------------


def _tiny() -> dict:
    tiny = copy.deepcopy(TINY)
    tiny["runtime"] = {"threads": 1}
    tiny["evaluation"] = {
        "subsets": 1,
        "probe": {"Cs": [1.0]},
        "floors": ["input"],
        "suite": [{"name": "new", "shifts": [{"classes": {"keep": [5, 6, 7]}}]}],
    }
    return tiny


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (experiment, run folder), copied fresh for each test."""
    base = tmp_path_factory.mktemp("finished")
    run = run_experiment(parse_experiment(_tiny()), base / "runs", log=lambda m: None)
    return run.store.root


@pytest.fixture
def run_copy(finished, tmp_path):
    out = tmp_path / "runs"
    shutil.copytree(finished, out / finished.name, symlinks=True)
    return out, out / finished.name


def _rerun(out: Path) -> list[str]:
    lines: list[str] = []
    run_experiment(parse_experiment(_tiny()), out, log=lines.append)
    return lines


def _flip(p: Path) -> None:
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    p.write_bytes(bytes(raw))


def _entry(run: Path) -> Path:
    (entry,) = run.glob("results/new-*.jsonl")
    return entry


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "flipped-checkpoint": (
        lambda run: _flip(run / "checkpoints" / "single-s1.safetensors"),
        "single-s1",
    ),
    "deleted-checkpoint-sidecar": (
        lambda run: (run / "checkpoints" / "single-s1.json").unlink(),
        "single-s1",
    ),
    "truncated-entry-results": (
        lambda run: _entry(run).write_bytes(_entry(run).read_bytes()[:-40]),
        "new-",
    ),
    "flipped-entry-results": (lambda run: _flip(_entry(run)), "new-"),
    "deleted-entry-sidecar": (lambda run: sidecar(_entry(run)).unlink(), "new-"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_complete_run_redoes_what_no_longer_matches_its_hash(run_copy, damage):
    out, run = run_copy
    hurt, what = DAMAGE[damage]
    checkpoints = {p.name: p.read_bytes() for p in (run / "checkpoints").glob("*.safetensors")}
    rows = (run / "results.jsonl").read_bytes()
    hurt(run)
    log = "\n".join(_rerun(out))
    assert "nothing to do" not in log, log
    redo = [
        line
        for line in log.splitlines()
        if what in line and ("retrain" in line or "evaluat" in line)
    ]
    assert redo, log  # says what it redoes, and why
    assert {
        p.name: p.read_bytes() for p in (run / "checkpoints").glob("*.safetensors")
    } == checkpoints
    assert (run / "results.jsonl").read_bytes() == rows
    assert list((run / "quarantine").iterdir())  # the damaged file is kept, not deleted
    assert "nothing to do" in "\n".join(_rerun(out))


USER_TMP = [".notes.tmp", ".config.yaml.backup.tmp", "checkpoints/.mine.tmp", "results/.x.y.tmp"]


def test_sweep_removes_only_richreps_own_temporaries(run_copy):
    out, run = run_copy
    for rel in USER_TMP:
        (run / rel).write_text(MINE)
    ours = run / "checkpoints" / ".richrep-tmp-single-s0.safetensors.abc123.tmp"
    ours.write_text("half a checkpoint")
    assert RunStore(run).sweep_temporaries() == [ours]
    assert all((run / rel).read_text() == MINE for rel in USER_TMP)
    _rerun(out)
    assert all((run / rel).read_text() == MINE for rel in USER_TMP)


def test_temporaries_carry_richreps_prefix(tmp_path, monkeypatch):
    seen = []
    real = os.replace

    def spy(src, dst):
        seen.append(Path(src).name)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_atomic(tmp_path / "x.json", b"{}")
    assert seen and all(n.startswith(".richrep-tmp-") for n in seen)


@pytest.mark.parametrize("folder", ["checkpoints", "features", "results", "plots", "quarantine"])
@pytest.mark.parametrize("state", ["fresh", "finished"])
def test_a_linked_run_folder_is_refused_never_written_through(folder, state, tmp_path):
    out = tmp_path / "runs"
    if state == "finished":
        first = run_experiment(parse_experiment(_tiny()), out, log=lambda m: None).store.root
        shutil.rmtree(first / folder, ignore_errors=True)
    else:
        first = out / parse_experiment(_tiny()).run_id()
        first.mkdir(parents=True)
    theirs = _user_folder(tmp_path / "theirs")
    (first / folder).symlink_to(theirs, target_is_directory=True)
    with pytest.raises(StoreError, match=rf"{folder} is a symbolic link"):
        run_experiment(parse_experiment(_tiny()), out, log=lambda m: None)
    assert _snapshot(theirs) == {"notes.txt": MINE.encode()}


def test_write_atomic_refuses_a_linked_folder_of_a_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: x\n")
    theirs = _user_folder(tmp_path / "theirs")
    (run / "checkpoints").symlink_to(theirs)
    with pytest.raises(StoreError, match="checkpoints is a symbolic link"):
        write_atomic(run / "checkpoints" / "a.json", b"{}")
    assert _snapshot(theirs) == {"notes.txt": MINE.encode()}


BAD_SUITES = [
    [{"name": "r", "shifts": [{"classes": {"keep": [5, 6]}}], "protocol": "robustness"}],
    [{"name": "b", "shifts": [{"gaussian_blur": {"severity": 2}}]}],
]


@pytest.mark.parametrize("suite", BAD_SUITES, ids=["robustness-classes", "blur-on-vectors"])
def test_a_failed_preflight_leaves_no_run_folder(suite, tmp_path):
    tiny = _tiny()
    tiny["evaluation"]["suite"] = suite
    with pytest.raises(ConfigError):
        run_experiment(parse_experiment(tiny), tmp_path / "runs", log=lambda m: None)
    assert not (tmp_path / "runs").exists()


def test_a_failed_preflight_leaves_an_existing_run_as_it_was(run_copy):
    out, run = run_copy
    before = _snapshot(run)
    tiny = _tiny()
    tiny["evaluation"]["suite"] = BAD_SUITES[0]
    with pytest.raises(ConfigError):
        run_experiment(parse_experiment(tiny), out, log=lambda m: None)
    after = _snapshot(run)
    assert {k: v for k, v in after.items() if k != "run.lock"} == {
        k: v for k, v in before.items() if k != "run.lock"
    }
    assert (
        yaml.safe_load((run / "config.yaml").read_text())["evaluation"]["suite"][0]["name"] == "new"
    )


@pytest.mark.parametrize("racy", [True, False], ids=["just-written", "remembered"])
def test_verify_sees_a_flipped_byte_with_the_same_size_and_mtime(racy, tmp_path, monkeypatch):
    if not racy:
        monkeypatch.setattr(store.files, "_RACY_NS", 0)  # remember every hash at once
    p = tmp_path / "x.safetensors"
    store.save_tensors(p, {"w": torch.arange(1000.0)})
    assert store.verify(p) and store.verify(p)
    st = p.stat()
    if not racy:
        time.sleep(0.05)  # past the file system's clock tick: the write changes the ctime
    raw = bytearray(p.read_bytes())
    raw[-5] ^= 0x01
    with open(p, "r+b") as f:
        f.write(raw)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert p.stat().st_size == st.st_size and p.stat().st_mtime_ns == st.st_mtime_ns
    assert not store.verify(p)
