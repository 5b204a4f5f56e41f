"""What every plain TRL script of ``bench/train_speed.py`` shares: its flags, loading the GGUF the way a plain
script would, the LoRA config, and the one JSON line it prints (time, steps, peak RSS)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import trainers  # noqa: E402, F401  (HF offline env, as any script here should set)

LORA = {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def options(extra: Callable[[argparse.ArgumentParser], object] | None = None) -> argparse.Namespace:
    """The shared flags, and a script's own (``extra`` adds them to the parser)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="JSONL rows in the method's TRL format")
    parser.add_argument("--model", required=True, help="a .gguf file")
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None)
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def rows(opts: argparse.Namespace) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(opts.data).read_text(encoding="utf-8").splitlines() if line.strip()]


def load(opts: argparse.Namespace, model_class_name: str = "AutoModelForCausalLM", **kwargs: Any) -> tuple[Any, Any, float]:
    """Tokenizer and model straight from the GGUF (dequantised), as a plain script does; the seconds it took."""
    import torch
    import transformers
    from transformers import AutoTokenizer, GgufConfig

    torch.set_num_threads(opts.threads or os.cpu_count() or 1)
    gguf = Path(opts.model)
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model_class = getattr(transformers, model_class_name)
    model = model_class.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                        quantization_config=GgufConfig(dequantize=True), **kwargs)
    if opts.device == "cuda":
        model = model.to("cuda")
    return tokenizer, model, time.monotonic() - started


def common_args(opts: argparse.Namespace) -> dict[str, Any]:
    """The TrainingArguments every plain script sets: TRL's defaults otherwise (use_cpu: it does not start
    on a CPU without it)."""
    return {"output_dir": opts.out, "per_device_train_batch_size": opts.batch_size, "num_train_epochs": opts.epochs,
            "learning_rate": 5e-5, "logging_steps": 1, "report_to": "none", "use_cpu": opts.device == "cpu",
            "save_strategy": "no", "disable_tqdm": True}


def train_and_report(build_trainer: Callable[[], Any], load_s: float) -> None:
    """Time the trainer from construction to the adapter saved; print one JSON line."""
    started = time.monotonic()
    trainer = build_trainer()
    trainer.train()
    trainer.save_model(trainer.args.output_dir)
    print(json.dumps({"load_s": load_s, "trainer_to_saved_s": time.monotonic() - started,
                      "steps": trainer.state.global_step, "bf16": trainer.args.bf16,
                      "gradient_checkpointing": trainer.args.gradient_checkpointing,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}), flush=True)
