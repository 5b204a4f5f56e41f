"""The body of a run: data, model, TRL ``DPOTrainer`` + LoRA, training, held-out evaluation, output.

Called by ``trainers.run.process.execute_run``, which owns the status bookkeeping and error handling.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trainers  # noqa: F401  (HF offline env before transformers/TRL)
from trainers.chain import run_chain, save_run_adapter
from trainers.frozen_weights import store_frozen_weights_for_autocast
from trainers.length_grouping import length_grouped_sampler
from trainers.model_source import load_model, load_tokenizer, resolve_model_source
from trainers.pair_selection import (
    PairSelection,
    SelectionReport,
    TrainingPair,
)
from trainers.recorded_pairs import run_pairs
from trainers.run.allocator import keep_freed_memory
from trainers.run.callbacks import CancelAtStepBoundary, DropPickledArgs, MetricsRecorder
from trainers.run.checkpoints import checkpoint_step, last_complete_checkpoint, truncate_metrics
from trainers.run.errors import RunError, RunOutcome
from trainers.run.libraries import library_versions, quiet_progress_bars
from trainers.run.outputs import RunPaths, checked_run_paths, publish_output, runs_roots
from trainers.run.plan import plan_selection
from trainers.run_config import RunConfig

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel
    from transformers import PreTrainedTokenizerBase
    from trl import DPOConfig, DPOTrainer

    from store.records import RunRecord
    from store.studio_store import Store
    from trainers.methods import CancelSignal


def planned_selection(run: RunRecord, config: RunConfig, train: list[TrainingPair], heldout: list[TrainingPair],
                      tokenizer: PreTrainedTokenizerBase) -> PairSelection:
    """The run's pairs and the counts recorded when it was prepared (its pairs were measured then, so all of
    them fit). A run prepared before the counts were recorded is measured now, the same way."""
    stored = (run.summary or {}).get("selection") or {}
    report = SelectionReport.from_dict(stored) if stored.get("source") else SelectionReport(source="the run")
    selection = PairSelection(train, heldout, run.dataset_hash or "", report)
    if report.max_length is None or report.steps is None:
        selection = plan_selection(selection, tokenizer, config)
    return selection


def build_dpo_config(config: RunConfig, work_dir: Path, device: str, dtype: str, has_eval: bool,
                     max_length: int | None = None) -> DPOConfig:
    """TRL's config for this run; ``max_length`` is the run's planned length (``config.max_length`` may be auto)."""
    from trl import DPOConfig

    max_length = max_length or config.max_length

    gradient_checkpointing = (
        config.gradient_checkpointing if config.gradient_checkpointing is not None else device == "cuda"
    )
    # Every value TRL defaults differently from what a CPU run needs is set here explicitly:
    # bf16=True (fails on a CPU-only box), learning_rate=1e-6 (LoRA barely moves), logging_steps=10.
    return DPOConfig(
        output_dir=str(work_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        beta=config.beta,
        loss_type=[config.loss_type],
        max_length=max_length,
        use_cpu=device == "cpu",
        bf16=dtype == "bf16",
        fp16=False,
        # transformers 5 renamed gradient_checkpointing; setting the new name overrides TRL's default (on).
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


def lora_config(config: RunConfig) -> LoraConfig:
    from peft import LoraConfig

    targets: str | list[str] = "all-linear" if config.target_modules == ["all-linear"] else list(config.target_modules)
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )


def length_grouped_trainer_class() -> type[DPOTrainer]:
    """TRL's ``DPOTrainer`` with training batches of pairs of similar length, each pair's prompt run once.

    Each batch is padded to its longest prompt + reply, so on a CPU (compute-bound, no padding-free
    kernels) grouping similar lengths is time saved. The longest batch comes first, so an
    out-of-memory shows at step 1 rather than at the end. The model's forward passes (policy and
    reference) see each prompt once, shared by its two replies (``trainers.shared_prompt_forward``).
    """
    from peft import PeftModel
    from trl import DPOTrainer

    from trainers.shared_prompt_forward import share_prompt_forward

    class LengthGroupedDPOTrainer(DPOTrainer):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - DPOTrainer's signature
            super().__init__(*args, **kwargs)
            # After TRL has added its fused LM head to the model (in its __init__).
            self.shares_prompt = share_prompt_forward(self.model, reference_pass=self._is_reference_pass)
            if self.ref_model is not None:
                share_prompt_forward(self.ref_model)

        def _is_reference_pass(self) -> bool:
            """A forward made for the reference log-probabilities: no grad, the LoRA adapter disabled (TRL's
            ``use_adapter(model, None)``) or the "ref" adapter active."""
            import torch

            if torch.is_grad_enabled() or not isinstance(self.model, PeftModel):
                return False
            if self.model.active_adapter == "ref":
                return True
            return any(getattr(module, "disable_adapters", False) for module in _lora_layers(self.model))

        def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001, ANN202 - Trainer's signature
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            sampler = length_grouped_sampler(
                self.args, dataset, ("prompt_ids", "chosen_ids", "rejected_ids"),
                lambda prompt, chosen, rejected: len(prompt) + max(len(chosen), len(rejected)))
            return sampler if sampler is not None else super()._get_train_sampler(train_dataset)

    return LengthGroupedDPOTrainer


def _lora_layers(model: PeftModel) -> list[object]:
    """The model's LoRA layers, found once per model (the reference-pass test runs at every forward)."""
    cached = getattr(model, "_studio_lora_layers", None)
    if cached is None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        cached = [m for m in model.modules() if isinstance(m, BaseTunerLayer)][:1]
        model._studio_lora_layers = cached
    return cached


class DPOMethod:
    """LoRA DPO with TRL (the ``TrainingMethod`` registered as ``dpo``).

    A method that differs only in its TRL config or trainer subclasses this and overrides ``trainer_args``
    or ``trainer_class``; everything else (data, model, callbacks, resume, publishing) stays shared.
    """

    def trainer_args(self, config: RunConfig, work_dir: Path, device: str, dtype: str, has_eval: bool,
                     max_length: int | None) -> DPOConfig:
        return build_dpo_config(config, work_dir, device, dtype, has_eval, max_length)

    def trainer_class(self) -> type[DPOTrainer]:
        return length_grouped_trainer_class()

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


METHOD = DPOMethod()


def _train_and_publish(
    method: DPOMethod,
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
    # The folder is renamed and deleted under at the end: refuse one the row names outside the runs folder.
    paths = checked_run_paths(paths.output_dir, runs_roots(getattr(store, "path", None)))
    import torch
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from trainers.compact_logprobs import enable_compact_logprobs_on_cpu
    from trainers.cpu_logprob_head import enable_cpu_logprob_head
    from trainers.run.device import peak_rss_mb, resolve_device, resolve_dtype, training_threads

    started = time.monotonic()
    # transformers 5 warns at every checkpoint save about its own renamed attribute.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    quiet_progress_bars()
    keep_freed_memory()
    device = facts["device"] = resolve_device(config)
    dtype = resolve_dtype(config, device)
    threads = training_threads(config)  # the cores shared out among the ranks under `accelerate launch`
    torch.set_num_threads(threads)
    if device == "cpu":
        enable_compact_logprobs_on_cpu()
        enable_cpu_logprob_head()
    if not config.train_model:
        raise RunError("the run names no model to train; pass --train-model PATH")
    train_pairs, heldout_pairs = run_pairs(store, run, config)

    def converting(message: str) -> None:
        store.set_run_status(run.id, "loading", message)
        log(message)

    source = resolve_model_source(config.train_model, log=converting)
    chain = run_chain(store, config)  # --init-from: the earlier run's adapter is merged in as the model loads
    load_started = time.monotonic()
    tokenizer = load_tokenizer(source.model_dir)
    planned = planned_selection(run, config, train_pairs, heldout_pairs, tokenizer)
    train_pairs, heldout_pairs, plan = planned.train, planned.heldout, planned.report
    log(f"pairs: {plan.describe()}")
    model = load_model(source.model_dir, device=device, four_bit=config.four_bit,
                       bf16_weights=device == "cuda" and dtype == "bf16", merge_adapter=chain.parent_adapter)
    if chain.links:
        log(f"starting from {chain.describe()}: its adapter merged into the base, the reference model too")
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
    trainer: DPOTrainer | None = None

    def add_metrics(step: int, epoch: float | None, metrics: dict[str, float]) -> int:
        # The Trainer's own step count, so a progress bar's total is the number of steps that really run.
        total = int(trainer.state.max_steps) if trainer is not None and trainer.state.max_steps else plan.steps
        return store.add_run_metrics(run.id, step, epoch, {**metrics, "total_steps": total})

    recorder = MetricsRecorder(add_metrics, paths.live_metrics, echo=log)
    stopper = CancelAtStepBoundary(cancel.event)
    trainer_started = time.monotonic()
    trainer = method.trainer_class()(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([p.to_trl() for p in train_pairs]),
        eval_dataset=Dataset.from_list([p.to_trl() for p in heldout_pairs]) if heldout_pairs else None,
        processing_class=tokenizer,
        peft_config=lora_config(config),
        callbacks=[recorder, stopper, DropPickledArgs()],
    )
    # Our recorder prints one line per step; the Trainer's own printer would repeat each as a dict.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    # After the LoRA is attached (it keeps fp32): the frozen weights as bf16 autocast uses them, fp32 pages let go.
    frozen = store_frozen_weights_for_autocast(trainer.model, device, dtype)
    if frozen is not None:
        log(frozen.describe())
    trainable, total = trainer.model.get_nb_trainable_parameters()
    log(f"{plan.train} training pair(s), {plan.heldout} held out, {plan.steps} step(s), max length "
        f"{plan.max_length}; LoRA {trainable:,} of {total:,} parameters; {device} {dtype}, {threads} thread(s)")
    store.set_run_status(run.id, "training", f"{plan.train} pairs, {plan.steps} steps on {device} ({dtype})")
    cancel.phase = "training"
    train_started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.monotonic() - train_started
    cancelled = cancel.cancelled
    eval_metrics: dict[str, float] = {}
    if heldout_pairs and not cancelled:
        eval_metrics = {k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, int | float)}
    cancel.phase = "saving"

    steps = int(trainer.state.global_step)
    status = "cancelled" if cancelled else "done"
    selection = plan.to_dict()
    summary = {
        "status": status,
        "steps": steps,
        "max_steps": int(trainer.state.max_steps),
        "planned_steps": plan.steps,
        "epoch": float(trainer.state.epoch or 0.0),
        "train_pairs": len(train_pairs),
        "heldout_pairs": len(heldout_pairs),
        "first": recorder.first,
        "last": recorder.last,
        "eval": eval_metrics,
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
    }
    # Under `accelerate launch` every process trains; the main one alone writes the run's files and rows.
    trainer.accelerator.wait_for_everyone()
    if not trainer.accelerator.is_main_process:
        return RunOutcome(status, f"worker process of run {run.id} finished", None, None)
    config_record = {"config": config.to_dict(), "model": source.to_dict(), "run_id": run.id,
                     "chain": chain.to_dict()}
    pairs_record = {"train": run.pair_ids, "heldout": run.heldout_ids, "dataset_hash": run.dataset_hash,
                    "selection": selection}
    output = publish_output(
        paths,
        lambda staging: save_run_adapter(trainer.model, staging, chain),
        {"run_config.json": config_record, "pairs.json": pairs_record, "metrics.jsonl": paths.live_metrics,
         "summary.json": summary},
    )
    summary["output_dir"] = str(output)
    summary["seconds"]["total"] = round(time.monotonic() - started, 2)
    summary["seconds"]["trainer_to_saved"] = round(time.monotonic() - trainer_started, 2)
    store.set_run_summary(run.id, summary)
    if cancelled:
        message = f"cancelled at step {steps}; adapter so far saved, resume to continue"
    else:
        message = f"done: {steps} steps, loss {recorder.last.get('loss', float('nan')):.4f}"
        import shutil

        shutil.rmtree(paths.work_dir, ignore_errors=True)  # checkpoints are only for resuming
    store.set_run_status(run.id, status, message)
    log(message)
    return RunOutcome(status, message, output, summary)
