"""The comparison's mean reward (studio/evaluation/reward_metric.py): a reward model's score of every base and tuned
answer, beside the votes, stored with the comparison, in the CLI's and the report's words. The real default model
and a real reward run trained on it (conftest ``trained_reward_run``)."""

from __future__ import annotations

import pytest
from conftest import run_cli

from store.studio_store import Store
from studio.evaluation.compare_session import (
    EVALUATION_KIND,
    comparison_with_reward,
    run_comparison,
    stored_comparison,
    write_run_report,
)
from studio.evaluation.comparison import ComparisonRow
from studio.evaluation.comparison_result import ComparisonResult
from studio.evaluation.comparison_text import metric_paragraphs, report_columns
from studio.evaluation.reward_metric import RewardMeans, measure_reward, row_conversation
from studio.inference.engine import SamplingSettings
from studio.reward.scorer import open_reward_scorer

SYSTEM = "You are a concise, friendly assistant."
ROWS = [
    ComparisonRow("Say hello.", " Potato potato potato.", " Hello, nice to meet you.", seed=0),
    ComparisonRow("Name a fruit.", " An apple is a fruit.", " Potato potato potato.", seed=1),
]


@pytest.fixture
def store(reward_data):
    with Store.open(reward_data[0]) as store:
        yield store


@pytest.fixture
def scorer(store, reward_data, engine):
    scorer = open_reward_scorer(store, reward_data[1], engine, backend="llama")  # opens at once (no process)
    yield scorer
    scorer.close()


def test_reward_means_in_words():
    reward = RewardMeans(7, base=(0.5, -0.5), tuned=(1.0, -0.25))
    assert (reward.n, reward.base_mean, reward.tuned_mean, reward.tuned_higher) == (2, 0.0, 0.375, 2)
    result = ComparisonResult(run_id=3, prompts_source="a file", rows=ROWS, seed=0, reward=reward)
    assert metric_paragraphs(result) == ["mean reward (reward run 7) on 2 prompt(s): base +0.00 → tuned +0.38 · "
                                         "tuned higher on 2 of 2"]
    columns = report_columns(result)
    assert columns["base"]["mean_reward (run 7)"] == 0.0 and columns["tuned"]["mean_reward (run 7)"] == 0.375
    assert ComparisonResult.from_dict(result.to_dict()).reward == reward
    assert RewardMeans.from_dict({"run_id": 7, "base": [1.0], "tuned": []}) is None  # unreadable: no reward


def test_mean_reward_is_the_reward_models_scores_of_each_side(scorer):
    reward = measure_reward(scorer, ROWS, SYSTEM)
    direct = [scorer.score(row_conversation(SYSTEM, row), [row.base_text, row.tuned_text]) for row in ROWS]
    assert reward.run_id == scorer.run_id
    # llama.cpp's scores move in the third decimal when the prompt comes from its cache (the approximate backend)
    close = {"abs": 0.02}
    assert list(reward.base) == pytest.approx([base for base, _ in direct], **close)
    assert list(reward.tuned) == pytest.approx([tuned for _, tuned in direct], **close)
    assert reward.base_mean == pytest.approx(sum(reward.base) / 2)
    assert reward.tuned_mean == pytest.approx(sum(reward.tuned) / 2)


def test_a_stored_comparison_is_scored_once_stored_and_reported(store, scorer, reward_data, tmp_path):
    run_id = reward_data[1]
    store.save_evaluation(run_id, EVALUATION_KIND, ComparisonResult(run_id, "a file", ROWS, seed=0).to_dict())
    result = comparison_with_reward(store, run_id, scorer, SYSTEM)
    assert result.reward is not None and result.reward.n == 2 and result.reward.run_id == scorer.run_id
    assert stored_comparison(store, run_id).reward == result.reward  # stored with the comparison
    scorer.close()  # a stopped scorer: scoring again would fail, reading the stored numbers does not
    assert comparison_with_reward(store, run_id, scorer, SYSTEM).reward == result.reward

    report = write_run_report(store, run_id, result, tmp_path / "report").read_text(encoding="utf-8")
    assert f"mean_reward (run {run_id})" in report and "trained reward model" in report


def test_run_comparison_scores_both_sides_and_a_failing_scorer_is_a_note(store, scorer, reward_data, engine):
    run_id = reward_data[1]
    # The reward run stands in for a tuned run here: any finished run with an adapter can be compared.
    kwargs = {"system": SYSTEM, "sampling": SamplingSettings(temperature=0.0, max_tokens=8),
              "prompts_from": "bank:values", "limit": 2}
    result = run_comparison(engine, store, run_id, reward_scorer=scorer, **kwargs)
    assert result.reward is not None and result.reward.n == len(result.rows) == 2
    for i, row in enumerate(result.rows):
        assert [result.reward.base[i], result.reward.tuned[i]] == pytest.approx(scorer.score(
            row_conversation(SYSTEM, row), [row.base_text, row.tuned_text]), abs=0.02)
    assert stored_comparison(store, run_id).reward == result.reward

    scorer.close()
    result = run_comparison(engine, store, run_id, reward_scorer=scorer, **kwargs)
    assert result.reward is None and len(result.rows) == 2  # the answers stand
    assert any(f"reward model run {run_id} did not score the answers" in note for note in result.notes)


def test_cli_refuses_a_reward_run_that_cannot_score_before_comparing(reward_data, studio_home):
    db_path, run_id = reward_data
    proc = run_cli("--db", str(db_path), "compare", "--run", str(run_id), "--reward-run", str(run_id + 50),
                   home=studio_home)
    assert proc.returncode == 1 and f"error: there is no run {run_id + 50}" in proc.stderr
    proc = run_cli("--best-of", "5", "models", home=studio_home)
    assert proc.returncode == 1 and "--best-of must be a whole number from 2 to 4" in proc.stderr
    config = db_path.parent / "bad.toml"
    config.write_text("reward_run = 0\n", encoding="utf-8")
    proc = run_cli("--config", str(config), "models", home=studio_home)
    assert proc.returncode == 1 and "reward_run must be a whole number of at least 1" in proc.stderr
    config.write_text('reward_scorer = "gpu"\n', encoding="utf-8")
    proc = run_cli("--config", str(config), "models", home=studio_home)
    assert proc.returncode == 1 and "reward_scorer must be one of torch, torch-fp32, torch-bf16, llama, got 'gpu'" in proc.stderr
