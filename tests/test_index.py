"""The runs index: read-only folders, a corrupt index, deleted runs and broken runs."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from richrep import index
from richrep.errors import ConfigError, StoreError
from richrep.index import INDEX, list_runs, rebuild, record
from richrep.store import RunStore

CONFIG = "name: tiny\ndata: {dataset: mnist1d}\nmodel: {encoder: mlp}\n"


def make_run(out: Path, run_id: str, config: str = CONFIG, results: str = '{"a": 1}\n') -> Path:
    d = out / run_id
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(config)
    (d / "results.jsonl").write_text(results)
    (d / "done").write_text("x\n")
    return d


def fake_row(store: RunStore) -> dict:
    n = int(store.root.name.rsplit("-", 1)[1])
    return {
        "run_id": store.root.name,
        "name": store.root.name.rsplit("-", 1)[0],
        "path": str(store.root),
        "finished": f"2024-01-0{n}T00:00:00",
        "dataset": "mnist1d",
        "encoder": "mlp",
        "seeds": 2,
        "epochs": 3,
        "rows": 4,
        "headline": json.dumps({"new": {"cat": 0.9, "single": 0.8, "gain_single": 0.1}}),
    }


class Summaries:
    """A stand-in for summarize_run: counts calls; folders named ``bad-*`` raise ``error``."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[str] = []
        self.error = error

    def __call__(self, store: RunStore) -> dict | None:
        self.calls.append(store.root.name)
        if store.root.name.startswith("bad") and self.error is not None:
            raise self.error
        return fake_row(store)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    out = tmp_path / "runs"
    for i in (1, 2, 3):
        make_run(out, f"good-{i}")
    (out / "not-a-run").mkdir()  # no config.yaml
    (out / "notes.txt").write_text("hello")
    summaries = Summaries()
    monkeypatch.setattr(index, "summarize_run", summaries)
    return out, summaries


def ids(rows: list[dict]) -> list[str]:
    return [r["run_id"] for r in rows]


def indexed(out: Path) -> list[str]:
    con = sqlite3.connect(out / INDEX)
    try:
        return sorted(r[0] for r in con.execute("SELECT run_id FROM runs"))
    finally:
        con.close()


def test_lists_runs_and_then_reads_the_index(runs):
    out, summaries = runs
    rows = list_runs(out, log=pytest.fail)
    assert ids(rows) == ["good-1", "good-2", "good-3"]
    assert rows[0]["headline"]["new"]["gain_single"] == 0.1 and "error" not in rows[0]
    assert indexed(out) == ["good-1", "good-2", "good-3"]
    summaries.calls.clear()
    assert list_runs(out, log=pytest.fail) == rows
    assert summaries.calls == []  # served from the index


def test_listing_an_up_to_date_index_does_not_write(runs, monkeypatch):
    out, _ = runs
    list_runs(out)
    before = (out / INDEX).read_bytes(), (out / INDEX).stat().st_mtime_ns
    real = sqlite3.connect

    def read_only(database, *a, **k):
        assert "mode=ro" in str(database), f"opened {database} for writing"
        return real(database, *a, **k)

    monkeypatch.setattr(sqlite3, "connect", read_only)
    assert ids(list_runs(out, log=pytest.fail)) == ["good-1", "good-2", "good-3"]
    assert ((out / INDEX).read_bytes(), (out / INDEX).stat().st_mtime_ns) == before


@pytest.mark.parametrize(
    "refusal",
    [
        sqlite3.OperationalError("unable to open database file"),
        sqlite3.OperationalError("attempt to write a readonly database"),
        PermissionError(13, "Permission denied"),
    ],
)
def test_read_only_folder_lists_from_memory(runs, monkeypatch, refusal):
    out, _ = runs
    real = sqlite3.connect

    def connect(database, *a, **k):
        if "mode=ro" in str(database):
            return real(database, *a, **k)
        raise refusal

    monkeypatch.setattr(sqlite3, "connect", connect)
    logged: list[str] = []
    rows = list_runs(out, log=logged.append)
    assert ids(rows) == ["good-1", "good-2", "good-3"]
    assert not (out / INDEX).exists()
    assert len(logged) == 1 and "not updated" in logged[0]


def test_unreadable_and_unwritable_index_lists_from_memory(runs, monkeypatch):
    out, _ = runs

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(sqlite3, "connect", refuse)
    assert ids(list_runs(out, log=lambda m: None)) == ["good-1", "good-2", "good-3"]


def test_index_path_that_cannot_be_a_database(runs):
    out, _ = runs
    (out / INDEX).mkdir()  # a real condition where the index can be neither read nor written
    logged: list[str] = []
    assert ids(list_runs(out, log=logged.append)) == ["good-1", "good-2", "good-3"]
    assert (out / INDEX).is_dir() and "not updated" in logged[0]


def test_read_only_index_is_still_read(runs, monkeypatch):
    out, summaries = runs
    list_runs(out)
    summaries.calls.clear()
    real = sqlite3.connect
    monkeypatch.setattr(
        sqlite3,
        "connect",
        lambda db, *a, **k: real(db, *a, **k) if "mode=ro" in str(db) else pytest.fail("wrote"),
    )
    assert ids(list_runs(out, log=pytest.fail)) == ["good-1", "good-2", "good-3"]
    assert summaries.calls == []


@pytest.mark.parametrize(
    "garbage", [b"\x00garbage bytes" * 100, b"SQLite format 3\x00" + b"\xff" * 3000]
)
def test_corrupt_index_is_moved_aside_and_rebuilt(runs, garbage):
    out, _ = runs
    (out / INDEX).write_bytes(garbage)
    logged: list[str] = []
    rows = list_runs(out, log=logged.append)
    assert ids(rows) == ["good-1", "good-2", "good-3"]
    (aside,) = out.glob(f"{INDEX}.corrupt-*")
    assert aside.read_bytes() == garbage  # kept, not deleted
    assert "corrupt" in logged[0] and aside.name in logged[0]
    assert indexed(out) == ["good-1", "good-2", "good-3"]


def test_corrupt_index_that_cannot_be_moved_still_lists(runs, monkeypatch):
    out, _ = runs
    (out / INDEX).write_bytes(b"garbage" * 100)
    monkeypatch.setattr(
        index.os,
        "rename",
        lambda *a: (_ for _ in ()).throw(PermissionError(13, "Permission denied")),
    )
    logged: list[str] = []
    assert ids(list_runs(out, log=logged.append)) == ["good-1", "good-2", "good-3"]
    assert (out / INDEX).read_bytes() == b"garbage" * 100
    assert "corrupt" in logged[0] and "Permission denied" in logged[0]


def test_corrupt_index_warns_by_default(runs):
    out, _ = runs
    (out / INDEX).write_bytes(b"garbage" * 100)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        assert len(list_runs(out)) == 3


def test_index_of_another_schema_is_rebuilt(runs):
    out, _ = runs
    con = sqlite3.connect(out / INDEX)
    con.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO runs VALUES ('good-1', 'x')")
    con.commit()
    con.close()
    assert ids(list_runs(out, log=lambda m: None)) == ["good-1", "good-2", "good-3"]
    assert indexed(out) == ["good-1", "good-2", "good-3"]


def test_deleted_runs_are_dropped(runs):
    out, _ = runs
    list_runs(out)
    shutil.rmtree(out / "good-2")
    (out / "good-3" / "config.yaml").unlink()  # no longer a run folder
    assert ids(list_runs(out, log=pytest.fail)) == ["good-1"]
    assert indexed(out) == ["good-1"]


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("config.yaml: data.dataset: unknown dataset 'x'"),
        StoreError("results.jsonl is truncated or modified"),
        json.JSONDecodeError("Expecting value", "{", 1),
        KeyError("target"),
        PermissionError(13, "Permission denied"),
        TypeError("'NoneType' object is not subscriptable"),
    ],
)
def test_a_broken_run_is_reported_and_the_others_listed(runs, error):
    out, summaries = runs
    summaries.error = error
    make_run(out, "bad-9")
    rows = list_runs(out, log=pytest.fail)
    assert ids(rows) == ["bad-9", "good-1", "good-2", "good-3"]
    bad = rows[0]
    assert bad["error"] and bad["headline"] == {} and bad["path"].endswith("bad-9")
    assert set(bad) >= set(index.COLUMNS)
    assert indexed(out) == ["good-1", "good-2", "good-3"]  # errors are not cached
    summaries.error = None  # fixed: listed normally next time
    assert "error" not in list_runs(out)[3]


def test_a_real_broken_config_is_reported(tmp_path, monkeypatch):
    out = tmp_path / "runs"
    make_run(out, "bad-1", config="name: [unclosed\n")
    make_run(out, "good-2")
    real = index.summarize_run
    monkeypatch.setattr(
        index,
        "summarize_run",
        lambda s: real(s) if s.root.name.startswith("bad") else fake_row(s),
    )
    rows = list_runs(out, log=pytest.fail)
    assert ids(rows) == ["bad-1", "good-2"]
    assert "config.yaml" in rows[0]["error"] and "YAML" in rows[0]["error"]


def test_unfinished_runs_are_listed_with_their_state_and_not_cached(tmp_path):
    out = tmp_path / "runs"
    d = make_run(out, "tiny-1")
    (d / "results.jsonl").unlink()
    (d / "done").unlink()
    (row,) = list_runs(out, log=pytest.fail)
    assert row["run_id"] == "tiny-1" and row["headline"] == {} and row["finished"] is None
    assert row["state"] == "stopped" and row["detail"].startswith("before training")
    assert not (out / INDEX).exists()  # nothing cached: read again at the next listing


def test_missing_folder_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="cannot list the runs"):
        list_runs(tmp_path / "nope")


def test_record_and_rebuild(runs, monkeypatch):
    out, summaries = runs
    summaries.error = ConfigError("broken")
    make_run(out, "bad-9")
    record(RunStore(out / "good-2"))
    assert indexed(out) == ["good-2"]
    rows = rebuild(out)
    assert ids(rows) == ["bad-9", "good-1", "good-2", "good-3"] and rows[0]["error"] == "broken"
    assert indexed(out) == ["good-1", "good-2", "good-3"]
    (out / INDEX).write_bytes(b"garbage" * 100)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        record(RunStore(out / "good-1"))
    assert indexed(out) == ["good-1"]
    (out / INDEX).write_bytes(b"garbage" * 100)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        rebuild(out)
    assert indexed(out) == ["good-1", "good-2", "good-3"]


def test_record_on_a_read_only_folder_warns_instead_of_failing(runs, monkeypatch):
    out, _ = runs

    def refuse(*a, **k):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(sqlite3, "connect", refuse)
    with pytest.warns(RuntimeWarning, match="could not record good-1"):
        record(RunStore(out / "good-1"))
    with pytest.raises(StoreError, match="cannot write the index"):
        rebuild(out)
