"""The studio's KTO trainer (trainers/kto_passes.py) computes TRL's KTO loss and gradients, with less work per step."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_probe import run_probe

PROBE = Path(__file__).resolve().parent / "kto_loss_probe.py"


@pytest.fixture(scope="module")
def probe() -> dict:
    return run_probe(PROBE)


def test_studio_kto_loss_and_gradients_equal_trls(probe: dict) -> None:
    assert probe["studio_loss"] == pytest.approx(probe["plain_loss"], rel=1e-5, abs=1e-7)
    assert probe["plain_loss"] != pytest.approx(0.5)  # the policy differs from the reference: a real KL and ratios
    assert probe["same_grad_names"]
    assert probe["max_grad_diff"] <= 1e-5 * max(1.0, probe["max_grad"])


def test_studio_kto_scores_replies_only_and_skips_unread_statistics(probe: dict) -> None:
    assert probe["cpu_compact"]  # prompt and padding positions are not projected through the vocabulary
    # One step: the KL pass, the policy pass (with gradient, its entropy and mean logit feed the metrics), then the
    # reference on the KL batch and on the batch; the three gradient-free passes compute log-probabilities only.
    assert probe["head_calls"] == [
        [False, ["log_probs"]],
        [True, ["log_probs", "entropy", "mean_logits"]],
        [False, ["log_probs"]],
        [False, ["log_probs"]],
    ]


def test_the_kto_method_trains_with_the_studio_trainer() -> None:
    from trainers.kto_passes import StudioKTOTrainer
    from trainers.methods.kto import METHOD

    assert METHOD.trainer_class() is StudioKTOTrainer
