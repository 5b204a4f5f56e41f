"""Run in a fresh process by tests/test_rloo_passes.py: TRL's RLOOTrainer and the studio's on the same batch.

TRL's must run before the studio's CPU speed-ups are installed (they patch TRL's module for the whole process),
so the comparison is made here, not in the test process. Both sample the same completions (same seed; sampling
does not go through the patched head), then score and shuffle them as a training step does, compute the loss and
its gradients. Prints one JSON
line: both losses, the advantages' and the LoRA gradients' largest differences, and how the studio's passes
called the LM head."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_model import build_tiny_model, rendered  # noqa: E402  (imports trainers: HF offline env)
from trainer_probe import record_head_calls  # noqa: E402

PROMPTS = ("What colour is the sky?", "Name a fruit.")


def reply_length(prompts: list[str], completions: list[str], **_: object) -> list[float]:
    return [float(len(c)) / 10 for c in completions]


def one_step(trainer_class: type, model_dir: Path, work: Path) -> dict[str, object]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import RLOOConfig

    from trainers.rloo_passes import POLICY_PASS_KEYS

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    with torch.no_grad():  # sharper logits than the random init's, so the replies' log-probs spread
        model.get_input_embeddings().weight.mul_(6.0)
    trainer = trainer_class(
        model=model, reward_funcs=reply_length,
        args=RLOOConfig(output_dir=str(work), per_device_train_batch_size=8, num_generations=4, use_cpu=True,
                        bf16=False, gradient_checkpointing=False, report_to="none", max_completion_length=6,
                        beta=0.2, temperature=0.9, seed=0, disable_dropout=True),
        train_dataset=Dataset.from_list([{"prompt": rendered(p)} for p in PROMPTS]),
        processing_class=AutoTokenizer.from_pretrained(str(model_dir)),
        peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                               init_lora_weights=False),  # B != 0: the policy differs from the reference
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    tokens: list[int] = []  # the tokens each forward's embedding saw (generation's steps, then the scoring's)
    trainer.model.get_input_embeddings().register_forward_hook(lambda _m, a, _o: tokens.append(a[0].numel()))
    torch.manual_seed(1)
    scored = trainer._prepare_inputs(batch)  # generate, score, shuffle: what a training step hands the loss
    scoring_tokens = tokens[-2:]  # the policy's and the reference's passes
    reused = all(key in scored for key in POLICY_PASS_KEYS)
    loss = trainer.compute_loss(trainer.model, scored)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return {"loss": float(loss.detach()), "grads": grads, "advantages": scored["advantages"].detach().clone(),
            "completions": scored["completion_ids"].tolist(), "kl": trainer._metrics["train"]["kl"][-1],
            "reused": reused, "entropy": trainer._metrics["train"]["entropy"][-1], "scoring_tokens": scoring_tokens,
            "batch_tokens": scored["prompt_ids"].numel() + scored["completion_ids"].numel(),
            "shares_prompt": bool(getattr(trainer, "shares_prompt", False))}


def reward_precision(trainer_class: type, model_dir: Path, work: Path, bf16: bool) -> list[str]:
    """The autocast each reward call ran under (``"off"`` or its dtype), in a run with ``bf16`` set or not."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import RLOOConfig

    seen: list[str] = []

    def recording_reward(prompts: list[str], completions: list[str], **_: object) -> list[float]:
        seen.append(str(torch.get_autocast_dtype("cpu")) if torch.is_autocast_enabled("cpu") else "off")
        return [0.0] * len(prompts)

    trainer = trainer_class(
        model=AutoModelForCausalLM.from_pretrained(str(model_dir)), reward_funcs=recording_reward,
        args=RLOOConfig(output_dir=str(work), per_device_train_batch_size=4, num_generations=2, use_cpu=True,
                        bf16=bf16, report_to="none", max_completion_length=4),
        train_dataset=Dataset.from_list([{"prompt": rendered(p)} for p in PROMPTS]),
        processing_class=AutoTokenizer.from_pretrained(str(model_dir)),
        peft_config=LoraConfig(r=4, target_modules=["q_proj"]),
    )
    prompts = [rendered(p) for p in PROMPTS]
    trainer._calculate_rewards([{"prompt": p} for p in prompts], prompts, ["a", "b"], [[1], [1]])
    return seen


def main() -> None:
    import torch
    import trl.trainer.utils as trl_utils
    from trl import RLOOTrainer

    from trainers.rloo_passes import StudioRLOOTrainer

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny")
        plain = one_step(RLOOTrainer, model_dir, Path(tmp) / "plain")
        calls = record_head_calls()
        studio = one_step(StudioRLOOTrainer, model_dir, Path(tmp) / "studio")
        precision = {f"{name}_{'bf16' if bf16 else 'fp32'}": reward_precision(cls, model_dir, Path(tmp) / "r", bf16)
                     for name, cls in (("plain", RLOOTrainer), ("studio", StudioRLOOTrainer)) for bf16 in (False, True)}
    pg, sg = plain["grads"], studio["grads"]
    print(json.dumps({
        "plain_loss": plain["loss"], "studio_loss": studio["loss"], "plain_kl": plain["kl"],
        "studio_kl": studio["kl"], "same_completions": plain["completions"] == studio["completions"],
        "max_advantage_diff": float((plain["advantages"] - studio["advantages"]).abs().max()),
        "max_advantage": float(plain["advantages"].abs().max()),
        "same_grad_names": sorted(pg) == sorted(sg) and bool(pg),
        "max_grad_diff": max(float((pg[n] - sg[n]).abs().max()) for n in pg),
        "max_grad": max(float(g.abs().max()) for g in pg.values()),
        "cpu_compact": bool(trl_utils._use_triton(torch.device("cpu"))),
        "head_calls": [[grad, list(outputs)] for grad, outputs in calls],
        "plain_reused": plain["reused"], "studio_reused": studio["reused"],
        "plain_entropy": plain["entropy"], "studio_entropy": studio["entropy"],
        "plain_scoring_tokens": plain["scoring_tokens"], "studio_scoring_tokens": studio["scoring_tokens"],
        "batch_tokens": plain["batch_tokens"], "studio_shares_prompt": studio["shares_prompt"],
        "reward_autocast": precision,
    }))


if __name__ == "__main__":
    main()
