"""The studio's RLOO trainer (trainers/rloo_passes.py) computes TRL's RLOO advantages, loss and gradients, with
less work per step: two passes instead of three, each prompt once for its replies."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_probe import run_probe

PROBE = Path(__file__).resolve().parent / "rloo_loss_probe.py"


@pytest.fixture(scope="module")
def probe() -> dict:
    return run_probe(PROBE)


def test_studio_rloo_advantages_loss_and_gradients_equal_trls(probe: dict) -> None:
    assert probe["same_completions"]  # the same replies were sampled, so what follows compares the scoring
    assert probe["studio_kl"] == pytest.approx(probe["plain_kl"], rel=1e-4)
    assert probe["plain_kl"] > 1e-4  # the LoRA starts away from the reference: the KL penalty is real
    assert probe["max_advantage"] > 0.1
    assert probe["max_advantage_diff"] <= 1e-5 * max(1.0, probe["max_advantage"])
    assert probe["studio_loss"] == pytest.approx(probe["plain_loss"], rel=1e-4, abs=1e-6)
    assert probe["same_grad_names"]
    assert probe["max_grad"] > 1e-3
    assert probe["max_grad_diff"] <= 1e-5 * max(1.0, probe["max_grad"])


def test_studio_rloo_scores_replies_only_and_skips_unread_statistics(probe: dict) -> None:
    assert probe["cpu_compact"]  # prompt and padding positions are not projected through the vocabulary
    # One step, two passes where TRL runs three: the policy with gradient (its detached log-probs are the KL's
    # and the ratio's start, its graph the loss's; its entropy a metric), then the reference without gradient,
    # log-probabilities only. The loss reuses the first pass through TRL's shuffle.
    assert probe["head_calls"] == [
        [True, ["log_probs", "entropy"]],
        [False, ["log_probs"]],
    ]
    assert probe["studio_reused"] and not probe["plain_reused"]
    # Each prompt once for its group's four replies: fewer tokens than TRL's padded rows, in both passes.
    assert probe["studio_shares_prompt"]
    assert probe["plain_scoring_tokens"] == [probe["batch_tokens"]] * 2
    assert all(n < probe["batch_tokens"] for n in probe["studio_scoring_tokens"])
    assert probe["studio_entropy"] == pytest.approx(probe["plain_entropy"], rel=1e-4)


def test_the_reward_callable_runs_under_the_runs_autocast(probe: dict) -> None:
    # TRL scores a reward *model* it is given under the accelerator's autocast; the studio's reward callable
    # (around its reward model) gets the same precision. TRL calls a plain callable outside it.
    assert probe["reward_autocast"] == {
        "plain_fp32": ["off"], "plain_bf16": ["off"], "studio_fp32": ["off"], "studio_bf16": ["torch.bfloat16"]}


def test_the_rloo_method_trains_with_the_studio_trainer_for_either_rollouts() -> None:
    from trainers.methods.rloo import rloo_trainer_class
    from trainers.rloo_passes import StudioRLOOTrainer
    from trainers.run_config import RunConfig

    assert rloo_trainer_class(RunConfig(method="rloo", rollouts="transformers")) is StudioRLOOTrainer
    assert issubclass(rloo_trainer_class(RunConfig(method="rloo", rollouts="llama")), StudioRLOOTrainer)
