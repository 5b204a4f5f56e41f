"""An RLOO run's report: reward, spread and KL by step (TRL RLOOTrainer's logged keys), the final values, and the
held-out mean reward the trainer measured before and after."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from store import Store
from studio.evaluation.comparison import BlindTally
from studio.evaluation.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "studio.db") as opened:
        yield opened


def png_height(path: Path) -> int:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    return struct.unpack(">I", data[20:24])[0]  # IHDR: width, then height


def rloo_run(store: Store, tmp_path: Path, reward_run: int = 1):
    run_id = store.create_run({"method": "rloo", "reward_run": reward_run, "beta": 0.05}, "gemma-3-270m.gguf",
                              str(tmp_path / "runs" / "run-rloo"), pair_ids=["p1", "p2"], heldout_ids=["p3"])
    for step in range(1, 6):
        store.add_run_metrics(run_id, step, None, {"loss": 0.0, "reward": -1.0 + 0.3 * step, "reward_std": 0.5,
                                                   "kl": 0.002 * step, "entropy": 2.1,
                                                   "completions/mean_length": 40.0})
    store.set_run_summary(run_id, {"steps": 5, "heldout": {"before": {"reward": -0.9, "length": 44.0},
                                                           "after": {"reward": -0.1, "length": 38.5}}})
    store.set_run_status(run_id, "done")
    return store.get_run(run_id)


def test_an_rloo_report_plots_reward_and_kl_and_gives_the_heldout_reward(store: Store, tmp_path: Path) -> None:
    run = rloo_run(store, tmp_path)
    out = tmp_path / "report"
    md = write_report(out, run, store.run_metrics(run.id), {}, BlindTally(wins=3, ties=1, losses=1), []
                      ).read_text(encoding="utf-8")
    for expected in ("![RLOO loss per step](loss.png)", "![mean reward and KL to the start per step](margins.png)",
                     "| final mean reward | 0.5 |", "| final KL | 0.01 |", "| final reply length (tokens) | 40 |",
                     "| held-out reward: before → after (trainer) | -0.9 → -0.1 |", "| tuned wins | 3 |"):
        assert expected in md, expected
    assert "final reward margin" not in md
    # Three panels (reward, spread, KL), each as tall as a panel of the DPO chart's two.
    dpo = tmp_path / "dpo-report"
    dpo_run_id = store.create_run({"method": "dpo"}, "m", str(tmp_path / "runs" / "run-dpo"), [], [])
    store.set_run_status(dpo_run_id, "done")
    write_report(dpo, store.get_run(dpo_run_id), [], {}, None, [])
    assert png_height(out / "margins.png") * 2 == png_height(dpo / "margins.png") * 3
