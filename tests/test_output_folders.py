"""Exports never delete what they did not write (issue 10 item 1); run folders never come from a row
(item 2); control characters in stored text never reach the terminal raw (item 8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from typer.testing import CliRunner

from store.datasets.export import dataset_export_pairs, write_pairs
from store.datasets.importing import import_dataset
from store.output_folders import MARKER, OutputFolderError, earlier_export_files
from store.studio_store import Store
from studio.cli.terminal_text import json_visible, one_line, visible
from trainers.run.outputs import RunFolderError, checked_run_paths, runs_roots

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"


def _invoke(home: Path, *args: str):  # noqa: ANN202
    from studio import cli

    return CliRunner().invoke(cli.app, list(args), env={"PREFSTUDIO_HOME": str(home)})


@pytest.fixture
def studio(studio_home: Path) -> Path:
    """The user's studio: the default database in the data folder, one dataset imported, a run's files."""
    data = studio_home / "data"
    data.mkdir(parents=True)
    with Store.open(data / "studio.db") as store:
        import_dataset(store, FIXTURES / "trl_standard.jsonl", name="d")
    (data / "runs" / "run-1").mkdir(parents=True)
    (data / "runs" / "run-1" / "adapter_model.safetensors").write_bytes(b"weights")
    return data


def test_hf_export_into_the_data_folder_is_refused_and_deletes_nothing(studio: Path, studio_home: Path) -> None:
    before = sorted(p.relative_to(studio) for p in studio.rglob("*"))
    result = _invoke(studio_home, "datasets", "export", "d", "--format", "hf", "--out", str(studio))
    assert result.exit_code == 1
    assert f"error: {studio} is not empty" in result.output and "studio.db" in result.output
    assert sorted(p.relative_to(studio) for p in studio.rglob("*")) == before
    with Store.open(studio / "studio.db") as store:
        assert store.get_dataset("d").n_items == 5  # the database still opens and holds its data


def test_every_out_refuses_a_folder_or_file_it_did_not_write(studio: Path, studio_home: Path, tmp_path: Path):
    notes = tmp_path / "notes.jsonl"
    notes.write_text("my own notes\n")
    cases = [
        ("datasets", "export", "d", "--format", "jsonl", "--out", str(studio / "studio.db")),
        ("datasets", "export", "d", "--format", "parquet", "--out", str(notes)),
        ("datasets", "export", "d", "--format", "jsonl", "--out", str(notes)),
        ("pairs", "export", "--out", str(notes)),
        ("report", "--run", "1", "--out", str(studio)),
    ]
    for args in cases:
        result = _invoke(studio_home, *args)
        assert result.exit_code == 1, (args, result.output)
        assert "error:" in result.output and "nothing was written" in result.output, (args, result.output)
    assert notes.read_text() == "my own notes\n"
    assert (studio / "studio.db").stat().st_size > 0


def test_a_second_hf_export_replaces_only_the_files_the_first_wrote(studio: Path, studio_home: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "hf"
    assert _invoke(studio_home, "datasets", "export", "d", "--format", "hf", "--out", str(out)).exit_code == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["kind"] == "hf dataset" and "state.json" in marker["files"]
    (out / "README.md").write_text("my notes about this export")
    (out / "stale.arrow").write_text("x")
    marker["files"].append("stale.arrow")  # as if the earlier export had written it
    (out / MARKER).write_text(json.dumps(marker))
    result = _invoke(studio_home, "datasets", "export", "d", "--format", "hf", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "README.md").read_text() == "my notes about this export"  # not ours: kept
    assert not (out / "stale.arrow").exists()  # ours, no longer written: removed
    with Store.open(tmp_path / "back.db") as store:
        assert import_dataset(store, out, name="back").n_added == 5


def test_a_marker_cannot_name_files_outside_its_folder(tmp_path: Path) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (tmp_path / "studio.db").write_text("precious")
    (out / MARKER).write_text(json.dumps({"kind": "hf dataset", "files": ["../studio.db", "data.arrow"]}))
    assert earlier_export_files(out, "hf dataset") == ["data.arrow"]
    with pytest.raises(OutputFolderError, match="an earlier hf dataset export"):
        earlier_export_files(out, "report")


def test_report_writes_a_marker_and_may_replace_its_own_report(tmp_path: Path, studio_home: Path) -> None:
    """The one report writer (the CLI's and the compare screen's w) refuses a folder it did not write, marks
    what it writes, and may replace its own report."""
    from store.records import RunRecord
    from studio.evaluation.report import check_report_folder, write_report

    out = tmp_path / "r"
    out.mkdir()
    (out / "report.md").write_text("old report")
    with pytest.raises(OutputFolderError, match="report.md"):
        check_report_folder(out)
    run = RunRecord(id=1, created_at="2026-01-01T00:00:00+00:00", updated_at="2026-01-01T00:01:00+00:00",
                    status="done", message=None, pid=None, config={"epochs": 1}, model_id="m", dataset_hash=None,
                    pair_ids=["j1"], heldout_ids=[], output_dir=str(tmp_path / "runs" / "run-1"), summary=None)
    with pytest.raises(OutputFolderError, match="report.md"):
        write_report(out, run, [], {}, None, [])
    assert (out / "report.md").read_text() == "old report"
    fresh = tmp_path / "fresh"
    write_report(fresh, run, [], {}, None, [])
    assert "report.md" in json.loads((fresh / MARKER).read_text())["files"]
    check_report_folder(fresh)  # an earlier report: allowed, and written over
    write_report(fresh, run, [], {}, None, [])


def test_library_hf_writer_refuses_a_foreign_folder(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        import_dataset(store, FIXTURES / "trl_standard.jsonl", name="d")
        out = tmp_path / "mine"
        out.mkdir()
        (out / "thesis.tex").write_text("years of work")
        with pytest.raises(OutputFolderError, match="thesis.tex"):
            write_pairs(dataset_export_pairs(store, "d"), out, "hf")
    assert (out / "thesis.tex").read_text() == "years of work"


# --- item 2: run folders ---------------------------------------------------------------------------


def test_a_crafted_run_row_cannot_name_a_folder_outside_the_runs_folder(tmp_path: Path, studio_home: Path,
                                                                        tiny_model_dir: Path) -> None:
    import sqlite3

    from tiny_model import fill_separable

    from trainers.run.lifecycle import prepare_run
    from trainers.run.process import execute_run
    from trainers.run_config import RunConfig

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("mine")
    db = tmp_path / "studio.db"
    with Store.open(db) as store:
        fill_separable(store)
        prepared = prepare_run(store, RunConfig(max_steps=1, heldout_fraction=0.0), model_path=tiny_model_dir,
                               runs_root=tmp_path / "runs")
    with sqlite3.connect(db) as conn:  # a crafted (or foreign) database: the row names another folder
        conn.execute("UPDATE runs SET output_dir = ? WHERE id = ?", (str(victim), prepared.run_id))
    # `prefstudio train --run-id` refuses before touching the run (this used to train, then replace the folder) ...
    proc = run_cli("--db", str(db), "train", "--run-id", str(prepared.run_id), home=studio_home)
    assert proc.returncode == 1 and "not a run folder" in proc.stderr and "Traceback" not in proc.stderr
    with Store.open(db) as store:
        assert store.get_run(prepared.run_id).status == "queued"
        # ... and the trainer itself refuses it too (the paths that call it directly).
        outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
        assert outcome.status == "failed" and "not a run folder inside the runs folder" in outcome.message
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
    assert (victim / "precious.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".victim*"))  # nothing staged or moved aside beside it


def test_a_crafted_finished_run_cannot_have_its_adapter_exported_into_another_folder(
        tmp_path: Path, studio_home: Path, default_model: Path) -> None:
    """The GGUF export is written next to the run's PEFT files: a row naming another folder is refused there
    too, and such a run is not offered as an adapter at all."""
    from studio.evaluation.run_adapters import RunAdapterError, gguf_adapter_for_run, usable_runs
    from studio.inference.model_files import inspect_gguf

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "adapter_model.safetensors").write_bytes(b"looks like a run")
    db = tmp_path / "studio.db"
    with Store.open(db) as store:
        run_id = store.create_run({"epochs": 1}, "m", str(victim), pair_ids=["j1"], heldout_ids=[])
        store.set_run_status(run_id, "done", "crafted")
        assert run_id not in [r.id for r in usable_runs(store)]
        with pytest.raises(RunAdapterError, match="not a run folder"):
            gguf_adapter_for_run(store.get_run(run_id), inspect_gguf(default_model), store.path)
    proc = run_cli("--db", str(db), "--model", str(default_model), "adapters", "export", "--run", str(run_id),
                   "--out", str(tmp_path / "a.gguf"), home=studio_home)
    assert proc.returncode == 1 and "not a run folder" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in victim.iterdir()) == ["adapter_model.safetensors"]
    assert not (tmp_path / "a.gguf").exists()


def test_run_folders_must_be_run_named_children_of_a_runs_folder(tmp_path: Path, studio_home: Path) -> None:
    roots = runs_roots(tmp_path / "studio.db")
    assert roots == [studio_home / "data" / "runs", tmp_path / "runs"]
    good = tmp_path / "runs" / "run-20260101-000000-abcdef01"
    assert checked_run_paths(good, roots).output_dir == good
    assert checked_run_paths(studio_home / "data" / "runs" / "run-1", roots)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "run-link").symlink_to(tmp_path)
    for bad in (tmp_path / "runs", tmp_path / "runs" / ".run-x.work", tmp_path / "runs" / "run-x" / "sub",
                tmp_path / "runs" / ".." / "run-x", Path("runs/run-x"), tmp_path / "elsewhere" / "run-1",
                tmp_path / "runs" / "run-link", Path("/")):
        with pytest.raises(RunFolderError, match="not a run folder"):
            checked_run_paths(bad, roots)


# --- item 8: terminal text -------------------------------------------------------------------------


def test_control_characters_are_shown_not_acted_on() -> None:
    text = "a\x1b]0;title\x07b\x1b[2Jc\x9b31md\re\x7ff\u202eg\nh\ti"
    assert visible(text) == "a\\x1b]0;title\\x07b\\x1b[2Jc\\x9b31md\\x0de\\x7ff\\u202eg\nh\ti"
    assert visible("x\ny", keep="") == "x\\x0ay"
    assert one_line("a\n b\x1b[1m " + "z" * 50, 12) == "a b\\x1b[1m …"
    assert visible("ünïcödé 日本 🙂") == "ünïcödé 日本 🙂"  # printable text untouched
    dumped = json.dumps({"t": "x\x9by\x1bz"}, ensure_ascii=False)
    assert "\x9b" in dumped and "\x9b" not in json_visible(dumped)
    assert json.loads(json_visible(dumped)) == {"t": "x\x9by\x1bz"}
