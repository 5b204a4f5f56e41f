"""Comparison data (side by side, blind order and tally, prompt files, held-out pairs) and the run report."""

import json
import math
from pathlib import Path

import pytest

from store import Store
from store.output_folders import OutputFolderError
from studio.evaluation.comparison import (
    BlindTally,
    ComparisonError,
    ComparisonPrompt,
    ComparisonRow,
    blind_order,
    comparison_prompts,
    heldout_pairs,
    load_prompts_file,
    side_by_side,
    wilson_interval,
)
from studio.evaluation.report import ReportError, write_report
from studio.evaluation.stance_metric import describe_stance
from studio.inference.engine import SamplingSettings
from studio.inference.scoring import PreferenceMetrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "studio.db") as opened:
        yield opened


def judged_session(store: Store) -> list[str]:
    """Three prompts judged A, B and edited; returns the pair ids in order."""
    session = store.create_session("Be brief.")
    for i, verdict in enumerate(("a", "b", "edited")):
        prompt_id = store.add_prompt(session, f"question {i}", [])
        ids = [
            store.add_candidate(prompt_id, slot, f" reply {i}{slot}", f"Be brief.\n\nUser: question {i}\nAssistant:",
                                "gemma", "sha", {"temperature": 0.8}, seed=slot)
            for slot in (0, 1)
        ]
        if verdict == "edited":
            store.record_judgement(prompt_id, "edited", edited_text="my better reply")
        else:
            chosen = ids[0] if verdict == "a" else ids[1]
            store.record_judgement(prompt_id, verdict, chosen, ids[1] if chosen == ids[0] else ids[0])
    return [p.pair_id for p in store.pairs()]


# --- side by side (real engine; activate only records: base and tuned are the same model here) ---


@pytest.mark.slow
def test_side_by_side_switches_twice_and_reuses_seeds(engine):
    calls: list[str | None] = []
    answers: list[tuple[int, str]] = []
    sampling = SamplingSettings(max_tokens=8, temperature=0.9)
    prompts = ["Name a colour.", ComparisonPrompt("Name a fruit.", "User: Name a fruit.\nAssistant:")]
    rows = side_by_side(engine, prompts, "Answer briefly.", sampling, seed=40, activate=calls.append,
                        adapter="run-7", on_answer=lambda i, side, gen: answers.append((i, side)))
    assert calls == [None, "run-7"]
    assert answers == [(0, "base"), (1, "base"), (0, "tuned"), (1, "tuned")]
    assert [r.seed for r in rows] == [40, 41]
    assert [r.prompt for r in rows] == ["Name a colour.", "Name a fruit."]
    assert rows[0].rendered_prompt.startswith("Answer briefly.") and rows[1].rendered_prompt.startswith("User:")
    # Same model, same seed, same settings: the "tuned" answer must be the base answer exactly.
    assert all(r.base_text == r.tuned_text for r in rows)
    assert rows[0].base_text == engine.generate(rows[0].rendered_prompt, sampling, 40).text


@pytest.mark.slow
def test_side_by_side_stop_returns_complete_rows_only(engine):
    sampling = SamplingSettings(max_tokens=4)

    def compare(stop_after: int) -> tuple[list[ComparisonRow], list[str | None]]:
        calls: list[str | None] = []
        produced: list[int] = []
        rows = side_by_side(engine, ["One?", "Two?", "Three?"], "", sampling, seed=1, activate=calls.append,
                            adapter="a", on_answer=lambda i, side, gen: produced.append(i),
                            should_stop=lambda: len(produced) >= stop_after)
        return rows, calls

    rows, calls = compare(stop_after=4)  # three base answers, one tuned
    assert calls == [None, "a"] and [r.prompt for r in rows] == ["One?"]
    rows, calls = compare(stop_after=2)  # stopped before the tuned side: no switch, no rows
    assert calls == [None] and rows == []
    calls = []
    with pytest.raises(ComparisonError, match="no prompts"):
        side_by_side(engine, [], "", sampling, seed=1, activate=calls.append, adapter="a")


# --- blind order and tally ---


def test_blind_order_is_seeded_and_balanced():
    assert blind_order(10, seed=3) == blind_order(10, seed=3)
    assert sum(blind_order(10, seed=3)) == 5
    assert any(blind_order(10, seed=s) != blind_order(10, seed=3) for s in range(4, 10))
    assert {sum(blind_order(7, seed=s)) for s in range(20)} == {3, 4}
    assert blind_order(0, seed=1) == []


def test_tally_counts_votes_from_the_tuned_side():
    votes = [("a", True), ("b", False), ("a", False), ("tie", True), ("b", True)]
    tally = BlindTally.from_votes(votes)
    assert (tally.wins, tally.ties, tally.losses) == (2, 1, 2)
    assert tally.win_rate == 0.5 and tally.total == 5
    with pytest.raises(ValueError, match="unknown vote 'left'"):
        tally.add("left", True)
    empty = BlindTally()
    assert empty.win_rate is None and empty.interval is None and "no decided votes" in empty.describe()
    assert BlindTally(ties=3).interval is None


def test_wilson_interval_on_known_counts():
    tally = BlindTally(wins=8, ties=3, losses=2)
    # Independently: the Wilson bounds are the roots in p of (p̂ − p)² = z² p (1 − p) / n.
    n, phat, z = 10, 0.8, 1.959963984540054
    a, b, c = 1 + z * z / n, -(2 * phat + z * z / n), phat * phat
    roots = sorted(((-b - math.sqrt(b * b - 4 * a * c)) / (2 * a), (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))
    low, high = tally.interval
    assert low == pytest.approx(roots[0], abs=1e-12) and high == pytest.approx(roots[1], abs=1e-12)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # published value for 8/10
    assert tally.win_rate == 0.8
    assert "8 win(s), 3 tie(s), 2 loss(es)" in tally.describe() and "49%–94%" in tally.describe()
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0) and wilson_interval(0, 10)[0] == pytest.approx(0.0)
    assert tally.to_dict()["interval_95"] == [low, high]


# --- prompts files ---


def test_prompt_files_in_three_formats(tmp_path: Path):
    plain = tmp_path / "p.txt"
    plain.write_text("\ufeffFirst prompt\n\n  Second prompt  \r\n", encoding="utf-8")
    assert load_prompts_file(plain) == ["First prompt", "Second prompt"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "multi\\nline"}\n\n"just a string"\n', encoding="utf-8")
    assert load_prompts_file(jsonl) == ["multi\nline", "just a string"]
    sniffed = tmp_path / "prompts"
    sniffed.write_text('{"prompt": "A", "other": 1}\n{"prompt": "B"}\n', encoding="utf-8")
    assert load_prompts_file(sniffed) == ["A", "B"]
    array = tmp_path / "p.json"
    array.write_text(json.dumps(["x", {"prompt": "y"}]), encoding="utf-8")
    assert load_prompts_file(array) == ["x", "y"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", b"", "empty.txt is empty"),
        ("blank.txt", b"\n   \n\n", "blank.txt is empty"),
        ("bad.jsonl", b'{"prompt": "ok"}\n\n{"prompt": oops}\n', "bad.jsonl line 3 is not valid JSON"),
        ("field.jsonl", b'{"prompt": "ok"}\n{"text": "no"}\n', 'field.jsonl line 2: an object without a "prompt"'),
        ("type.jsonl", b'{"prompt": 5}\n', "type.jsonl line 1: the prompt must be text"),
        ("latin1.txt", "ok\nstill ok\ncaf\u00e9\n".encode("latin-1"), "latin1.txt line 3 is not UTF-8"),
        ("obj.json", b'{"prompt": "x"}', "obj.json: expected a JSON array"),
        ("broken.json", b'[\n"a",\n]', "broken.json line 3 is not valid JSON"),
        ("emptyitem.json", b'["a", ""]', "emptyitem.json item 2: the prompt is empty"),
    ],
)
def test_unusable_prompt_files_are_named_with_their_line(tmp_path: Path, name: str, content: bytes, message: str):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ComparisonError, match=message):
        load_prompts_file(path)


def test_missing_prompts_file(tmp_path: Path):
    with pytest.raises(ComparisonError, match="cannot read prompts file .*nope.txt"):
        load_prompts_file(tmp_path / "nope.txt")


# --- held-out pairs ---


def test_heldout_pairs_follow_the_run(store: Store, tmp_path: Path):
    ids = judged_session(store)
    run_id = store.create_run({"heldout_fraction": 0.5, "session_id": None}, "gemma", str(tmp_path / "r"),
                              pair_ids=ids[:1], heldout_ids=[ids[2], ids[1]])
    pairs = heldout_pairs(store, store.get_run(run_id))
    assert [p.pair_id for p in pairs] == [ids[2], ids[1]]
    edited = pairs[0]
    assert edited.verdict == "edited" and edited.chosen == " my better reply"  # as the trainer saw it
    assert [p.text for p in comparison_prompts(pairs)] == ["question 2", "question 1"]
    assert comparison_prompts([pairs[0], pairs[0]]) == comparison_prompts([pairs[0]])

    none = store.create_run({"heldout_fraction": 0.0}, "gemma", str(tmp_path / "r2"), pair_ids=ids, heldout_ids=[])
    with pytest.raises(ComparisonError, match=f"run {none} has no held-out pairs .*--prompts FILE"):
        heldout_pairs(store, store.get_run(none))
    gone = store.create_run({}, "gemma", str(tmp_path / "r3"), pair_ids=ids, heldout_ids=["j999"])
    with pytest.raises(ComparisonError, match="1 of run .* held-out pair\\(s\\) are no longer available"):
        heldout_pairs(store, store.get_run(gone))


def test_heldout_pairs_of_a_dataset_run(store: Store, tmp_path: Path):
    from trainers.pair_selection import read_dataset_file

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"P{i}", "chosen": " c", "rejected": " r"}) + "\n"
                            for i in range(3)), encoding="utf-8")
    rows = read_dataset_file(data)
    run_id = store.create_run({"dataset": str(data)}, "gemma", str(tmp_path / "r"),
                              pair_ids=[rows[0].pair_id], heldout_ids=[rows[2].pair_id])
    (pair,) = heldout_pairs(store, store.get_run(run_id))
    assert (pair.prompt, pair.chosen, pair.rejected, pair.verdict) == ("P2", " c", " r", "dataset")
    data.unlink()
    with pytest.raises(ComparisonError, match="dataset file that cannot be read"):
        heldout_pairs(store, store.get_run(run_id))


# --- report ---


def finished_run(store: Store, tmp_path: Path, status: str = "done", steps: int = 6):
    run_id = store.create_run({"beta": 0.1, "epochs": 2, "train_model": "/m/a|b.gguf"}, "gemma-3-270m.gguf",
                              str(tmp_path / "runs" / "run-1"), pair_ids=["j1", "j2", "j3"], heldout_ids=["j4"],
                              dataset_hash="abc123")
    for step in range(1, steps + 1):
        store.add_run_metrics(run_id, step, step / 3, {
            "loss": 0.693 * 0.7**step, "rewards/margins": 0.1 * step, "rewards/accuracies": min(1.0, 0.4 + 0.1 * step),
        })
    store.set_run_summary(run_id, {"steps": steps, "selection": {"source": "the store", "duplicates": 1, "train": 3, "heldout": 1},
                                   "seconds": {"train": 12.5}, "device": "cpu",
                                   "eval": {"eval_loss": 0.25, "eval_rewards/accuracies": 0.75}})
    store.set_run_status(run_id, status, f"{status}: test")
    return store.get_run(run_id)


SAMPLES = [
    ComparisonRow("Say <script>alert(1)</script>", " base ``` reply", " tuned | reply", 40, "User: ..."),
    ComparisonRow("Second & last", " b2", " t2", 41),
]


def test_report_writes_markdown_html_and_charts(store: Store, tmp_path: Path):
    run = finished_run(store, tmp_path)
    before_after = {"base": {"n": 4, "raw_accuracy": 0.5, "mean_margin": -1.25},
                    "tuned": {"n": 4, "raw_accuracy": 0.75, "mean_margin": 0.5, "implicit_reward_accuracy": 1.0}}
    out = tmp_path / "report"
    md_path = write_report(out, run, store.run_metrics(run.id), before_after,
                           BlindTally(wins=8, ties=3, losses=2), SAMPLES)
    assert md_path == out / "report.md"
    assert sorted(p.name for p in out.iterdir()) == [".prefstudio-export.json", "loss.png", "margins.png", "report.html", "report.md"]
    assert not list(tmp_path.glob(".report.*"))  # the temporary directory became the report
    for png in ("loss.png", "margins.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000

    md = md_path.read_text(encoding="utf-8")
    for expected in ("# Preference Studio report: run", "| beta | 0.1 |", "| training pairs | 3 |",
                     "| held-out pairs | 1 |", "| trainer eval: rewards/accuracies | 0.75 |", "![DPO loss per step](loss.png)", "| raw_accuracy | 0.5 | 0.75 |",
                     "| implicit_reward_accuracy | — | 1 |", "| tuned wins | 8 |", "0.490 – 0.943",
                     "Sample 2 (seed 41)", "| train_model | /m/a\\|b.gguf |",
                     "```text\n tuned | reply\n```", "````text\n base ``` reply\n````"):
        assert expected in md, expected

    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Second &amp; last" in page and page.count('src="data:image/png;base64,iVBORw0KGgo') == 2


def test_report_without_votes_metrics_or_samples(store: Store, tmp_path: Path):
    run = finished_run(store, tmp_path, steps=0)
    md = write_report(tmp_path / "r", run, [], {}, None, []).read_text(encoding="utf-8")
    assert "No blind votes were recorded." in md and "No held-out metrics" in md and "No side-by-side" in md
    assert (tmp_path / "r" / "loss.png").read_bytes().startswith(PNG_SIGNATURE)


def test_cancelled_run_is_reported_with_a_note(store: Store, tmp_path: Path):
    run = finished_run(store, tmp_path, status="cancelled", steps=3)
    md = write_report(tmp_path / "r", run, store.run_metrics(run.id), {}, None, SAMPLES).read_text(encoding="utf-8")
    assert "> **Note:** This run was cancelled at step 3" in md


def test_failed_or_unfinished_run_is_refused_and_nothing_is_written(store: Store, tmp_path: Path):
    run = finished_run(store, tmp_path, status="failed")
    with pytest.raises(ReportError, match=f"run {run.id} failed \\(failed: test\\).*train again"):
        write_report(tmp_path / "out" / "r", run, [], {}, None, [])
    store.set_run_status(run.id, "training")
    with pytest.raises(ReportError, match="still training"):
        write_report(tmp_path / "out" / "r", store.get_run(run.id), [], {}, None, [])
    assert not (tmp_path / "out").exists()


def test_report_into_an_existing_directory_replaces_only_its_files(store: Store, tmp_path: Path):
    run = finished_run(store, tmp_path)
    out = tmp_path / "shared"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    (out / "report.md").write_text("old", encoding="utf-8")
    # A folder the report did not write is refused, whatever it holds (issue 10: exports never replace what
    # they did not write) ...
    with pytest.raises(OutputFolderError, match="not empty"):
        write_report(out, run, store.run_metrics(run.id), {}, None, [])
    assert (out / "report.md").read_text(encoding="utf-8") == "old"
    # ... an earlier report is written over, and a file the user added beside it since is kept.
    (out / "report.md").unlink()
    (out / "notes.txt").unlink()
    write_report(out, run, store.run_metrics(run.id), {}, None, [])
    (out / "report.md").write_text("old", encoding="utf-8")
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    write_report(out, run, store.run_metrics(run.id), {}, None, [])
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert (out / "report.md").read_text(encoding="utf-8").startswith("# Preference Studio report")
    assert not list(tmp_path.glob(".shared.*"))
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(ReportError, match="is not a directory"):
        write_report(tmp_path / "file", run, [], {}, None, [])


def test_a_failure_while_writing_leaves_nothing_behind(store: Store, tmp_path: Path, monkeypatch):
    import studio.evaluation.report as report

    run = finished_run(store, tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "render_html", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(tmp_path / "r", run, store.run_metrics(run.id), {}, None, [])
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob(".r.*"))


# --- stop strings that follow a stored prompt's own format (issue 9 item 9) ---

HH_PROMPT = ("\n\nHuman: What is the capital of France?\n\nAssistant: Paris.\n\n"
             "Human: And the capital of Germany?\n\nAssistant:")


def test_stops_follow_the_prompts_own_format():
    from trainers.prompt_format import ChatTemplateFormat, TranscriptFormat
    from trainers.prompt_stops import stops_for_prompt, transcript_speakers

    transcript = TranscriptFormat()
    assert transcript_speakers(HH_PROMPT) == ("Assistant", "Human")
    assert "\nHuman:" in stops_for_prompt(transcript, HH_PROMPT)  # also ends HH's "\n\nHuman:"
    studio_prompt = "Note: be brief.\n\nUser: hi\nAssistant: hello\nUser: and?\nAssistant:"
    assert stops_for_prompt(transcript, studio_prompt) == ("\nUser:", "\nAssistant:")  # "Note:" is no speaker
    chat = ChatTemplateFormat(template="", eos_token="<eos>", stop=("<eos>",))
    gemma = "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    assert stops_for_prompt(chat, gemma) == ("<eos>", "<end_of_turn>")
    assert stops_for_prompt(chat, HH_PROMPT) == ("<eos>", "\nAssistant:", "\nHuman:")
    assert transcript_speakers("Human: no label at the end") == ()


@pytest.mark.slow
def test_hh_prompt_answers_stop_before_an_invented_human_turn(engine):
    # Measured: the base model answers this HH prompt and then writes "\n\nHuman: What is the capital of …".
    sampling = SamplingSettings(max_tokens=40, temperature=0.0)
    rows = side_by_side(engine, [ComparisonPrompt("And the capital of Germany?", HH_PROMPT)], "", sampling,
                        seed=3, activate=lambda _name: None, adapter="run-1")
    (row,) = rows
    assert row.base_text.strip() and row.rendered_prompt == HH_PROMPT
    assert "Human:" not in row.base_text and "Human:" not in row.tuned_text
    assert "Assistant:" not in row.base_text


# --- where the comparison prompts come from (issue 9 item 7) ---


def test_prompt_source_specs_parse():
    from studio.evaluation.prompts import PromptSource

    assert PromptSource.parse(None) == PromptSource.parse("auto") == PromptSource("auto")
    assert PromptSource.parse("heldout") == PromptSource("heldout")
    assert PromptSource.parse("bank:values") == PromptSource("bank", "values")
    assert PromptSource.parse("session") == PromptSource("session")
    assert PromptSource.parse("session:4") == PromptSource("session", "4")
    assert PromptSource.parse("file:session") == PromptSource("file", "session")
    assert PromptSource.parse("~/p.jsonl") == PromptSource("file", "~/p.jsonl")
    for spec in ("heldout", "bank:values", "session:4", "file:x.txt", "auto"):
        assert PromptSource.parse(spec).spec == spec
    with pytest.raises(ComparisonError, match="session:ID"):
        PromptSource.parse("session:latest")


def test_prompt_sources_resolve_from_the_store_banks_and_files(store: Store, tmp_path: Path):
    from studio.evaluation.prompts import PromptSource, resolve_prompts

    ids = judged_session(store)
    run_id = store.create_run({"heldout_fraction": 0.5, "session_id": None}, "gemma", str(tmp_path / "r"),
                              pair_ids=ids[:1], heldout_ids=[ids[1]])
    run = store.get_run(run_id)
    heldout = heldout_pairs(store, run)

    def resolve(spec: str, pairs=heldout):
        return resolve_prompts(PromptSource.parse(spec), store, run, pairs, [])

    prompts, label = resolve("heldout")
    assert label == "held-out pairs" and [p.text for p in prompts] == ["question 1"]
    prompts, label = resolve("bank:values")
    assert label == "prompt bank 'values'" and len(prompts) == 10 and all(isinstance(p, str) for p in prompts)
    # The session's own questions, each with the exact prompt its candidates were generated from.
    prompts, label = resolve("session")
    assert "session(s) 1" in label
    assert [(p.text, p.rendered) for p in prompts] == [
        (f"question {i}", f"Be brief.\n\nUser: question {i}\nAssistant:") for i in range(3)]
    file = tmp_path / "p.txt"
    file.write_text("one\ntwo\n", encoding="utf-8")
    assert resolve(str(file)) == (["one", "two"], "file p.txt")
    # Nothing silently empty: each unusable source says what is wrong.
    with pytest.raises(ComparisonError, match="no prompt bank named 'nope'; the banks are: everyday, tricky, values"):
        resolve("bank:nope")
    with pytest.raises(ComparisonError, match="no prompts file sesion: a prompt source is heldout, bank:NAME"):
        resolve("sesion")
    with pytest.raises(ComparisonError, match=f"run {run_id} has no held-out prompts"):
        resolve("heldout", pairs=[])
    with pytest.raises(ComparisonError, match="there is no session 99"):
        resolve("session:99")
    other = store.create_session("Other.")
    with pytest.raises(ComparisonError, match=f"session {other}.*no questions"):
        resolve(f"session:{other}")
    assert resolve("auto")[1] == "held-out pairs"
    assert resolve("auto", pairs=[])[1].startswith("prompt bank 'everyday'")


def test_report_says_how_the_samples_were_generated(store: Store, tmp_path: Path):
    from studio.evaluation.compare_session import ComparisonResult, write_run_report

    run = finished_run(store, tmp_path)
    result = ComparisonResult(run_id=run.id, prompts_source="prompt bank 'values'", rows=SAMPLES, seed=40,
                              sampling=SamplingSettings(temperature=0.0, max_tokens=12))
    md = write_run_report(store, run.id, result, tmp_path / "r").read_text(encoding="utf-8")
    assert "Prompts from prompt bank 'values'; both answered greedy (temperature 0), max 12 tokens." in md
    assert ComparisonResult.from_dict(result.to_dict()).sampling == SamplingSettings(temperature=0.0, max_tokens=12)


# --- one typed result, one formatter (studio/evaluation/comparison_text.py) ---

BEFORE = PreferenceMetrics(n=2, raw_accuracy=0.5, mean_margin=-0.42)
AFTER = PreferenceMetrics(n=2, raw_accuracy=1.0, mean_margin=3.17, implicit_reward_accuracy=1.0,
                          mean_implicit_margin=0.36, beta=0.1)


def test_the_comparison_result_is_typed_and_round_trips_as_stored_json():
    from studio.evaluation.comparison_result import ComparisonResult

    result = ComparisonResult(run_id=3, prompts_source="held-out pairs", rows=SAMPLES, seed=40, before=BEFORE,
                              after=AFTER, notes=["a note"], sampling=SamplingSettings(temperature=0.0, max_tokens=12),
                              prompts_spec="heldout")
    stored = json.loads(json.dumps(result.to_dict()))
    assert stored["before"] == BEFORE.to_dict() and stored["sampling"]["max_tokens"] == 12  # the JSON as before
    again = ComparisonResult.from_dict(stored)
    assert again == result and isinstance(again.before, PreferenceMetrics)
    # What another version stored is read as far as it can be: unknown keys ignored, bad sampling unrecorded.
    stored["before"]["per_pair_count"] = 7
    stored["sampling"] = {"temperature": -1, "max_tokens": 12}
    older = ComparisonResult.from_dict(stored)
    assert older.before == BEFORE and older.sampling is None


def test_one_formatter_says_what_the_cli_prints():
    from studio.evaluation.comparison_result import ComparisonResult
    from studio.evaluation.comparison_text import (
        NO_METRICS_NOTE,
        metric_paragraphs,
        metrics_text,
        sample_lines,
        summary_line,
    )

    result = ComparisonResult(run_id=3, prompts_source="held-out pairs", rows=SAMPLES, seed=40, before=BEFORE,
                              after=AFTER, sampling=SamplingSettings(temperature=0.0, max_tokens=12))
    assert summary_line(result) == "run 3: 2 prompt(s) from held-out pairs · greedy (temperature 0), max 12 tokens"
    assert metric_paragraphs(result) == [
        "held-out pairs: 2 · preference accuracy base 0.50 → tuned 1.00 (implicit reward 1.00) · mean margin "
        "-0.420 → +3.170"]
    assert sample_lines(1, SAMPLES[1], lambda text, _width: text.strip()) == [
        "[1] Second & last  (seed 41)", "  base : b2", "  tuned: t2"]
    stance = {"train": {"before": {"n": 4, "support_preferred": 1, "share": 0.25},
                        "after": {"n": 4, "support_preferred": 3, "share": 0.75}, "total": 4, "trained_support": 4}}
    exercise = ComparisonResult(run_id=4, prompts_source="the test prompts of 'x'", rows=[], seed=0, stance=stance)
    assert metrics_text(exercise) == "\n".join(describe_stance(stance))
    assert metrics_text(ComparisonResult(run_id=5, prompts_source="file p.txt", rows=[], seed=0)) == NO_METRICS_NOTE
    assert metrics_text(None) == NO_METRICS_NOTE


async def test_the_compare_screen_shows_the_formatters_metrics(store: Store, tmp_path: Path, default_model,
                                                              studio_home):
    from conftest import wait_for

    from studio.evaluation.compare_session import EVALUATION_KIND
    from studio.evaluation.comparison_result import ComparisonResult
    from studio.evaluation.comparison_text import describe_sampling, metrics_text
    from studio.settings import StudioSettings
    from studio.tui.app import PreferenceStudioApp
    from studio.tui.screens.compare import CompareScreen

    run = finished_run(store, tmp_path)
    result = ComparisonResult(run_id=run.id, prompts_source="held-out pairs", rows=SAMPLES, seed=40, before=BEFORE,
                              after=AFTER, sampling=SamplingSettings(temperature=0.0, max_tokens=12),
                              prompts_spec="heldout")
    store.save_evaluation(run.id, EVALUATION_KIND, result.to_dict())
    # No safety checker: its numbers would join the metrics from a worker (tests/test_safety_metrics.py shows them).
    app = PreferenceStudioApp(settings=StudioSettings(model=default_model, safety=()), store=store)
    async with app.run_test(size=(130, 40)) as pilot:
        await wait_for(pilot, lambda: app.engine is not None)
        app.action_compare(run.id)  # the stored comparison: nothing generated
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.result is not None)
        screen = app.screen
        assert str(screen.query_one("#compare-metrics").render()) == metrics_text(result)
        assert describe_sampling(result.sampling) in str(screen.query_one("#compare-title").render())
