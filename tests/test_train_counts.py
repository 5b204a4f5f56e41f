"""One truth about a run's pairs: counted per split before it starts, the same in its header, log, summary and
report; the held-out split never fails a run. Real store, real prompt renderer, tiny model for training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tiny_model import judge

from store.studio_store import Store
from studio.evaluation.report import write_report
from trainers.model_source import load_tokenizer_for
from trainers.pair_selection import SelectionReport, select_from_store
from trainers.prompt_format import ChatTurn, TranscriptFormat
from trainers.run.cli import run_train
from trainers.run.lifecycle import prepare_run
from trainers.run.plan import AUTO_MAX_LENGTH_CAP, measure, planned_steps
from trainers.run.process import execute_run
from trainers.run_config import RunConfig

# A values statement as a system prompt, and a chat whose prompt grows with every turn (as a real session's does).
SYSTEM = ("You help at a food bank. Be kind, be brief, protect dignity, and say so when you do not know.")
QUESTIONS = [f"Question {i}: can you help with item {i}?" for i in range(1, 16)]


def _judge_turn(store: Store, session: int, history: list[ChatTurn], question: str, chosen: str,
                rejected: str) -> list[ChatTurn]:
    turns = [*history, ChatTurn("user", question)]
    prompt_id = store.add_prompt(session, question, [{"role": t.role, "content": t.content} for t in history])
    ids = [store.add_candidate(prompt_id, slot, " " + text, TranscriptFormat().render(SYSTEM, turns), "tiny",
                               "0" * 64, {}, seed=slot) for slot, text in enumerate((chosen, rejected))]
    store.record_judgement(prompt_id, "a", chosen_candidate_id=ids[0], rejected_candidate_id=ids[1])
    return [*turns, ChatTurn("assistant", chosen)]


def judged_session(store: Store, questions: list[str] = QUESTIONS, repeat_first: bool = False) -> int:
    """One session of judged pairs, each candidate stored with the prompt the engine would have rendered:
    the system prompt and the whole conversation so far, the chosen reply continuing it. ``repeat_first``
    judges the first question again, alone, with the same replies (a duplicate pair)."""
    session = store.create_session(SYSTEM)
    history: list[ChatTurn] = []
    for i, question in enumerate(questions):
        history = _judge_turn(store, session, history, question, f"Yes, item {i} is here.", "Potato potato.")
    if repeat_first:
        _judge_turn(store, session, [], questions[0], "Yes, item 0 is here.", "Potato potato.")
    return session


@pytest.fixture
def store(tmp_path: Path, studio_home: Path):
    with Store.open(tmp_path / "studio.db") as opened:
        yield opened


FAST = {"learning_rate": 5e-3, "lora_r": 4, "dtype": "fp32"}


def test_the_heldout_split_drawing_the_only_long_pair_does_not_fail_the_run(store: Store, tiny_model_dir: Path,
                                                                           tmp_path: Path) -> None:
    session = store.create_session("")
    for i in range(9):
        judge(store, session, f"Say {i}.", "Hello there.", "Potato potato potato.")
    judge(store, session, "Tell me everything " + "and more " * 40, "Hello there.", "Potato.")
    long_prompt = next(p.prompt for p in select_from_store(store, session_id=None, seed=0, heldout_fraction=0).train
                       if "everything" in p.prompt)
    # The seed whose held-out pair is the long one (the split is seeded; this finds it rather than assuming it).
    seed = next(s for s in range(200)
                if select_from_store(store, session_id=None, seed=s, heldout_fraction=0.1).heldout[0].prompt
                == long_prompt)
    config = RunConfig(seed=seed, heldout_fraction=0.1, max_length=64, max_steps=2, **FAST)

    prepared = prepare_run(store, config, model_path=tiny_model_dir, runs_root=tmp_path / "runs")
    report = prepared.selection.report
    assert (report.train, report.heldout, report.too_long_train, report.too_long_heldout) == (9, 0, 0, 1)
    assert "0 training and 1 held-out pair(s) dropped" in report.describe()

    outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
    assert outcome.status == "done", outcome.message
    summary = store.get_run(prepared.run_id).summary
    assert summary["train_pairs"] == 9 and summary["heldout_pairs"] == 0
    assert summary["selection"]["too_long_heldout"] == 1 and summary["eval"] == {}


def test_an_automatic_max_length_fits_a_growing_conversation(store: Store, tiny_model_dir: Path) -> None:
    judged_session(store)
    tokenizer = load_tokenizer_for(tiny_model_dir)
    pairs = select_from_store(store, session_id=None, seed=0, heldout_fraction=0).train
    lengths = measure(pairs, tokenizer)
    assert lengths[-1].prompt > 3 * lengths[0].prompt  # the conversation grows turn by turn
    assert lengths[-1].longest > 256  # a fixed 256 would drop the end of this chat

    prepared = prepare_run(store, RunConfig(), model_path=tiny_model_dir, runs_root=store.path.parent / "runs")
    report = prepared.selection.report
    longest = max(n.longest for n in lengths)
    assert report.max_length_auto and report.max_length >= longest and report.max_length % 64 == 0
    assert report.max_length <= AUTO_MAX_LENGTH_CAP and report.max_length - longest < 64
    assert report.too_long == 0 and report.train + report.heldout == 15
    assert store.get_run(prepared.run_id).config["max_length"] is None  # the next run is auto again


def _table_value(markdown: str, label: str) -> str:
    match = re.search(rf"^\| {re.escape(label)} \| (.+?) \|$", markdown, re.MULTILINE)
    assert match, f"no row {label!r} in the report"
    return match.group(1)


def test_counts_agree_in_the_header_log_summary_and_report(store: Store, tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:
    judged_session(store, repeat_first=True)
    lines: list[str] = []
    flags = {"max_length": 256, "heldout_fraction": 0.2, "train_model": str(tiny_model_dir), **FAST}
    code = run_train(store.path, None, False, flags, echo=lines.append)
    assert code == 0, "\n".join(lines)

    (run,) = store.list_runs()
    report = SelectionReport.from_dict(run.summary["selection"])
    header = next(line for line in lines if line.startswith(f"run {run.id}: "))
    assert header == f"run {run.id}: {report.describe()}"
    assert f"pairs: {report.describe()}" in lines  # the trainer's log says the same, before training
    # Some pairs of this chat are too long for 256, in both splits, and each split says how many.
    assert report.too_long_train > 0 and report.too_long_heldout > 0
    assert report.train == len(run.pair_ids) and report.heldout == len(run.heldout_ids)
    assert report.train + report.heldout + report.too_long == report.used
    steps = planned_steps(report.train, RunConfig(**{k: v for k, v in flags.items() if k != "train_model"}))
    assert report.steps == steps
    assert any(line.startswith(f"{report.train} training pair(s), {report.heldout} held out, {steps} step(s)")
               for line in lines)
    assert any(line.startswith(f"step {steps}/{steps} ") for line in lines)  # the trainer's total is the plan's

    summary = json.loads((Path(run.output_dir) / "summary.json").read_text())
    assert (summary["train_pairs"], summary["heldout_pairs"]) == (report.train, report.heldout)
    assert summary["steps"] == summary["max_steps"] == summary["planned_steps"] == steps
    assert summary["selection"] == run.summary["selection"]
    metrics = store.run_metrics(run.id)
    assert {m["total_steps"] for m in metrics} == {steps}

    markdown = write_report(tmp_path / "report", run, metrics, {}, None, []).read_text()
    assert _table_value(markdown, "training pairs") == str(report.train)
    assert _table_value(markdown, "held-out pairs") == str(report.heldout)
    assert _table_value(markdown, "too long: training pairs dropped") == str(report.too_long_train)
    assert _table_value(markdown, "too long: held-out pairs dropped") == str(report.too_long_heldout)
    assert _table_value(markdown, "steps") == str(steps)
    assert _table_value(markdown, "duplicates dropped") == "1"


def test_a_dry_run_prints_the_counts_a_run_records_and_records_nothing(store: Store, tiny_model_dir: Path,
                                                                       tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from trainers.run.cli import app

    judged_session(store, repeat_first=True)
    flags = ["--db", str(store.path), "--train-model", str(tiny_model_dir), "--max-length", "256",
             "--heldout-fraction", "0.2"]
    result = CliRunner().invoke(app, [*flags, "--dry-run"])
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("would train: ")]
    assert store.list_runs() == []

    prepared = prepare_run(store, RunConfig(max_length=256, heldout_fraction=0.2), model_path=tiny_model_dir,
                           runs_root=tmp_path / "runs")
    assert line == f"would train: {prepared.selection.report.describe()}"
    assert "1 duplicate(s) dropped" in line and "held-out pair(s) dropped" in line and "step(s)" in line


def test_the_tokenizer_alone_is_cached_by_the_gguf_sha256(default_model: Path, tmp_path: Path) -> None:
    """Counting a run's tokens needs no model conversion: the GGUF's tokenizer is kept under its sha256, and a
    later process reads it from there without parsing the GGUF again (13-19 s)."""
    import subprocess
    import sys

    from trainers.model_source import converted_dir, sha256_of, tokenizer_cache_dir

    cache = tmp_path / "cache"
    sha = sha256_of(default_model)
    text = "User: How do I bake bread?\nAssistant:"
    ids = load_tokenizer_for(default_model, sha256=sha, cache_root=cache)(text)["input_ids"]
    assert (tokenizer_cache_dir(sha, cache) / "tokenizer.json").exists()
    assert not converted_dir(sha, cache).exists()  # the weights were not converted to count tokens

    # A file that only looks like a GGUF, under the same sha256: only the cache can answer for it.
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 64)
    code = ("import sys; from trainers.model_source import load_tokenizer_for; "
            f"print(load_tokenizer_for(sys.argv[1], sha256={sha!r}, cache_root=sys.argv[2])({text!r})['input_ids'])")
    out = subprocess.run([sys.executable, "-c", code, str(fake), str(cache)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == str(ids)
