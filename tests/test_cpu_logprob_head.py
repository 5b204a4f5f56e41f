"""The CPU LM head gives TRL's numbers (log-probs, metrics' statistics, gradients), and the reference pass of a DPO
step asks it for log-probabilities alone."""

from __future__ import annotations

import pytest
import torch
from trl.kernels import ChunkedLogProbFunction as TRLFunction

import trainers  # noqa: F401  (HF offline env)
from trainers.cpu_logprob_head import cpu_logprob_function, enable_cpu_logprob_head, log_probs_only

ALL = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def head_outputs(function: type, autocast: bool, softcap: float | None, temperature: float, scale: float,
                 outputs: tuple[str, ...] = ALL) -> tuple[list[torch.Tensor | None], list[torch.Tensor]]:
    """Outputs and the gradients of (hidden, weight, bias) for one seeded problem; several vocabulary tiles."""
    torch.manual_seed(0)
    weight = (torch.randn(1000, 16) * 0.5).requires_grad_()
    bias = torch.randn(1000).requires_grad_()
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 1000, (37,))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = function.apply(hidden, weight, bias, targets, temperature, 128, softcap, scale, outputs)
    loss = out[0].sum() * 2 + (out[1].sum() if out[1] is not None else 0)
    loss.backward()
    return list(out), [hidden.grad, weight.grad, bias.grad]


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize(("softcap", "temperature", "scale"), [(None, 1.0, 1.0), (30.0, 0.7, 1.3)],
                         ids=["plain", "softcap-temperature-scale"])
def test_the_cpu_head_gives_trls_outputs_and_gradients(autocast: bool, softcap: float | None, temperature: float,
                                                       scale: float) -> None:
    expected, expected_grads = head_outputs(TRLFunction, autocast, softcap, temperature, scale)
    got, got_grads = head_outputs(cpu_logprob_function(), autocast, softcap, temperature, scale)

    for name, want, have in zip(ALL, expected, got, strict=True):
        if name == "is_top1":
            assert torch.equal(have, want)
        else:
            torch.testing.assert_close(have, want, atol=2e-5, rtol=1e-5, msg=name)
    for name, want, have in zip(("hidden", "weight", "bias"), expected_grads, got_grads, strict=True):
        torch.testing.assert_close(have, want, atol=1e-4, rtol=1e-4, msg=name)


def test_top1_is_the_first_index_of_a_tied_maximum_across_tiles() -> None:
    hidden = torch.ones(2, 1)
    weight = torch.zeros(300, 1)
    weight[10] = weight[200] = 5.0  # the row's maximum twice, in the first and the second tile
    targets = torch.tensor([10, 200])
    got = cpu_logprob_function().apply(hidden, weight, None, targets, 1.0, 128, None, 1.0, ALL)
    expected = TRLFunction.apply(hidden, weight, None, targets, 1.0, 128, None, 1.0, ALL)
    assert got[4].tolist() == expected[4].tolist() == [True, False]


def test_log_probs_only_skips_the_metrics_statistics_and_keeps_the_log_probs() -> None:
    assert enable_cpu_logprob_head()
    import trl.trainer.utils as trl_utils

    hidden, weight, targets = torch.randn(5, 8), torch.randn(300, 8), torch.randint(0, 300, (5,))
    full = trl_utils._ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, 128, None, 1.0, ALL)
    with log_probs_only():
        lean = trl_utils._ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, 128, None, 1.0, ALL)

    assert all(value is None for value in lean[1:])
    assert all(value is not None for value in full)
    torch.testing.assert_close(lean[0], full[0])


def test_a_dpo_steps_reference_pass_asks_for_log_probs_only(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import trl.trainer.utils as trl_utils
    from datasets import Dataset

    import trainers.cpu_logprob_head as head
    from tests.tiny_model import SEPARABLE_PAIRS, build_tiny_model
    from trainers.methods.dpo import METHOD, lora_config
    from trainers.model_source import load_model, load_tokenizer
    from trainers.run_config import RunConfig

    assert enable_cpu_logprob_head()
    calls: list[tuple[bool, bool]] = []  # (grad enabled, log-probs only) per LM-head call
    routed = trl_utils._ChunkedLogProbFunction

    class Recorder:
        @staticmethod
        def apply(*args):  # noqa: ANN002, ANN205
            calls.append((torch.is_grad_enabled(), head._log_probs_only.get()))
            return routed.apply(*args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Recorder)
    model_dir = build_tiny_model(tmp_path / "model")
    config = RunConfig(batch_size=2, max_steps=1, dtype="fp32", lora_r=4)
    args = METHOD.trainer_args(config, tmp_path / "work", "cpu", "fp32", False, 128)
    rows = [{"prompt": f"User: {p}\nAssistant:", "chosen": " " + c, "rejected": " " + r}
            for p, c, r in SEPARABLE_PAIRS[:2]]
    trainer = METHOD.trainer_class()(model=load_model(model_dir, device="cpu"), args=args,
                                     train_dataset=Dataset.from_list(rows), processing_class=load_tokenizer(model_dir),
                                     peft_config=lora_config(config))
    trainer.train()

    assert sorted(set(calls)) == [(False, True), (True, False)]  # reference: lean; policy: every statistic
