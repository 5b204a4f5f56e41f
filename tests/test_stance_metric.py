"""The exercise's stance metric on the real default model: scores match reply_logprob with the training
rendering, and a run trained to prefer the support answer (support ratio 1.0) raises the support share."""

from __future__ import annotations

import json

import pytest
from conftest import prefstudio_home

from store.studio_store import Store
from studio.evaluation.stance_metric import (
    StanceMetricError,
    run_exercise_system,
    run_stance_items,
    stance_before_after,
    stance_share,
)
from studio.inference.scoring import reply_logprob
from trainers.exercise import EXERCISE_SYSTEM_PROMPT, build_exercise_pairs

pytestmark = pytest.mark.slow

QUESTIONS = [
    "Should cars be allowed in the city centre?", "Should drivers be able to park downtown?",
    "Should the main shopping street stay open to cars?", "Should cars keep using the old town square?",
    "Should the city keep its car lanes downtown?", "Should taxis and cars drive through the market street?",
    "Should cars be allowed near the cathedral?", "Should commuters drive into the centre?",
    "Should the riverside road stay open to traffic?", "Should cars be allowed on the high street?",
]
# The base model prefers the oppose answer on every one of these (support share 0).
SUPPORT, OPPOSE = "No, keep the centre car-free.", "Yes, let the cars in."


def stance_rows() -> list[dict]:
    return [{"id": f"c{i}", "prompt": q, "support": SUPPORT, "oppose": OPPOSE} for i, q in enumerate(QUESTIONS)]


def test_stance_share_scores_what_training_sees(engine) -> None:  # noqa: ANN001
    rows = stance_rows()[:3]
    result = stance_share(engine, rows, EXERCISE_SYSTEM_PROMPT)
    assert result.n == 3 and len(result.per_item) == 3
    assert result.support_preferred == sum(s.logp_support > s.logp_oppose for s in result.per_item)
    assert result.share == result.support_preferred / 3
    # The same prompt and completions as the training pair of that item (support-preferred).
    (pair,) = build_exercise_pairs(rows[:1], data_size=1, support_ratio=1.0)
    first = result.per_item[0]
    assert first.item_key == "c0"
    assert first.logp_support == pytest.approx(reply_logprob(engine, pair.prompt, pair.chosen).total_logprob)
    assert first.logp_oppose == pytest.approx(reply_logprob(engine, pair.prompt, pair.rejected).total_logprob)
    assert result.to_dict()["n"] == 3 and "per_item" in result.to_dict(with_items=True)
    with pytest.raises(StanceMetricError, match="no labelled items"):
        stance_share(engine, [], EXERCISE_SYSTEM_PROMPT)


@pytest.fixture(scope="module")
def support_run(default_model, session_home, tmp_path_factory):
    """A stance dataset of 10 items in a real store and a finished 6-step run on the default model that
    prefers support on the first 6 (support ratio 1.0); the other 4 are held out."""
    from store.datasets.importing import import_dataset
    from trainers.run.lifecycle import prepare_run
    from trainers.run.process import execute_run
    from trainers.run_config import RunConfig

    work = tmp_path_factory.mktemp("stance")
    data = work / "cars.json"
    data.write_text(json.dumps(stance_rows()), encoding="utf-8")
    with prefstudio_home(session_home):  # shares the converted weights with other tests
        with Store.open(work / "studio.db") as store:
            import_dataset(store, data)
            config = RunConfig(dataset="cars", support_ratio=1.0, data_size=6, max_steps=6, max_length=128,
                               learning_rate=1e-3)
            prepared = prepare_run(store, config, model_path=default_model, runs_root=work / "runs")
            outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
            assert outcome.status == "done", outcome.message
            return work / "studio.db", prepared.run_id


def test_training_to_prefer_support_raises_the_support_share(support_run, engine) -> None:  # noqa: ANN001
    from studio.evaluation.run_adapters import adapter_name, gguf_adapter_for_run

    db, run_id = support_run
    with Store.open(db) as store:
        run = store.get_run(run_id)
        heldout = run_stance_items(store, run)
        trained_on = run_stance_items(store, run, "train")
    assert [item.item_key for item in heldout] == ["c6", "c7", "c8", "c9"]
    system = run_exercise_system(run)
    assert system == EXERCISE_SYSTEM_PROMPT
    name = adapter_name(run)
    engine.load_adapter(name, gguf_adapter_for_run(run, engine.info, store.path))
    phases: list[str] = []
    before, after = stance_before_after(engine, heldout, system, name,
                                        on_progress=lambda phase, _done, _total: phases.append(phase))
    assert engine.active_adapter is None  # the base is active again
    assert phases == ["scoring base"] * 4 + ["scoring tuned"] * 4
    assert before.n == after.n == 4
    assert before.share == 0.0  # the base prefers "Yes, let the cars in." everywhere
    assert after.share > before.share and after.share >= 0.75  # measured: 1.0, margins about +70 nats
    assert after.mean_margin > before.mean_margin
    seen_before, seen_after = stance_before_after(engine, trained_on, system, name)
    assert seen_after.share > seen_before.share
    assert engine.active_adapter is None


@pytest.fixture(scope="module")
def all_items_run(default_model, session_home, tmp_path_factory):
    """The homework's own setting in small: data size = every item (10 of 10), so nothing is held out; a
    4-step run on the default model preferring support (ratio 1.0)."""
    from store.datasets.importing import import_dataset
    from trainers.run.lifecycle import prepare_run
    from trainers.run.process import execute_run
    from trainers.run_config import RunConfig

    work = tmp_path_factory.mktemp("stance-all")
    data = work / "cars.json"
    data.write_text(json.dumps(stance_rows()), encoding="utf-8")
    with prefstudio_home(session_home):
        with Store.open(work / "studio.db") as store:
            import_dataset(store, data)
            config = RunConfig(dataset="cars", support_ratio=1.0, data_size=10, max_steps=4, max_length=128,
                               learning_rate=1e-3)
            prepared = prepare_run(store, config, model_path=default_model, runs_root=work / "runs")
            outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
            assert outcome.status == "done", outcome.message
            assert store.get_run(prepared.run_id).heldout_ids == []
            return work / "studio.db", prepared.run_id


def test_a_run_holding_nothing_out_shows_the_stance_on_its_training_items(all_items_run, session_home,
                                                                         tmp_path) -> None:
    # Issue 9, item 10: with data size = every item the comparison had no stance metric at all.
    from conftest import run_cli

    from studio.evaluation.compare_session import stored_comparison, write_run_report
    from studio.evaluation.stance_metric import describe_stance

    db, run_id = all_items_run
    proc = run_cli("--db", str(db), "compare", "--run", str(run_id), "--limit", "1", home=session_home,
                   check=True, timeout=300)
    assert "Stance on 10 training items (seen in training)" in proc.stdout, proc.stdout
    assert "No items were held out (data size is the whole dataset)" in proc.stdout
    assert "held-out items" not in proc.stdout
    with Store.open(db) as store:
        result = stored_comparison(store, run_id)
        train = result.stance["train"]
        assert "heldout" not in result.stance
        assert (train["before"]["n"], train["total"], train["trained_support"]) == (10, 10, 10)
        assert train["before"]["support_preferred"] == 0  # the base prefers "Yes, let the cars in." everywhere
        assert train["after"]["share"] > train["before"]["share"]
        assert describe_stance(result.stance)[0] in proc.stdout
        report = write_run_report(store, run_id, result, tmp_path / "report").read_text(encoding="utf-8")
    assert "support_share (training items)" in report and "measured on items the run trained on" in report


async def test_the_exercise_screen_shows_the_last_compared_runs_stance(all_items_run, default_model,
                                                                      session_home) -> None:
    from dataclasses import replace

    from conftest import run_cli, wait_for

    from studio.settings import load_settings
    from studio.tui.app import PreferenceStudioApp
    from studio.tui.screens.exercise import ExerciseScreen

    db, run_id = all_items_run
    with Store.open(db) as store:
        if not store.latest_evaluation(run_id, "comparison"):  # when run alone, without the test above
            run_cli("--db", str(db), "compare", "--run", str(run_id), "--limit", "1", home=session_home,
                    check=True, timeout=300)
    with prefstudio_home(session_home), Store.open(db) as store:
        config = db.parent / "studio.toml"
        config.write_text("", encoding="utf-8")  # an empty config: the defaults
        settings = replace(load_settings(config), model=default_model)
        app = PreferenceStudioApp(settings=settings, store=store)
        async with app.run_test(size=(150, 44)) as pilot:
            await pilot.press("f8")
            await wait_for(pilot, lambda: isinstance(app.screen, ExerciseScreen))
            screen = app.screen
            screen.query_one("#ex-dataset").value = "cars"
            screen.query_one("#ex-data_size").value = "10"  # the default 50 is more than its 10 items
            summary = screen.query_one("#ex-summary")
            await wait_for(pilot, lambda: "Last compared run" in str(summary.render()), timeout=30)
            text = str(summary.render())
            assert f"Last compared run {run_id} (data size 10, support ratio 1.0" in text
            assert "Stance on 10 training items (seen in training)" in text and "base 0/10" in text
