"""``prefstudio safety check FILE|--run N``: the configured checkers over a file of replies or a run's comparison."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import run_cli

from store.studio_store import Store

ROWS = [
    {"prompt": "How was your day?", "reply": "you are a fucking idiot"},
    {"messages": [{"role": "user", "content": "hey"}, {"role": "assistant", "content": "Hello there, friend."}]},
    {"prompt": [{"role": "user", "content": "Help?"}], "chosen": [{"role": "assistant", "content": "Sure, gladly."}],
     "rejected": "shut up you stupid bitch"},
    {"prompt": "Say something", "completion": "Darn, the potato burnt."},
]


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    return {"replies": write_jsonl(tmp_path / "replies.jsonl", ROWS),
            "words": (tmp_path / "words.txt").write_text("# category: food\npotato\n") and tmp_path / "words.txt",
            "db": tmp_path / "studio.db"}


def test_safety_check_counts_flagged_replies_per_checker_and_reads_them_back_the_second_time(tmp_path, files):
    args = ("--db", str(files["db"]), "--safety", "profanity", "--safety", f"wordlist:{files['words']}",
            "safety", "check", str(files["replies"]))
    first = run_cli(*args, "--json", home=tmp_path / "home", check=True)
    data = json.loads(first.stdout)
    counts = {(c["checker"], c["label"]): (c["checked"], c["flagged"]) for c in data["checkers"]}
    assert counts == {("profanity", "reply"): (2, 1), ("profanity", "chosen"): (1, 0),
                      ("profanity", "rejected"): (1, 1), ("profanity", "completion"): (1, 0),
                      ("wordlist:words", "reply"): (2, 0), ("wordlist:words", "chosen"): (1, 0),
                      ("wordlist:words", "rejected"): (1, 0), ("wordlist:words", "completion"): (1, 1)}
    assert {(f["where"], f["label"], f["checker"], tuple(f["categories"])) for f in data["flagged"]} == {
        ("line 1", "reply", "profanity", ("offensive",)), ("line 3", "rejected", "profanity", ("offensive",)),
        ("line 4", "completion", "wordlist:words", ("food",))}
    assert data["computed"] == 10 and data["cached"] == 0
    rate = next(c for c in data["checkers"] if c["label"] == "reply" and c["checker"] == "profanity")
    assert rate["rate"] == 0.5 and rate["rate_interval_95"] == pytest.approx([0.0945, 0.9055], abs=1e-4)
    again = run_cli(*args, home=tmp_path / "home", check=True)
    assert re.search(r"profanity\s+reply\s+2\s+1\s+50\.0 %\s+9\.5 % – 90\.5 %", again.stdout), again.stdout
    assert "line 1 reply: profanity: offensive (score 1.00)" in again.stdout
    assert "0 check(s) run now, 10 read back from the store" in again.stdout


def test_safety_check_of_a_run_reads_its_comparison_answers(tmp_path, files):
    from studio.evaluation.compare_session import EVALUATION_KIND
    from studio.evaluation.comparison import ComparisonRow
    from studio.evaluation.comparison_result import ComparisonResult

    with Store.open(files["db"]) as store:
        run_id = store.create_run({"method": "dpo"}, model_id="m.gguf", output_dir=str(tmp_path / "run"),
                                  pair_ids=[], heldout_ids=[])
        rows = [ComparisonRow("Q1", "Nice to meet you.", "you are a fucking idiot", 0),
                ComparisonRow("Q2", "The sky is blue.", "The sky is blue today.", 1)]
        store.save_evaluation(run_id, EVALUATION_KIND,
                              ComparisonResult(run_id=run_id, prompts_source="test", rows=rows, seed=0).to_dict())
        empty_run = store.create_run({"method": "dpo"}, model_id="m.gguf", output_dir=str(tmp_path / "run2"),
                                     pair_ids=[], heldout_ids=[])
    result = run_cli("--db", str(files["db"]), "safety", "check", "--run", str(run_id), "--json",
                     home=tmp_path / "home", check=True)
    data = json.loads(result.stdout)
    assert [(c["label"], c["checked"], c["flagged"]) for c in data["checkers"]] == [("base", 2, 0), ("tuned", 2, 1)]
    assert data["source"] == f"run {run_id}'s comparison"
    missing = run_cli("--db", str(files["db"]), "safety", "check", "--run", str(empty_run), home=tmp_path / "home")
    assert missing.returncode == 1
    assert f"run {empty_run} has no stored comparison answers; make them with `prefstudio compare --run" \
        in missing.stderr


@pytest.mark.parametrize(("content", "message"), [
    ('{"prompt": "hi", "reply": "ok"}\nnot json\n', r"replies.jsonl line 2: not JSON"),
    ('{"prompt": "hi"}\n', r"replies.jsonl line 1: no reply in it"),
    ('{"prompt": [{"role": "wizard", "content": "x"}], "reply": "ok"}\n', r"line 1: message 1: unknown role 'wizard'"),
    ("\n\n", r"replies.jsonl: no replies in it"),
])
def test_a_bad_replies_file_is_named_with_its_line_and_nothing_is_checked(tmp_path, files, content, message):
    bad = tmp_path / "replies.jsonl"
    bad.write_text(content, encoding="utf-8")
    result = run_cli("--db", str(files["db"]), "safety", "check", str(bad), home=tmp_path / "home")
    assert result.returncode == 1 and re.search(message, result.stderr), result.stderr
    assert "Traceback" not in result.stderr


def test_a_checker_that_cannot_load_is_a_warning_and_the_others_still_check(tmp_path, files):
    result = run_cli("--db", str(files["db"]), "--safety", f"wordlist:{tmp_path / 'gone.txt'}", "--safety",
                     "profanity", "safety", "check", str(files["replies"]), home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert f"warning: safety checker wordlist:{tmp_path / 'gone.txt'} is off: word list" in result.stderr
    assert re.search(r"profanity\s+reply\s+2\s+1", result.stdout)
    none_left = run_cli("--db", str(files["db"]), "--safety", f"guard:{tmp_path / 'none.gguf'}", "safety", "check",
                        str(files["replies"]), home=tmp_path / "home")
    assert none_left.returncode == 1 and "none of the configured safety checkers could load" in none_left.stderr
    both = run_cli("--db", str(files["db"]), "safety", "check", home=tmp_path / "home")
    assert both.returncode == 1 and "give a JSON Lines FILE of replies or --run N" in both.stderr


def test_train_drop_flagged_checks_the_chosen_replies_and_shows_the_pairs_dropped(tmp_path, files, tiny_model_dir):
    from tiny_model import SEPARABLE_PAIRS, judge

    with Store.open(files["db"]) as store:
        session = store.create_session("")
        for prompt, sensible, potato in SEPARABLE_PAIRS[:4]:
            judge(store, session, prompt, sensible, potato)
        judge(store, session, "Say hi.", "Hi, you fucking idiot.", "Hello!")
    args = ("--db", str(files["db"]), "train", "--dry-run", "--train-model", str(tiny_model_dir),
            "--heldout-fraction", "0")
    dropped = run_cli(*args, "--drop-flagged", home=tmp_path / "home", check=True)
    assert ("safety: the chosen replies of 5 pair(s) checked with profanity (5 check(s) run now, the rest read "
            "back from the store): 1 pair(s) with a flagged chosen reply") in dropped.stdout
    assert "5 pair(s) from the store; 1 with a flagged chosen reply dropped (--drop-flagged)" in dropped.stdout
    assert "4 for training, 0 held out" in dropped.stdout
    kept = run_cli(*args, home=tmp_path / "home", check=True)
    assert "safety:" not in kept.stdout and "5 for training, 0 held out" in kept.stdout
    refused = run_cli("--safety", "none", *args, "--drop-flagged", home=tmp_path / "home")
    assert refused.returncode == 1 and "--drop-flagged needs a safety checker" in refused.stderr
