"""The whole loop on the second bundled model, SmolLM2-135M-Instruct (architecture ``llama``, Q4_1, a ChatML
template): chat and judge through the real JudgingSession, train DPO on its own dequantised weights, export the
adapter as a GGUF LoRA for ``llama`` and hot-swap it in llama.cpp, compare, report, and exercise mode with its
prompts rendered in ChatML. One module fixture judges and trains once; the exercise trains its own short run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import prefstudio_home, run_cli
from tiny_model import SEPARABLE_PAIRS

from store.studio_store import Store
from studio.inference.engine import ChatEngine, EngineConfig, SamplingSettings
from studio.inference.model_files import SMOLLM2_SHA256
from trainers.prompt_format import ChatTurn

pytestmark = pytest.mark.slow

SYSTEM = "You are a concise, friendly assistant."
SAMPLING = SamplingSettings(temperature=0.7, max_tokens=24)
CHATML = ("<|im_start|>", "<|im_end|>")
EXERCISES = Path(__file__).resolve().parent.parent / "assets" / "exercises" / "car_free_city_centres"


@dataclass(frozen=True)
class Loop:
    db: Path
    run_id: int
    rendered: list[str]  # the prompts the chat stored, one per judged round


@pytest.fixture(scope="module")
def smollm2_engine(smollm2_model: Path):
    engine = ChatEngine(EngineConfig(model_path=smollm2_model, n_ctx=1024))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def loop(smollm2_engine: ChatEngine, smollm2_model: Path, session_home: Path, tmp_path_factory) -> Loop:
    """Six prompts chatted with SmolLM2 (two real candidates each), each judged by an edit (the user's own
    reply preferred over both candidates: twelve pairs), then four DPO steps on its dequantised weights with a
    quarter of the pairs held out."""
    from studio.judging import JudgingSession
    from trainers.run.lifecycle import prepare_run
    from trainers.run.process import execute_run
    from trainers.run_config import RunConfig

    work = tmp_path_factory.mktemp("smollm2-loop")
    engine = smollm2_engine
    rendered = []
    with prefstudio_home(session_home):  # shares the converted weights with other tests
        with Store.open(work / "studio.db") as store:
            judging = JudgingSession(store, SYSTEM, engine.identity.model_id, sampling=SAMPLING, base_seed=7,
                                     engine=engine, source="test")
            for prompt, chosen, _rejected in SEPARABLE_PAIRS:
                judging.new_session()  # one question per conversation: each stored prompt is one user turn
                round_ = judging.prepare(prompt)
                assert judging.generate(round_) is not None
                judging.store_candidates(round_)
                judging.record(round_, judging.edited(round_, chosen, base=0))
                rendered.append(round_.fitted.text)
            config = RunConfig(max_steps=4, max_length=192, heldout_fraction=0.25, learning_rate=2e-3, seed=3)
            prepared = prepare_run(store, config, model_path=smollm2_model, runs_root=work / "runs")
            outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
            assert outcome.status == "done", outcome.message
    return Loop(work / "studio.db", prepared.run_id, rendered)


def test_chat_stores_chatml_prompts_and_training_uses_them(loop: Loop, smollm2_engine: ChatEngine) -> None:
    for (prompt, _chosen, _rejected), text in zip(SEPARABLE_PAIRS, loop.rendered, strict=True):
        assert text == smollm2_engine.prompt_format.render(SYSTEM, [ChatTurn("user", prompt)])
        assert text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n")
        assert text.endswith("<|im_start|>assistant\n") and "User:" not in text
    with Store.open(loop.db) as store:
        run = store.get_run(loop.run_id)
        pairs = {p.pair_id: p for p in store.pairs()}
        metrics = store.run_metrics(loop.run_id)
        replies = [p.rejected for p in pairs.values()]  # SmolLM2's own candidates
    assert len(pairs) == 12 and len(run.pair_ids) == 9 and len(run.heldout_ids) == 3
    assert {pairs[i].prompt for i in run.pair_ids} <= set(loop.rendered)  # trained on what the engine saw
    assert not any(mark in text for text in replies for mark in CHATML)  # replies stop at <|im_end|>
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert run.model_id == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert run.summary["model"]["kind"] == "gguf" and run.summary["model"]["sha256"] == SMOLLM2_SHA256


def test_adapter_exports_for_llama_and_hot_swaps(loop: Loop, smollm2_engine: ChatEngine) -> None:
    from studio.evaluation.run_adapters import adapter_name, gguf_adapter_for_run
    from studio.inference.adapter_checks import validate_adapter

    engine = smollm2_engine
    with Store.open(loop.db) as store:
        run = store.get_run(loop.run_id)
        path = gguf_adapter_for_run(run, engine.info, store.path)
    assert path.name == "adapter-llama.gguf"
    info = validate_adapter(path, engine.info)
    assert info.architecture == "llama" and info.ranks == (16,) and len(info.adapted) == 4 * 30
    name = adapter_name(run)
    engine.load_adapter(name, path)
    prompt = loop.rendered[0]
    base = engine.generate(prompt, SamplingSettings(temperature=0.0, max_tokens=16), seed=1)
    try:
        engine.activate_adapter(name)
        tuned = engine.generate(prompt, SamplingSettings(temperature=0.0, max_tokens=16), seed=1)
    finally:
        engine.activate_adapter(None)
    assert tuned.adapter == name and base.adapter is None
    assert tuned.text.strip() and not any(mark in tuned.text for mark in CHATML)


def test_compare_and_report(loop: Loop, smollm2_engine: ChatEngine, smollm2_model: Path, tmp_path: Path) -> None:
    from studio.evaluation.compare_session import run_comparison, stored_comparison

    with Store.open(loop.db) as store:
        result = run_comparison(smollm2_engine, store, loop.run_id, system=SYSTEM, sampling=SAMPLING, limit=2)
        assert stored_comparison(store, loop.run_id) is not None
    assert smollm2_engine.active_adapter is None  # the base is served again
    assert result.before is not None and result.after is not None and result.before.n == result.after.n == 3
    # Four steps toward the user's own replies: the held-out chosen replies gain against SmolLM2's own.
    assert result.after.mean_margin > result.before.mean_margin
    assert len(result.rows) == 2
    for row in result.rows:
        assert row.rendered_prompt.startswith("<|im_start|>system\n")
        for answer in (row.base_text, row.tuned_text):
            assert answer.strip() and not any(mark in answer for mark in CHATML)

    out = tmp_path / "report"
    proc = run_cli("--db", str(loop.db), "--model", str(smollm2_model), "report", "--run", str(loop.run_id),
                   "--out", str(out), home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in markdown and (out / "report.html").stat().st_size > 1000
    assert result.rows[0].prompt in markdown


def test_exercise_renders_chatml_and_scores_the_stance_with_it(smollm2_engine: ChatEngine, smollm2_model: Path,
                                                               session_home: Path, tmp_path: Path) -> None:
    from store.datasets.importing import import_dataset
    from studio.evaluation.run_adapters import adapter_name, gguf_adapter_for_run
    from studio.evaluation.stance_metric import run_stance_metrics, stance_share
    from studio.inference.scoring import reply_logprob
    from trainers.exercise import EXERCISE_SYSTEM_PROMPT
    from trainers.prompt_format import TranscriptFormat
    from trainers.run.lifecycle import prepare_run
    from trainers.run.process import execute_run
    from trainers.run_config import RunConfig

    engine = smollm2_engine
    # The bundled exercise cut to its first 10 items: 4 train, 6 held out (its 60 would score 56 held-out items
    # twice each, which says nothing more about the prompt format than 6 do).
    rows = json.loads((EXERCISES / "train.json").read_text(encoding="utf-8"))[:10]
    exercise = tmp_path / EXERCISES.name
    exercise.mkdir()
    (exercise / "train.json").write_text(json.dumps(rows), encoding="utf-8")
    (exercise / "test.json").write_bytes((EXERCISES / "test.json").read_bytes())
    items = {str(row["id"]): row for row in rows}
    with prefstudio_home(session_home), Store.open(tmp_path / "studio.db") as store:
        name = import_dataset(store, exercise).name
        config = RunConfig(dataset=name, support_ratio=1.0, data_size=4, max_steps=2, max_length=192,
                           learning_rate=2e-3)
        prepared = prepare_run(store, config, model_path=smollm2_model, runs_root=tmp_path / "runs")
        first = prepared.selection.train[0]
        item = items[first.pair_id.removeprefix("stance:")]
        question = item["prompt"]
        assert first.prompt == engine.prompt_format.render(EXERCISE_SYSTEM_PROMPT, [ChatTurn("user", question)])
        assert first.prompt.startswith(f"<|im_start|>system\n{EXERCISE_SYSTEM_PROMPT}<|im_end|>\n")
        assert "User:" not in first.prompt and first.chosen == first.chosen.strip()  # ChatML's completion
        assert prepared.selection.report.dataset["prompt_format"] == "chat_template"
        outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
        assert outcome.status == "done", outcome.message

        run = store.get_run(prepared.run_id)
        engine.load_adapter(adapter_name(run), gguf_adapter_for_run(run, engine.info, store.path))
        stance = run_stance_metrics(engine, store, run, EXERCISE_SYSTEM_PROMPT, adapter_name(run))
    assert set(stance) == {"heldout", "train"} and stance["train"]["total"] == 4
    assert stance["train"]["before"]["n"] == 4 and stance["heldout"]["before"]["n"] == 6
    # The stance is scored in the serving engine's ChatML, exactly the training pair's prompt and completion,
    # not in the transcript format (which gives another number).
    (score,) = stance_share(engine, [item], EXERCISE_SYSTEM_PROMPT).per_item
    assert score.logp_support == pytest.approx(reply_logprob(engine, first.prompt, first.chosen).total_logprob)
    assert score.logp_oppose == pytest.approx(reply_logprob(engine, first.prompt, first.rejected).total_logprob)
    transcript = TranscriptFormat().render(EXERCISE_SYSTEM_PROMPT, [ChatTurn("user", question)])
    as_transcript = reply_logprob(engine, transcript, " " + item["support"].strip()).total_logprob
    assert score.logp_support != pytest.approx(as_transcript, abs=1e-3)
