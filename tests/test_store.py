"""The run store: no writes through links, umask-following modes, quarantine, checked JSON lines."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
import torch

from richrep.errors import StoreError
from richrep.store import (
    RunStore,
    file_mode,
    load_tensors,
    quarantine,
    read_jsonl,
    save_tensors,
    sidecar,
    verify,
    write_atomic,
    write_json,
    write_jsonl,
)


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


# --- links ----------------------------------------------------------------------------------


def test_lock_refuses_a_symlinked_lock_file(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.lock").symlink_to(target)
    with pytest.raises(StoreError, match=r"run\.lock is a symbolic link"), RunStore(run).lock():
        pass
    assert target.read_text() == "keep me"


def test_lock_still_works_and_writes_the_pid(tmp_path):
    store = RunStore(tmp_path / "run")
    with store.lock():
        assert (store.root / "run.lock").read_text() == f"pid {os.getpid()}"
    with store.lock(wait=True):
        pass


def test_write_atomic_refuses_a_symlinked_destination(tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    link = tmp_path / "x.json"
    link.symlink_to(target)
    with pytest.raises(StoreError, match="symbolic link"):
        write_atomic(link, b"new")
    with pytest.raises(StoreError, match="symbolic link"):
        write_json(link, {"a": 1})
    assert link.is_symlink() and target.read_text() == "{}"
    assert not list(tmp_path.glob(".*.tmp"))


def test_save_tensors_refuses_a_symlinked_destination(tmp_path):
    target = tmp_path / "elsewhere.bin"
    target.write_bytes(b"user data")
    link = tmp_path / "m.safetensors"
    link.symlink_to(target)
    with pytest.raises(StoreError, match="symbolic link"):
        save_tensors(link, {"w": torch.ones(3)})
    assert link.is_symlink() and target.read_bytes() == b"user data"
    assert not sidecar(link).exists()


# --- permissions ----------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_saved_files_follow_the_umask(tmp_path, mask):
    with umask(mask):
        want = 0o666 & ~mask
        assert file_mode() == want
        save_tensors(tmp_path / "m.safetensors", {"w": torch.ones(3)}, {"k": 1})
        write_atomic(tmp_path / "a.bin", b"x")
        write_jsonl(tmp_path / "r.jsonl", [{"a": 1}])
        with RunStore(tmp_path / "run").lock():
            pass
        for p in ("m.safetensors", "m.json", "a.bin", "r.jsonl", "r.json", "run/run.lock"):
            assert mode(tmp_path / p) == want, p


def test_umask_is_read_without_changing_it(tmp_path, monkeypatch):
    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc")

    def racy(mask):
        raise AssertionError("os.umask changes the process umask for every thread")

    with umask(0o027):
        monkeypatch.setattr(os, "umask", racy)
        assert file_mode() == 0o640
        write_atomic(tmp_path / "a", b"x")
        monkeypatch.undo()
    assert mode(tmp_path / "a") == 0o640


# --- tensors --------------------------------------------------------------------------------


def test_tensors_round_trip_and_a_tampered_file_is_refused(tmp_path):
    p = tmp_path / "m.safetensors"
    digest = save_tensors(p, {"w": torch.arange(4.0)}, {"val_acc": 0.5})
    tensors, meta = load_tensors(p)
    assert torch.equal(tensors["w"], torch.arange(4.0))
    assert meta["sha256"] == digest and meta["val_acc"] == 0.5 and meta["bytes"] == p.stat().st_size
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="truncated or modified"):
        load_tensors(p)


# --- quarantine -----------------------------------------------------------------------------


def test_quarantine_moves_the_file_and_its_sidecar(tmp_path):
    store = RunStore(tmp_path / "run")
    (store.root).mkdir()
    (store.root / "config.yaml").write_text("name: x\n")
    ck = store.checkpoints / "m0.safetensors"
    save_tensors(ck, {"w": torch.ones(2)})
    data, side = ck.read_bytes(), sidecar(ck).read_bytes()
    moved = quarantine(ck, "sha256 mismatch")
    assert moved.parent == store.root / "quarantine"
    assert moved.name.endswith("-m0.safetensors")
    assert not ck.exists() and not sidecar(ck).exists()
    assert moved.read_bytes() == data and sidecar(moved).read_bytes() == side
    assert "sha256 mismatch" in moved.with_name(moved.name + ".reason").read_text()
    # the same name again does not overwrite the first one
    ck.write_bytes(b"second")
    again = store.quarantine(ck, "bad")
    assert again != moved and again.read_bytes() == b"second" and moved.read_bytes() == data


def test_quarantine_of_a_missing_file_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="cannot move"):
        quarantine(tmp_path / "nope.jsonl", "bad")


# --- JSON lines -----------------------------------------------------------------------------


ROWS = [{"target": "new", "acc": 0.5, "k": 1}, {"target": "new", "acc": 0.75, "k": 2}]


def test_jsonl_round_trip(tmp_path):
    p = tmp_path / "results.jsonl"
    write_jsonl(p, ROWS)
    assert read_jsonl(p) == ROWS
    meta = json.loads((tmp_path / "results.json").read_text())
    assert meta["rows"] == 2 and meta["bytes"] == p.stat().st_size
    assert verify(p) and verify(p, deep=False)
    write_jsonl(p, [])
    assert read_jsonl(p) == []


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[:-7]),  # truncated
        lambda p: p.write_text(p.read_text().replace("0.75", "0.95")),  # same size, modified
        lambda p: p.write_text(p.read_text() + '{"extra": 1}\n'),  # appended
        lambda p: sidecar(p).unlink(),  # never finished
        lambda p: sidecar(p).write_text("{not json"),  # corrupt sidecar
    ],
)
def test_damaged_jsonl_is_a_store_error(tmp_path, damage):
    p = tmp_path / "r.jsonl"
    write_jsonl(p, ROWS)
    damage(p)
    with pytest.raises(StoreError, match="truncated or modified|sidecar|corrupt"):
        read_jsonl(p)
    assert not verify(p)


def test_jsonl_with_a_consistent_sidecar_but_bad_content_is_a_store_error(tmp_path):
    p = tmp_path / "r.jsonl"
    for content, rows in [(b'{"a": 1}\n{"a": \n', 2), (b'{"a": 1}\n', 5), (b"[1, 2]\n", 1)]:
        write_jsonl(p, [{"a": 1}])
        p.write_bytes(content)
        write_json(
            sidecar(p),
            {"sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content), "rows": rows},
        )
        with pytest.raises(StoreError, match="truncated or modified"):
            read_jsonl(p)


def test_verify_checks_size_cheaply_and_hash_deeply(tmp_path):
    p = tmp_path / "m.safetensors"
    save_tensors(p, {"w": torch.ones(8)})
    assert verify(p)
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    assert verify(p, deep=False)  # same size: only the hash tells
    assert not verify(p)
    p.write_bytes(bytes(data[:-1]))
    assert not verify(p, deep=False)
    assert not verify(tmp_path / "missing.safetensors")


def test_a_json_file_cannot_have_a_sidecar(tmp_path):
    with pytest.raises(StoreError, match="cannot itself end in .json"):
        write_jsonl(tmp_path / "r.json", ROWS)
