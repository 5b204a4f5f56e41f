"""The ``reward`` method: a reward model on the served model's own weights, trained on preference pairs.

``AutoModelForSequenceClassification`` (one label) on the converted GGUF's weights, LoRA via PEFT on the
run's target modules and the score head trained in full (``modules_to_save``), TRL's ``RewardTrainer``
(Bradley-Terry loss) on the run's pairs: A/B choices, edits and expanded rankings from the store
(``store.feedback_yield.read_pairs``, through ``trainers.recorded_pairs.run_pairs``) or a dataset's pairs.

A reply's reward is the head applied to the final hidden state of one token: the last of ``prompt + reply``
tokenised with the model's BOS, plus EOS (``reward_input_ids``; the trainer and every scorer tokenise this
one way). The published folder holds the LoRA alone (``adapter_model.safetensors``, exportable to a GGUF
LoRA like any run's), the head (``reward_head.safetensors``: ``score.weight``, 1 × hidden) and
``reward_model.json`` (how a reply is tokenised and pooled), so the studio can score in llama.cpp: the
hidden state with the LoRA applied, times the head. No pickle anywhere.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trainers  # noqa: F401  (HF offline env before transformers/TRL)
from trainers.frozen_weights import store_frozen_weights_for_autocast
from trainers.length_grouping import length_grouped_sampler
from trainers.methods.dpo import planned_selection
from trainers.model_source import ModelSourceError, load_tokenizer, resolve_model_source
from trainers.pair_selection import TrainingPair
from trainers.recorded_pairs import run_pairs
from trainers.run.allocator import keep_freed_memory
from trainers.run.callbacks import CancelAtStepBoundary, DropPickledArgs, MetricsRecorder
from trainers.run.checkpoints import checkpoint_step, last_complete_checkpoint, truncate_metrics
from trainers.run.errors import RunError, RunOutcome
from trainers.run.libraries import library_versions, quiet_progress_bars
from trainers.run.outputs import RunPaths, checked_run_paths, publish_output, runs_roots
from trainers.run_config import RunConfig
from trainers.shared_prompt_forward import share_prompt_in_reward_model

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    from trl import RewardConfig, RewardTrainer

    from store.records import RunRecord
    from store.studio_store import Store
    from trainers.methods import CancelSignal

HEAD_FILE = "reward_head.safetensors"
HEAD_KEY = "score.weight"
SPEC_FILE = "reward_model.json"
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."


def appends_eos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether a reply gets EOS appended before it is scored. Not when EOS is also the padding token: the
    sequence-classification model reads the last token that is not padding, which would skip it."""
    return tokenizer.eos_token_id is not None and tokenizer.eos_token_id != tokenizer.pad_token_id


def reward_input_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, reply: str,
                     max_length: int | None = None) -> list[int]:
    """The tokens a reply is scored on: ``prompt + reply`` with the tokenizer's BOS (as llama.cpp tokenises
    a prompt), EOS appended (``appends_eos``). Too long: the reply's end is cut, the EOS kept, so the score
    still reads the token the model was trained to score on."""
    ids = list(tokenizer(prompt + reply)["input_ids"])
    if not appends_eos(tokenizer):
        return ids[:max_length] if max_length else ids
    if max_length:
        ids = ids[: max_length - 1]
    return [*ids, int(tokenizer.eos_token_id)]


def tokenized_pairs(pairs: Sequence[TrainingPair], tokenizer: PreTrainedTokenizerBase,
                    max_length: int | None) -> list[dict[str, list[int]]]:
    """Rows in TRL's processed preference format (``chosen_ids``/``rejected_ids``), so the trainer neither
    re-tokenises (it would add EOS as text) nor drops the pairs over ``max_length`` (they are cut instead)."""
    return [{"chosen_ids": reward_input_ids(tokenizer, p.prompt, p.chosen, max_length),
             "rejected_ids": reward_input_ids(tokenizer, p.prompt, p.rejected, max_length)} for p in pairs]


def length_grouped_reward_trainer() -> type[RewardTrainer]:
    """TRL's ``RewardTrainer`` whose batches hold pairs of similar length, as DPO's do: TRL pads a batch's
    chosen and rejected rows to its longest."""
    from trl import RewardTrainer

    class LengthGroupedRewardTrainer(RewardTrainer):
        def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001, ANN202 - Trainer's signature
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            sampler = length_grouped_sampler(self.args, dataset, ("chosen_ids", "rejected_ids"),
                                             lambda chosen, rejected: max(len(chosen), len(rejected)))
            return sampler if sampler is not None else super()._get_train_sampler(train_dataset)

    return LengthGroupedRewardTrainer


def build_reward_config(config: RunConfig, work_dir: Path, device: str, dtype: str, has_eval: bool,
                        max_length: int | None) -> RewardConfig:
    """TRL's ``RewardConfig`` for this run; every default a CPU run cannot use is set explicitly."""
    from trl import RewardConfig

    gradient_checkpointing = (
        config.gradient_checkpointing if config.gradient_checkpointing is not None else device == "cuda"
    )
    return RewardConfig(
        output_dir=str(work_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        max_length=max_length,
        use_cpu=device == "cpu",
        bf16=dtype == "bf16",
        fp16=False,
        activation_checkpointing=gradient_checkpointing,
        optim="paged_adamw_8bit" if config.paged_adamw_8bit else "adamw_torch",
        logging_steps=1,
        report_to="none",
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        eval_strategy="no",
        seed=config.seed,
        data_seed=config.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
        log_level="warning",
        do_eval=has_eval,
    )


def reward_lora_config(config: RunConfig) -> LoraConfig:
    """LoRA on the run's target modules; the score head (new, one row) is trained whole."""
    from peft import LoraConfig

    targets: str | list[str] = "all-linear" if config.target_modules == ["all-linear"] else list(config.target_modules)
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="SEQ_CLS",
        modules_to_save=["score"],
    )


def load_reward_model(model_dir: Path, *, device: str, tokenizer: PreTrainedTokenizerBase,
                      num_labels: int = 1) -> PreTrainedModel:
    """The served model's weights under a sequence-classification head (new, zero) of ``num_labels`` outputs
    (one for a reward model; one per attribute for ``trainers.methods.attributes``).

    transformers has the class for both bundled architectures (``Gemma3TextForSequenceClassification``,
    ``LlamaForSequenceClassification``); its missing ``score`` and unused ``lm_head`` keys are expected."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    try:
        with suppress_seqcls_warning():
            model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=num_labels,
                                                                       dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelSourceError(
            f"cannot load {model_dir} as a reward model ({type(exc).__name__}: {exc}); its architecture may have "
            "no sequence-classification class in this transformers"
        ) from exc
    # A new head scores every reply 0: no preference until the pairs give one (a random head would start
    # with an arbitrary one, right or wrong for the whole held-out split at once).
    torch.nn.init.zeros_(model.score.weight)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    return model.to("cuda") if device == "cuda" else model


def pairwise_metrics(trainer: RewardTrainer) -> dict[str, float]:
    """Held-out loss, pairwise accuracy (chosen scored above rejected) and mean margin, from TRL's eval."""
    raw = trainer.evaluate()
    wanted = {"eval_loss": "loss", "eval_accuracy": "accuracy", "eval_margin": "margin"}
    return {short: float(raw[key]) for key, short in wanted.items() if key in raw}


def split_head(staging: Path, tokenizer: PreTrainedTokenizerBase, model: dict[str, Any]) -> None:
    """Move the score head out of PEFT's adapter file into its own, and describe how replies are scored.

    What stays is a plain LoRA: the GGUF exporter refuses full weights, and llama.cpp applies only LoRA."""
    from safetensors.numpy import load_file, save_file

    adapter = load_file(str(staging / ADAPTER_FILE))
    head_keys = [k for k in adapter if k.removeprefix(PEFT_PREFIX).split(".")[0] == "score"]
    if len(head_keys) != 1:
        raise RunError(f"the trained adapter holds {len(head_keys)} score weights ({head_keys}); expected one")
    head = adapter.pop(head_keys[0])
    save_file({HEAD_KEY: head.reshape(1, -1)}, str(staging / HEAD_FILE))
    save_file(adapter, str(staging / ADAPTER_FILE), metadata={"format": "pt"})
    config_path = staging / ADAPTER_CONFIG
    adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    adapter_config["modules_to_save"] = None
    config_path.write_text(json.dumps(adapter_config, indent=2), encoding="utf-8")
    spec = {
        "pooling": "last token",
        "append_eos": appends_eos(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "head": {"file": HEAD_FILE, "key": HEAD_KEY, "shape": list(head.reshape(1, -1).shape)},
        "model": model,
    }
    (staging / SPEC_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")


class RewardMethod:
    """A LoRA reward model with TRL's ``RewardTrainer`` (the ``TrainingMethod`` registered as ``reward``)."""

    def trainer_args(self, config: RunConfig, work_dir: Path, device: str, dtype: str, has_eval: bool,
                     max_length: int | None) -> RewardConfig:
        return build_reward_config(config, work_dir, device, dtype, has_eval, max_length)

    def train_and_publish(
        self,
        store: Store,
        run: RunRecord,
        config: RunConfig,
        paths: RunPaths,
        *,
        resume: bool,
        cancel: CancelSignal,
        log: Callable[[str], None],
        facts: dict[str, Any],
    ) -> RunOutcome:
        return _train_and_publish(self, store, run, config, paths, resume=resume, cancel=cancel, log=log,
                                  facts=facts)


METHOD = RewardMethod()


def _train_and_publish(
    method: RewardMethod,
    store: Store,
    run: RunRecord,
    config: RunConfig,
    paths: RunPaths,
    *,
    resume: bool,
    cancel: CancelSignal,
    log: Callable[[str], None],
    facts: dict[str, Any],
) -> RunOutcome:
    paths = checked_run_paths(paths.output_dir, runs_roots(getattr(store, "path", None)))
    import torch
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from trainers.run.device import peak_rss_mb, resolve_device, resolve_dtype, training_threads

    started = time.monotonic()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    quiet_progress_bars()
    keep_freed_memory()
    device = facts["device"] = resolve_device(config)
    dtype = resolve_dtype(config, device)
    threads = training_threads(config)  # the cores shared out among the ranks under `accelerate launch`
    torch.set_num_threads(threads)
    if not config.train_model:
        raise RunError("the run names no model to train; pass --train-model PATH")
    if getattr(config, "init_from", None):
        raise RunError("a reward model starts from the served model's own weights; --init-from is for sft, kto "
                       "and dpo runs")
    train_pairs, heldout_pairs = run_pairs(store, run, config)

    def converting(message: str) -> None:
        store.set_run_status(run.id, "loading", message)
        log(message)

    source = resolve_model_source(config.train_model, log=converting)
    load_started = time.monotonic()
    tokenizer = load_tokenizer(source.model_dir)
    planned = planned_selection(run, config, train_pairs, heldout_pairs, tokenizer)
    train_pairs, heldout_pairs, plan = planned.train, planned.heldout, planned.report
    log(f"pairs: {plan.describe()}")
    model = load_reward_model(source.model_dir, device=device, tokenizer=tokenizer)
    load_seconds = time.monotonic() - load_started

    paths.work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = last_complete_checkpoint(paths.work_dir, log) if resume and paths.work_dir.is_dir() else None
    if resume and checkpoint is None:
        log("no checkpoint to resume from; training from the start")
    if not resume or checkpoint is None:
        paths.live_metrics.unlink(missing_ok=True)
        store.delete_run_metrics(run.id)
    else:
        truncate_metrics(paths.live_metrics, checkpoint_step(checkpoint))
        store.delete_run_metrics(run.id, after_step=checkpoint_step(checkpoint))

    args = method.trainer_args(config, paths.work_dir, device, dtype, bool(heldout_pairs), plan.max_length)
    trainer: RewardTrainer | None = None

    def add_metrics(step: int, epoch: float | None, metrics: dict[str, float]) -> int:
        total = int(trainer.state.max_steps) if trainer is not None and trainer.state.max_steps else plan.steps
        return store.add_run_metrics(run.id, step, epoch, {**metrics, "total_steps": total})

    recorder = MetricsRecorder(add_metrics, paths.live_metrics, echo=log)
    stopper = CancelAtStepBoundary(cancel.event)
    trainer_started = time.monotonic()
    trainer = length_grouped_reward_trainer()(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(tokenized_pairs(train_pairs, tokenizer, plan.max_length)),
        eval_dataset=(Dataset.from_list(tokenized_pairs(heldout_pairs, tokenizer, plan.max_length))
                      if heldout_pairs else None),
        processing_class=tokenizer,
        peft_config=reward_lora_config(config),
        callbacks=[recorder, stopper, DropPickledArgs()],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    # Each pair's common prefix (the prompt) once for both rows, as DPO's pairs.
    if share_prompt_in_reward_model(trainer.model):
        log("reward: each pair's prompt runs once for both replies")
    # After the LoRA and the trainable head are attached: the frozen weights as bf16 autocast uses them.
    frozen = store_frozen_weights_for_autocast(trainer.model, device, dtype)
    if frozen is not None:
        log(frozen.describe())
    trainable, total = trainer.model.get_nb_trainable_parameters()
    log(f"{plan.train} training pair(s), {plan.heldout} held out, {plan.steps} step(s), max length "
        f"{plan.max_length}; reward head + LoRA {trainable:,} of {total:,} parameters; {device} {dtype}, "
        f"{threads} thread(s)")
    # Held-out pairwise accuracy before training (the new head prefers nothing: 0, margin 0), for comparison.
    before = pairwise_metrics(trainer) if heldout_pairs and checkpoint is None else {}
    store.set_run_status(run.id, "training", f"{plan.train} pairs, {plan.steps} steps on {device} ({dtype})")
    cancel.phase = "training"
    train_started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.monotonic() - train_started
    cancelled = cancel.cancelled
    after = pairwise_metrics(trainer) if heldout_pairs and not cancelled else {}
    cancel.phase = "saving"

    steps = int(trainer.state.global_step)
    status = "cancelled" if cancelled else "done"
    selection = plan.to_dict()
    summary = {
        "status": status,
        "method": "reward",
        "steps": steps,
        "max_steps": int(trainer.state.max_steps),
        "planned_steps": plan.steps,
        "epoch": float(trainer.state.epoch or 0.0),
        "train_pairs": len(train_pairs),
        "heldout_pairs": len(heldout_pairs),
        "first": recorder.first,
        "last": recorder.last,
        "eval": {f"eval_{k}": v for k, v in after.items()},
        "heldout": {"before": before, "after": after, "pairs": len(heldout_pairs)},
        "train_loss": float(result.training_loss) if result.training_loss is not None else None,
        "seconds": {
            "total": round(time.monotonic() - started, 2),
            "load": round(load_seconds, 2),
            "train": round(train_seconds, 2),
            "per_step": round(train_seconds / max(1, steps - checkpoint_step(checkpoint)), 3),
            "step": recorder.step_time_stats(),
        },
        "device": device,
        "dtype": dtype,
        "threads": threads,
        "model": source.to_dict(),
        "resumed_from": checkpoint,
        "selection": selection,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "versions": library_versions(),
    }
    trainer.accelerator.wait_for_everyone()
    if not trainer.accelerator.is_main_process:
        return RunOutcome(status, f"worker process of run {run.id} finished", None, None)

    def write_adapter(staging: Path) -> None:
        trainer.model.save_pretrained(str(staging), safe_serialization=True)
        split_head(staging, tokenizer, source.to_dict())

    config_record = {"config": config.to_dict(), "model": source.to_dict(), "run_id": run.id}
    pairs_record = {"train": run.pair_ids, "heldout": run.heldout_ids, "dataset_hash": run.dataset_hash,
                    "selection": selection}
    output = publish_output(
        paths, write_adapter,
        {"run_config.json": config_record, "pairs.json": pairs_record, "metrics.jsonl": paths.live_metrics,
         "summary.json": summary},
    )
    summary["output_dir"] = str(output)
    summary["seconds"]["total"] = round(time.monotonic() - started, 2)
    summary["seconds"]["trainer_to_saved"] = round(time.monotonic() - trainer_started, 2)
    store.set_run_summary(run.id, summary)
    if cancelled:
        message = f"cancelled at step {steps}; reward model so far saved, resume to continue"
    else:
        accuracy = f", held-out accuracy {after['accuracy']:.2f}" if "accuracy" in after else ""
        message = f"done: {steps} steps, loss {recorder.last.get('loss', float('nan')):.4f}{accuracy}"
        shutil.rmtree(paths.work_dir, ignore_errors=True)
    store.set_run_status(run.id, status, message)
    log(message)
    return RunOutcome(status, message, output, summary)


def load_trained_reward_model(output_dir: Path, model_dir: Path, *, num_labels: int = 1, head_file: str = HEAD_FILE
                              ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A published reward run as transformers + PEFT compute it (the reference the llama.cpp scorer is held to):
    the base under its sequence-classification head set to the run's head, the LoRA on top, in eval mode.
    An attribute model (``num_labels`` outputs, its own ``head_file``) loads the same way."""
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    tokenizer = load_tokenizer(model_dir)
    model = load_reward_model(model_dir, device="cpu", tokenizer=tokenizer, num_labels=num_labels)
    weights = load_file(str(Path(output_dir) / ADAPTER_FILE))
    # The head was moved out of PEFT's file (``split_head``); PEFT wraps ``score`` for SEQ_CLS and wants it back.
    weights[f"{PEFT_PREFIX}score.weight"] = load_file(str(Path(output_dir) / head_file))[HEAD_KEY]
    model = get_peft_model(model, PeftConfig.from_pretrained(str(output_dir)))
    result = set_peft_model_state_dict(model, weights)
    missing = [k for k in result.missing_keys if "lora_" in k or "modules_to_save" in k]
    if missing or result.unexpected_keys:
        raise RunError(f"{output_dir}: the reward model's weights do not fit the base: missing {missing[:3]}, "
                       f"unexpected {list(result.unexpected_keys)[:3]}")
    model.eval()
    return model, tokenizer


def transformers_reward_scores(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str,
                               replies: Sequence[str]) -> list[float]:
    """Each reply's reward from the transformers model, on the tokens the trainer scores (``reward_input_ids``)."""
    import torch

    from trainers.pair_selection import at_token_boundary

    scores = []
    with torch.no_grad():
        for reply in replies:
            kept, moved, _ = at_token_boundary(prompt, reply, reply)
            ids = torch.tensor([reward_input_ids(tokenizer, kept, moved)])
            scores.append(float(model(input_ids=ids).logits[0, 0]))
    return scores
