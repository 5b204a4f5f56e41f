"""The body of a run whose method learns from single replies (SFT's demonstrations, KTO's labels).

The same journey as DPO's (``trainers/methods/dpo.py``): the run's recorded examples read back
(``trainers.feedback_selection.run_examples``), the model converted once and loaded, a TRL trainer with a PEFT
LoRA, the studio's callbacks (metrics to the store, cancel at a step boundary, no pickles), a held-out
evaluation, the adapter published atomically. A method subclasses ``ExampleMethod`` and says only what differs:
its TRL config (``trainer_args``), its trainer class, its training rows and its held-out evaluation.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trainers  # noqa: F401  (HF offline env before transformers/TRL)
from trainers.chain import RunChain, run_chain, save_run_adapter
from trainers.feedback_selection import ExampleReport, TrainingExample, planned_report, run_examples
from trainers.frozen_weights import store_frozen_weights_for_autocast
from trainers.model_source import load_model, load_tokenizer, resolve_model_source
from trainers.run.allocator import keep_freed_memory
from trainers.run.callbacks import CancelAtStepBoundary, DropPickledArgs, MetricsRecorder
from trainers.run.checkpoints import checkpoint_step, last_complete_checkpoint, truncate_metrics
from trainers.run.errors import RunError, RunOutcome
from trainers.run.libraries import library_versions, quiet_progress_bars
from trainers.run.outputs import RunPaths, checked_run_paths, publish_output, runs_roots

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments

    from store.records import RunRecord
    from store.studio_store import Store
    from trainers.methods import CancelSignal
    from trainers.model_source import ModelSource
    from trainers.run_config import RunConfig


def common_training_arguments(config: RunConfig, work_dir: Path, device: str, dtype: str) -> dict[str, Any]:
    """The TrainingArguments every method sets the same way from the run config (TRL's configs default several
    of them differently from what a CPU run needs: bf16=True, learning_rate=1e-6, logging_steps=10)."""
    gradient_checkpointing = (
        config.gradient_checkpointing if config.gradient_checkpointing is not None else device == "cuda"
    )
    return {
        "output_dir": str(work_dir),
        "per_device_train_batch_size": config.batch_size,
        "per_device_eval_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "learning_rate": config.learning_rate,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps or -1,
        "use_cpu": device == "cpu",
        "bf16": dtype == "bf16",
        "fp16": False,
        # transformers 5 renamed gradient_checkpointing; setting the new name overrides TRL's default (on).
        "activation_checkpointing": gradient_checkpointing,
        "optim": "paged_adamw_8bit" if config.paged_adamw_8bit else "adamw_torch",
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": 2,
        "eval_strategy": "no",
        "seed": config.seed,
        "data_seed": config.seed,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "log_level": "warning",
    }


def causal_lm_lora(config: RunConfig) -> LoraConfig:
    """The run's LoRA on a causal LM (every method but the reward model)."""
    from peft import LoraConfig

    targets: str | list[str] = "all-linear" if config.target_modules == ["all-linear"] else list(config.target_modules)
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")


class ExampleMethod:
    """A ``TrainingMethod`` on examples; subclasses set ``name`` and override the four hooks."""

    name = "examples"

    def trainer_args(self, config: RunConfig, work_dir: Path, device: str, dtype: str, has_eval: bool,
                     report: ExampleReport) -> TrainingArguments:
        raise NotImplementedError

    def trainer_class(self) -> type[Trainer]:
        raise NotImplementedError

    def trainer_class_for(self, config: RunConfig) -> type[Trainer]:
        """The trainer class of this run (RLOO picks its rollout engine from the config)."""
        return self.trainer_class()

    def training_rows(self, examples: Sequence[TrainingExample], config: RunConfig) -> list[dict[str, str | bool]]:
        """The training dataset's rows, in the order the trainer should see them (it may shuffle them itself)."""
        return [e.to_trl() for e in examples]

    def evaluation_rows(self, examples: Sequence[TrainingExample]) -> list[dict[str, str | bool]] | None:
        """The held-out rows the trainer's own ``evaluate`` runs on, or None when the method evaluates itself."""
        return [e.to_trl() for e in examples] if examples else None

    def read_examples(self, store: Store, run: RunRecord, config: RunConfig
                      ) -> tuple[list[TrainingExample], list[TrainingExample]]:
        """The run's recorded training and held-out examples (SteerLM builds them from rated replies)."""
        return run_examples(store, run, config)

    def trainer_kwargs(self, store: Store, run: RunRecord, config: RunConfig, paths: RunPaths, source: ModelSource,
                       resume_step: int | None, log: Callable[[str], None]) -> dict[str, Any]:
        """What the method's trainer takes besides the common arguments (RLOO: its reward function);
        ``resume_step`` is the checkpoint's step when resuming, None on a fresh start."""
        return {}

    def extra_files(self, paths: RunPaths) -> dict[str, Path]:
        """Files of the work directory the published run keeps beside metrics.jsonl (RLOO: samples.jsonl)."""
        return {}

    def extra_summary(self, run: RunRecord) -> dict[str, Any]:
        """What the method adds to the run's summary (SteerLM: the attributes it was trained on)."""
        return {}

    def heldout_metrics(self, trainer: Trainer, heldout: Sequence[TrainingExample], tokenizer: PreTrainedTokenizerBase,
                        config: RunConfig, report: ExampleReport) -> dict[str, float]:
        """The method's held-out numbers for the run summary (after training)."""
        return {}

    def before_training(self, trainer: Trainer, heldout: Sequence[TrainingExample], tokenizer: PreTrainedTokenizerBase,
                        config: RunConfig, report: ExampleReport) -> dict[str, float]:
        """Held-out numbers of the untrained model, to compare with ``heldout_metrics`` (a fresh run only)."""
        return {}

    def describe_heldout(self, before: dict[str, float], after: dict[str, float]) -> str:
        """The held-out result in a few words for the run's final message ("" when there is none)."""
        return ""

    def load(self, config: RunConfig, source: ModelSource, device: str, dtype: str,
             chain: RunChain | None = None) -> PreTrainedModel:
        """The model to attach the LoRA to (one place, so every example method loads alike); with ``chain``
        (``--init-from``), the earlier run's adapter merged in."""
        return load_model(source.model_dir, device=device, four_bit=config.four_bit,
                          bf16_weights=device == "cuda" and dtype == "bf16",
                          merge_adapter=chain.parent_adapter if chain else None)

    def train_and_publish(self, store: Store, run: RunRecord, config: RunConfig, paths: RunPaths, *, resume: bool,
                          cancel: CancelSignal, log: Callable[[str], None], facts: dict[str, Any]) -> RunOutcome:
        return train_examples(self, store, run, config, paths, resume=resume, cancel=cancel, log=log, facts=facts)


def train_examples(method: ExampleMethod, store: Store, run: RunRecord, config: RunConfig, paths: RunPaths, *,
                   resume: bool, cancel: CancelSignal, log: Callable[[str], None], facts: dict[str, Any]) -> RunOutcome:
    """Train ``run`` with ``method`` to its end, publish the adapter and record the outcome."""
    # The folder is renamed and deleted under at the end: refuse one the row names outside the runs folder.
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
    train, heldout = method.read_examples(store, run, config)
    plan = planned_report(run)
    unit = plan.unit

    def converting(message: str) -> None:
        store.set_run_status(run.id, "loading", message)
        log(message)

    source = resolve_model_source(config.train_model, log=converting)
    chain = run_chain(store, config)  # --init-from: the earlier run's adapter is merged in as the model loads
    load_started = time.monotonic()
    tokenizer = load_tokenizer(source.model_dir)
    log(f"{unit}s: {plan.describe()}")
    model = method.load(config, source, device, dtype, chain)
    if chain.links:
        log(f"starting from {chain.describe()}: its adapter merged into the base")
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

    args = method.trainer_args(config, paths.work_dir, device, dtype, bool(heldout), plan)
    extra_kwargs = method.trainer_kwargs(store, run, config, paths, source,
                                         checkpoint_step(checkpoint) if checkpoint else None, log)
    trainer: Trainer | None = None

    def add_metrics(step: int, epoch: float | None, metrics: dict[str, float]) -> int:
        total = int(trainer.state.max_steps) if trainer is not None and trainer.state.max_steps else plan.steps
        return store.add_run_metrics(run.id, step, epoch, {**metrics, "total_steps": total})

    recorder = MetricsRecorder(add_metrics, paths.live_metrics, echo=log)
    stopper = CancelAtStepBoundary(cancel.event)
    evaluation_rows = method.evaluation_rows(heldout)
    trainer_started = time.monotonic()
    trainer = method.trainer_class_for(config)(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(method.training_rows(train, config)),
        eval_dataset=Dataset.from_list(evaluation_rows) if evaluation_rows else None,
        processing_class=tokenizer,
        peft_config=causal_lm_lora(config),
        callbacks=[recorder, stopper, DropPickledArgs()],
        **extra_kwargs,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    frozen = store_frozen_weights_for_autocast(trainer.model, device, dtype)  # as DPO's (trainers.frozen_weights)
    if frozen is not None:
        log(frozen.describe())
    trainable, total = trainer.model.get_nb_trainable_parameters()
    log(f"{method.name}: {plan.train} training {unit}(s), {plan.heldout} held out, {plan.steps} step(s), max length "
        f"{plan.max_length}; LoRA {trainable:,} of {total:,} parameters; {device} {dtype}, {threads} thread(s)")
    before = method.before_training(trainer, heldout, tokenizer, config, plan) if heldout and checkpoint is None \
        else {}
    store.set_run_status(run.id, "training", f"{plan.train} {unit}s, {plan.steps} steps on {device} ({dtype})")
    cancel.phase = "training"
    train_started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.monotonic() - train_started
    cancelled = cancel.cancelled
    heldout_after: dict[str, float] = {}
    if heldout and not cancelled:
        heldout_after = method.heldout_metrics(trainer, heldout, tokenizer, config, plan)
    cancel.phase = "saving"

    steps = int(trainer.state.global_step)
    status = "cancelled" if cancelled else "done"
    selection = plan.to_dict()
    summary = {
        "status": status,
        "method": method.name,
        "steps": steps,
        "max_steps": int(trainer.state.max_steps),
        "planned_steps": plan.steps,
        "epoch": float(trainer.state.epoch or 0.0),
        f"train_{unit}s": len(train),
        f"heldout_{unit}s": len(heldout),
        "first": recorder.first,
        "last": recorder.last,
        "eval": heldout_after,
        "heldout": {"before": before, "after": heldout_after},
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
        "chain": chain.to_dict(),
        "resumed_from": checkpoint,
        "selection": selection,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "versions": library_versions(),
        **method.extra_summary(run),
    }
    # Under `accelerate launch` every process trains; the main one alone writes the run's files and rows.
    trainer.accelerator.wait_for_everyone()
    if not trainer.accelerator.is_main_process:
        return RunOutcome(status, f"worker process of run {run.id} finished", None, None)
    config_record = {"config": config.to_dict(), "model": source.to_dict(), "run_id": run.id,
                     "chain": chain.to_dict()}
    examples_record = {"train": run.pair_ids, "heldout": run.heldout_ids, "dataset_hash": run.dataset_hash,
                       "selection": selection}
    output = publish_output(
        paths,
        lambda staging: save_run_adapter(trainer.model, staging, chain),
        {"run_config.json": config_record, "examples.json": examples_record, "metrics.jsonl": paths.live_metrics,
         "summary.json": summary, **method.extra_files(paths)},
    )
    summary["output_dir"] = str(output)
    summary["seconds"]["total"] = round(time.monotonic() - started, 2)
    summary["seconds"]["trainer_to_saved"] = round(time.monotonic() - trainer_started, 2)
    store.set_run_summary(run.id, summary)
    if cancelled:
        message = f"cancelled at step {steps}; adapter so far saved, resume to continue"
    else:
        message = f"done: {steps} steps, loss {recorder.last.get('loss', float('nan')):.4f}"
        heldout_text = method.describe_heldout(before, heldout_after)
        if heldout_text:
            message += f"; held out: {heldout_text}"
        shutil.rmtree(paths.work_dir, ignore_errors=True)  # checkpoints are only for resuming
    store.set_run_status(run.id, status, message)
    log(message)
    return RunOutcome(status, message, output, summary)
