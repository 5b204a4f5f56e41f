"""The labelling queue, headless and through the CLI: prompts enqueued from a file, a bank or a dataset;
candidates generated one committed transaction per prompt, cancelled and resumed; judged as every kind; a
kill -9 during generation loses no committed item and keeps no half one.

Real things throughout: a real SQLite file, the real default model through llama.cpp (4-token replies), the
installed ``prefstudio`` in real subprocesses for the CLI, ctrl-c and kill -9.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import prefstudio_bin, run_cli

from store.database import integrity_ok
from store.datasets.importing import import_dataset
from store.studio_store import Store
from studio.evaluation.prompts import find_bank
from studio.inference.engine import SamplingSettings
from studio.labelling_queue import (
    QueueError,
    QueueGenerator,
    QueueJudge,
    RateMeter,
    enqueue,
    next_entries,
    progress_line,
    prompts_from_bank,
    prompts_from_dataset,
    prompts_from_file,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(__file__).parent / "fixtures" / "datasets"
SAMPLING = SamplingSettings(max_tokens=4)
PROMPTS = ["Name a colour.", "Name a fruit.", "Name a city.", "Name a river."]


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "studio.db") as opened:
        yield opened


def prompts_file(folder: Path, texts: list[str] = PROMPTS) -> Path:
    path = folder / "prompts.txt"
    path.write_text("\n\n".join(texts) + "\n", encoding="utf-8")  # blank lines between: skipped
    return path


# --- enqueueing ---


def test_enqueue_from_a_file_queues_each_prompt_once_with_where_it_came_from(store, tmp_path):
    queue_id, counts = enqueue(store, prompts_from_file(prompts_file(tmp_path)), 3, "Be brief.")
    assert (counts.added, counts.already_queued) == (4, 0)
    items = store.queue_items()
    assert [i.text for i in items] == PROMPTS
    assert [i.origin for i in items] == [f"prompts.txt #{n}" for n in range(1, 5)]
    assert {i.n_candidates for i in items} == {3} and {i.session_id for i in items} == {queue_id}
    assert store.get_session(queue_id).system_prompt == "Be brief."
    # The same file again adds nothing to that queue; another system prompt starts another queue.
    again_id, again = enqueue(store, prompts_from_file(prompts_file(tmp_path)), 3, "Be brief.")
    assert (again_id, again.added, again.already_queued) == (queue_id, 0, 4)
    other_id, other = enqueue(store, prompts_from_file(prompts_file(tmp_path, PROMPTS[:1])), 2, "Be long.")
    assert other_id != queue_id and other.added == 1
    assert [q.id for q in store.queues()] == [queue_id, other_id]
    counts = store.queue_counts()
    assert (counts.total, counts.generated, counts.judged, counts.waiting) == (5, 0, 0, 5)


def test_a_queue_is_not_the_latest_chat_session(store):
    chat = store.create_session("You are the chat.")
    enqueue(store, [("Name a colour.", "t #1")], 2, "You are the queue.")
    assert store.latest_session().id == chat  # the chat's next start keeps its own system prompt
    assert store.latest_session().system_prompt == "You are the chat."


def test_a_bad_prompts_file_is_named_with_its_line_and_queues_nothing(store, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(QueueError, match=r"bad\.jsonl line 2 is not valid JSON"):
        prompts_from_file(bad)
    missing = tmp_path / "missing.txt"
    with pytest.raises(QueueError, match="missing.txt"):
        prompts_from_file(missing)
    assert store.queue_counts().total == 0


def test_a_queued_prompt_takes_one_to_four_candidates_and_text(store):
    queue_id = store.create_queue("s")
    for bad_n in (0, 5):
        with pytest.raises(ValueError, match="1 to 4 candidates"):
            store.enqueue(queue_id, [("hi", "x #1")], bad_n)
    with pytest.raises(ValueError, match="x #2: the prompt is empty"):
        store.enqueue(queue_id, [("hi", "x #1"), ("  ", "x #2")], 2)
    assert store.queue_counts().total == 0  # checked first: nothing written
    plain = store.create_session("s")
    with pytest.raises(ValueError, match="not a labelling queue"):
        store.enqueue(plain, [("hi", "x #1")], 2)


def test_prompts_from_a_bank_and_from_an_imported_dataset(store):
    bank = prompts_from_bank("")
    assert bank and bank[0][1].startswith("bank:") and all(text.strip() for text, _ in bank)
    with pytest.raises(QueueError, match="no prompt bank named"):
        prompts_from_bank("no such bank")
    import_dataset(store, DATASETS / "trl_standard.jsonl", name="std")
    import_dataset(store, DATASETS / "trl_conversational.jsonl", name="conv")
    std = prompts_from_dataset(store, "std")
    assert std[0] == ("What color is the sky?", "dataset:std #1")
    conv_rows = [json.loads(line) for line in (DATASETS / "trl_conversational.jsonl").read_text().splitlines()]
    last_user = [[m["content"] for m in row["prompt"] if m["role"] == "user"][-1] for row in conv_rows]
    assert [text for text, _ in prompts_from_dataset(store, "conv")] == list(dict.fromkeys(last_user))
    with pytest.raises(QueueError, match="nope"):
        prompts_from_dataset(store, "nope")


# --- generating ---


def test_generation_stores_each_prompt_with_its_candidates_and_resumes_after_a_cancel(store, tmp_path, engine):
    queue_id, _ = enqueue(store, prompts_from_file(prompts_file(tmp_path)), 2, "Answer in one word.")
    done: list[int] = []
    calls = {"n": 0}

    def stop_inside_the_second_prompt() -> bool:
        # Asked at every token: stop a few tokens into the prompt after the first stored one.
        if done:
            calls["n"] += 1
        return calls["n"] > 2

    generator = QueueGenerator(store, engine, SAMPLING, base_seed=100)
    report = generator.run(should_stop=stop_inside_the_second_prompt, on_item_done=lambda item, pid: done.append(pid))
    assert report.cancelled and report.generated == 1
    counts = store.queue_counts()
    assert (counts.generated, counts.waiting) == (1, 3)  # the second prompt, cut short, stays waiting
    first = store.queue_items()[0]
    assert first.prompt_id == done[0]
    # Resume: a new run goes on with the rest; nothing is generated twice.
    report = QueueGenerator(store, engine, SAMPLING, base_seed=100).run()
    assert not report.cancelled and report.generated == 3
    items = store.queue_items()
    assert all(i.prompt_id is not None for i in items) and len({i.prompt_id for i in items}) == 4
    for item in items:
        candidates = store.candidates(item.prompt_id)
        assert [c.slot for c in candidates] == [0, 1]
        # Each item's seeds depend on its id alone: a split run draws what an uninterrupted one would.
        assert [c.seed for c in candidates] == [100 + (item.id - 1) * 2 + slot for slot in (0, 1)]
        assert item.text in candidates[0].rendered_prompt and "Answer in one word." in candidates[0].rendered_prompt
        assert candidates[0].sampling["max_tokens"] == 4
    prompts = store.db.execute("SELECT session_id, history_json FROM prompts").fetchall()
    assert prompts == [(queue_id, "[]")] * 4  # queued prompts stand alone
    assert QueueGenerator(store, engine, SAMPLING).run().generated == 0


def test_an_item_generated_meanwhile_is_not_stored_twice(store, engine):
    queue_id = store.create_queue("s")
    store.enqueue(queue_id, [("Say hi.", "t #1")], 1)
    (item,) = store.queue_items()
    row = {"text": " hi", "rendered_prompt": "p", "model_id": "m", "model_sha256": "0", "sampling": {}, "seed": 1}
    assert store.store_queue_candidates(item.id, [row]) is not None
    assert store.store_queue_candidates(item.id, [row]) is None
    assert store.db.execute("SELECT COUNT(*) FROM candidates").fetchone() == (1,)


def test_a_prompt_too_long_for_the_context_is_skipped_and_reported_and_the_rest_generates(store, engine):
    queue_id = store.create_queue("s")
    huge = "Summarise this: " + "word " * 3000  # far past the shared engine's 1,024-token context
    store.enqueue(queue_id, [(huge, "t #1"), ("Say hi.", "t #2")], 1)
    report = QueueGenerator(store, engine, SAMPLING).run()
    assert report.generated == 1 and not report.cancelled
    ((item, why),) = report.skipped
    assert item.origin == "t #1" and why
    waiting, done = store.queue_items("waiting"), store.queue_items("unjudged")
    assert [i.origin for i in waiting] == ["t #1"] and [i.origin for i in done] == ["t #2"]


# --- judging ---


@pytest.fixture
def generated(store, engine):
    """Three queues' worth of kinds: one prompt with 1 candidate, two with 2, one with 3, all generated."""
    queue_id = store.create_queue("Answer in one word.")
    store.enqueue(queue_id, [("Name a colour.", "t #1")], 1)
    store.enqueue(queue_id, [("Name a fruit.", "t #2"), ("Name a city.", "t #3")], 2)
    store.enqueue(queue_id, [("Name a river.", "t #4")], 3)
    assert QueueGenerator(store, engine, SAMPLING, base_seed=7).run().generated == 4
    return store


def test_every_verdict_of_the_queue_is_one_judgement_without_turns(generated):
    store, judge = generated, QueueJudge(generated)
    one, ab, ab2, three = next_entries(store, limit=4)
    assert [len(e.candidates) for e in (one, ab, ab2, three)] == [1, 2, 2, 3]
    judge.label(one, good=True)
    judge.prefer(ab, 1)
    judge.all_bad(ab2)
    judge.rank(three, [2, 0])  # partial: slot 1 ties last
    verdicts = [(j.prompt_id, j.verdict, j.source) for j in store.judgements()]
    assert verdicts == [(one.prompt_id, "good", "queue"), (ab.prompt_id, "b", "queue"),
                        (ab2.prompt_id, "both_bad", "queue"), (three.prompt_id, "ranked", "queue")]
    pairs = {p.pair_id: (p.chosen, p.rejected) for p in store.pairs()}
    ids = [c.id for c in three.candidates]
    texts = [c.text for c in three.candidates]
    ranking = {k: v for k, v in pairs.items() if k.startswith("r")}
    assert sorted(ranking.values()) == sorted([(texts[2], texts[0]), (texts[2], texts[1]), (texts[0], texts[1])])
    assert store.rankings(three.prompt_id)[0].order[:2] == [ids[2], ids[0]]
    assert pairs[f"j{store.judgements()[1].id}"] == (ab.candidates[1].text, ab.candidates[0].text)
    assert store.db.execute("SELECT COUNT(*) FROM turns").fetchone() == (0,)
    counts = store.queue_counts()
    assert (counts.judged, counts.to_judge) == (4, 0) and next_entries(store) == []


def test_progress_line_and_rate():
    clock = {"now": 0.0}
    meter = RateMeter(window_s=60, clock=lambda: clock["now"])
    assert meter.per_minute() is None
    for _ in range(3):
        clock["now"] += 10
        meter.tick()
    assert meter.per_minute() == pytest.approx(6.0)  # 3 items in 30 s
    clock["now"] += 200  # a long break: the old items leave the window
    assert meter.per_minute() is None
    from store.labelling_queue import QueueCounts

    line = progress_line(QueueCounts(total=10, generated=4, judged=1), 6.0, None)
    assert line == "generated 4/10 (6 left), 6.0/min · judged 1/10 (9 left)"


# --- the CLI ---


def test_cli_queue_add_generates_status_reports_and_a_bad_file_is_named(tmp_path, default_model):
    home, db = tmp_path / "home", tmp_path / "studio.db"
    base = ["--db", str(db), "--model", str(default_model), "--seed", "3"]
    added = run_cli(*base, "queue", "add", "--prompts", str(prompts_file(tmp_path, PROMPTS[:2])), "-n", "2",
                    "--max-tokens", "4", "--system", "Be brief.", home=home, check=True)
    assert "queued 2 prompt(s) with 2 candidate(s) each in queue 1" in added.stdout
    assert "generated 2 prompt(s); generated 2/2 (0 left)" in added.stdout
    status = run_cli(*base, "queue", "status", home=home, check=True)
    assert status.stdout.startswith("queue 1: generated 2/2 (0 left) · judged 0/2 (2 left) · system: Be brief.")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{nope\n', encoding="utf-8")
    refused = run_cli(*base, "queue", "add", "--prompts", str(bad), home=home)
    assert refused.returncode == 1 and "bad.jsonl line 2 is not valid JSON" in refused.stderr
    assert "Traceback" not in refused.stderr
    nothing = run_cli(*base, "queue", "add", home=home)
    assert nothing.returncode == 1 and "--prompts FILE, --bank NAME or --dataset NAME" in nothing.stderr
    with Store.open(db) as store:
        assert store.queue_counts().total == 2


def test_cli_queue_add_from_a_bank_and_a_dataset_without_generating(tmp_path):
    home, db = tmp_path / "home", tmp_path / "studio.db"
    with Store.open(db) as store:
        import_dataset(store, DATASETS / "trl_standard.jsonl", name="std")
    bank = find_bank("")
    added = run_cli("--db", str(db), "queue", "add", "--bank", bank.path.stem, "--dataset", "std", "-n", "3",
                    "--no-generate", home=home, check=True)
    expected = len(set(bank.prompts)) + len(prompts_from_dataset_file(DATASETS / "trl_standard.jsonl"))
    assert f"queued {expected} prompt(s) with 3 candidate(s) each in queue 1" in added.stdout
    status = run_cli("--db", str(db), "queue", "status", home=home, check=True)
    assert status.stdout.startswith(f"queue 1: generated 0/{expected} ({expected} left)")
    unknown = run_cli("--db", str(db), "queue", "add", "--dataset", "nope", "--no-generate", home=home)
    assert unknown.returncode == 1 and "nope" in unknown.stderr and "Traceback" not in unknown.stderr


def prompts_from_dataset_file(path: Path) -> list[str]:
    return list(dict.fromkeys(json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()))


def _waiting_and_generated(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT COUNT(*) - COUNT(prompt_id), COUNT(prompt_id) FROM queue_items").fetchone()
    conn.close()
    return row


def _start(args: list[str], home: Path) -> subprocess.Popen:
    env = dict(os.environ, PREFSTUDIO_HOME=str(home))
    return subprocess.Popen([prefstudio_bin(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def _wait_until_generated(proc: subprocess.Popen, db: Path, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                if _waiting_and_generated(db)[1] >= at_least:
                    return
            except sqlite3.OperationalError:  # the table is being created
                pass
        time.sleep(0.05)
    raise AssertionError(f"nothing generated in time: {proc.poll()}")


def test_ctrl_c_stops_generation_keeps_what_was_generated_and_generate_resumes(tmp_path, default_model):
    home, db = tmp_path / "home", tmp_path / "studio.db"
    base = ["--db", str(db), "--model", str(default_model), "--seed", "3"]
    many = [f"Count to {n}." for n in range(1, 13)]
    run_cli(*base, "queue", "add", "--prompts", str(prompts_file(tmp_path, many)), "-n", "2", "--no-generate",
            home=home, check=True)
    proc = _start([*base, "queue", "generate", "--max-tokens", "24"], home)
    _wait_until_generated(proc, db, 1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "what was generated is stored; `prefstudio queue generate` goes on with the rest" in err
    assert "Traceback" not in err
    waiting, generated = _waiting_and_generated(db)
    assert generated >= 1 and waiting >= 1, (waiting, generated)
    with Store.open(db) as store:  # every generated item has both its candidates
        for item in store.queue_items():
            assert item.prompt_id is None or len(store.candidates(item.prompt_id)) == 2
    resumed = run_cli(*base, "queue", "generate", "--max-tokens", "4", home=home, check=True)
    assert f"generated {waiting} prompt(s); generated 12/12 (0 left)" in resumed.stdout


# argv: db, model. Generates the whole queue, dying (SIGKILL) exactly between an item's commit and the next write.
KILL_DRIVER = r"""
import os, signal, sys
from pathlib import Path

from studio.inference import runtime_env  # noqa: F401
from store.studio_store import Store
from studio.inference.engine import ChatEngine, EngineConfig, SamplingSettings
from studio.labelling_queue import QueueGenerator

db, model, mode = sys.argv[1], sys.argv[2], sys.argv[3]
store = Store.open(Path(db))
engine = ChatEngine(EngineConfig(model_path=Path(model), n_ctx=512))
seen = {"updates": 0, "committed": False}


def trace(sql: str) -> None:
    # SQLite reports each statement as it starts. "before-commit": die as the second item's COMMIT starts (its
    # transaction must then be lost whole); "after-commit": die at the first statement after that COMMIT.
    text = sql.strip().lower()
    if seen["committed"]:
        os.kill(os.getpid(), signal.SIGKILL)
    if text.startswith("update queue_items"):
        seen["updates"] += 1
    elif seen["updates"] == 2 and text.startswith("commit"):
        if mode == "before-commit":
            os.kill(os.getpid(), signal.SIGKILL)
        seen["committed"] = True


store.db.conn.set_trace_callback(trace)
QueueGenerator(store, engine, SamplingSettings(max_tokens=4), base_seed=1).run(
    on_item_done=lambda item, prompt_id: print("ack", item.id, flush=True))
print("not killed", flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("mode", ["before-commit", "after-commit"])
def test_kill_during_queue_generation_loses_no_committed_item_and_keeps_no_half_one(tmp_path, default_model, mode):
    db = tmp_path / "studio.db"
    with Store.open(db) as store:
        queue_id = store.create_queue("Answer in one word.")
        store.enqueue(queue_id, [(text, f"t #{n}") for n, text in enumerate(PROMPTS, start=1)], 3)
    env = dict(os.environ, PREFSTUDIO_HOME=str(tmp_path / "home"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    child = subprocess.run([sys.executable, "-c", KILL_DRIVER, str(db), str(default_model), mode],
                           capture_output=True, text=True, env=env, timeout=180)
    assert child.returncode == -signal.SIGKILL, (child.returncode, child.stdout, child.stderr[-3000:])
    acknowledged = [int(line.split()[1]) for line in child.stdout.splitlines() if line.startswith("ack ")]
    # Killed inside the second item's transaction (only the first acknowledged) or right after its commit.
    assert len(acknowledged) == (1 if mode == "before-commit" else 2)
    with Store.open(db) as store:
        assert integrity_ok(store.db)
        items = store.queue_items()
        generated = [i for i in items if i.prompt_id is not None]
        assert set(acknowledged) <= {i.id for i in generated}
        assert len(generated) == (1 if mode == "before-commit" else 2)
        for item in generated:
            assert len(store.candidates(item.prompt_id)) == 3
        # No prompt without its queue item, no candidates of a prompt that is not there.
        assert store.db.execute("SELECT COUNT(*) FROM prompts").fetchone() == (len(generated),)
        assert store.db.execute("SELECT COUNT(*) FROM candidates").fetchone() == (3 * len(generated),)
        # The next run goes on with the rest.
        assert store.queue_counts().waiting == len(PROMPTS) - len(generated)
