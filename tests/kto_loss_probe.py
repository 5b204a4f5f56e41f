"""Run in a fresh process by tests/test_kto_passes.py: TRL's KTOTrainer and the studio's on the same batch.

TRL's must run before the studio's CPU speed-ups are installed (they patch TRL's module for the whole process),
so the comparison is made here, not in the test process. Prints one JSON line: both losses, the LoRA gradients'
largest difference, and how the studio's gradient-free passes called the LM head."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_model import SEPARABLE_PAIRS, build_tiny_model, rendered  # noqa: E402  (imports trainers: HF offline env)
from trainer_probe import record_head_calls  # noqa: E402


def loss_and_grads(trainer_class: type, model_dir: Path, work: Path) -> tuple[float, dict[str, object]]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig

    rows = [{"prompt": rendered(p), "completion": " " + reply, "label": good}
            for p, c, r in SEPARABLE_PAIRS for reply, good in ((c, True), (r, False))]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    trainer = trainer_class(
        model=model,
        args=KTOConfig(output_dir=str(work), per_device_train_batch_size=4, use_cpu=True, bf16=False,
                       gradient_checkpointing=False, report_to="none", max_length=64, beta=0.5,
                       desirable_weight=1.3, undesirable_weight=0.8),
        train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(str(model_dir)),
        peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                               init_lora_weights=False),  # B != 0: the policy differs from the reference
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return float(loss), grads


def main() -> None:
    import trl.trainer.utils as trl_utils
    from trl import KTOTrainer

    from trainers.kto_passes import StudioKTOTrainer

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny")
        plain_loss, plain_grads = loss_and_grads(KTOTrainer, model_dir, Path(tmp) / "plain")
        calls = record_head_calls()
        studio_loss, studio_grads = loss_and_grads(StudioKTOTrainer, model_dir, Path(tmp) / "studio")
    import torch

    print(json.dumps({
        "plain_loss": plain_loss, "studio_loss": studio_loss,
        "same_grad_names": sorted(plain_grads) == sorted(studio_grads) and bool(plain_grads),
        "max_grad_diff": max(float((plain_grads[n] - studio_grads[n]).abs().max()) for n in plain_grads),
        "max_grad": max(float(g.abs().max()) for g in plain_grads.values()),
        "cpu_compact": bool(trl_utils._use_triton(torch.device("cpu"))),
        "head_calls": [[grad, list(outputs)] for grad, outputs in calls],
    }))


if __name__ == "__main__":
    main()
