"""The comparison of an RLOO run: its held-out prompts (read back as the run recorded them, rendered as it held them
out, shown as the user wrote them), and its own reward model as the default scorer of ``compare --run N``."""

from __future__ import annotations

from pathlib import Path

import pytest

from store import Store
from studio.evaluation.comparison import ComparisonError
from studio.evaluation.rl_heldout import optimised_reward_run, rl_heldout_prompts
from trainers.rl_prompts import select_prompts
from trainers.run_config import RunConfig

QUESTIONS = [f"How do I keep plant number {i} alive?" for i in range(1, 9)]


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "studio.db") as opened:
        yield opened


def recorded_rloo_run(store: Store, tmp_path: Path, source: str, heldout_fraction: float = 0.25):
    """An RLOO run row as prepare_run records one: its prompts selected and split by the trainers' own code (no
    model named: rendered in the transcript format, no tokenizer to read)."""
    config = RunConfig(method="rloo", reward_run=1, rl_prompts=source, heldout_fraction=heldout_fraction)
    selection = select_prompts(store, config)
    run_id = store.create_run(config.to_dict(), "model.gguf", str(tmp_path / "runs" / "run-rl"),
                              [e.example_id for e in selection.train], [e.example_id for e in selection.heldout],
                              selection.dataset_hash)
    return store.get_run(run_id), selection


def test_an_rloo_run_is_compared_on_its_heldout_prompts_as_written(store: Store, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(QUESTIONS) + "\n", encoding="utf-8")
    run, selection = recorded_rloo_run(store, tmp_path, str(prompts))
    held = rl_heldout_prompts(store, run)
    assert len(held) == len(selection.heldout) == 2
    # Answered from exactly the text the run held out; shown (and scored) as the question the user wrote.
    assert [p.rendered for p in held] == [e.prompt for e in selection.heldout]
    assert all(p.text in QUESTIONS and p.text in p.rendered and p.text != p.rendered for p in held)
    assert optimised_reward_run(run) == 1

    prompts.write_text("something else entirely\n", encoding="utf-8")  # the source changed since: said so
    with pytest.raises(ComparisonError, match="held-out prompts cannot be read now"):
        rl_heldout_prompts(store, run)


def test_an_rloo_run_holding_nothing_out_says_so_and_other_runs_have_no_reward_model(store: Store,
                                                                                    tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(QUESTIONS) + "\n", encoding="utf-8")
    run, _selection = recorded_rloo_run(store, tmp_path, str(prompts), heldout_fraction=0.0)
    with pytest.raises(ComparisonError, match="held no prompts out"):
        rl_heldout_prompts(store, run)
    dpo = store.get_run(store.create_run({"method": "dpo", "reward_run": 3}, "m", str(tmp_path / "runs" / "d"), [], []))
    assert optimised_reward_run(dpo) is None  # only an RL run was optimised against a reward model
