"""What a client (the TUI, the CLI) does with runs: prepare one, start its process, cancel, resume.

    prepared = prepare_run(store, RunConfig(epochs=2), model_path=gguf)   # run row 'queued'
    proc = start_run_process(prepared.run_id, store.path)                  # trains in its own process
    request_cancel(proc.pid)               # stops at the next step boundary, saves the adapter so far
    proc = start_run_process(prepared.run_id, store.path, resume=True)    # continues from the checkpoint
    finalize_dead_run(store, run_id, proc.returncode)                      # after a crash / kill -9

Progress is read from the store (``store.run_metrics(run_id, after_step=...)``, ``store.get_run``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from store.run_log import ACTIVE_RUN_STATUSES
from trainers.chain import check_init_from
from trainers.dataset_selection import select_dataset
from trainers.feedback_selection import ExampleSelection, plan_examples, select_examples
from trainers.methods.registry import feedback_of
from trainers.pair_selection import PairSelection, dataset_file, select_from_store
from trainers.run.outputs import RunPaths, unique_output_dir
from trainers.run.plan import plan_selection
from trainers.run_config import RunConfig, RunConfigError
from trainers.target_modules import check_target_modules

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from store.studio_store import Store

ACTIVE = ACTIVE_RUN_STATUSES  # statuses of a run whose process should be alive
RunSelection = PairSelection | ExampleSelection  # what a run trains on: pairs (DPO) or examples (SFT, KTO)


@dataclass(frozen=True)
class PreparedRun:
    """A run recorded in the store (status 'queued'), ready for its process."""

    run_id: int
    output_dir: Path
    selection: RunSelection
    config: RunConfig

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.output_dir)


def select_for_config(store: Store, config: RunConfig) -> PairSelection:
    """The pairs ``config`` asks for (a dataset by name or file, one session, or every pair), cleaned and split."""
    if config.dataset:
        return select_dataset(store, config)
    if config.support_ratio is not None:
        raise RunConfigError("--support-ratio needs --dataset NAME, a labelled-stance dataset in the store "
                             "(e.g. one imported from assets/exercises/)")
    return select_from_store(store, session_id=config.session_id, seed=config.seed,
                             heldout_fraction=config.heldout_fraction, data_size=config.data_size,
                             drop_flagged=config.drop_flagged)


def plan_for_config(store: Store, config: RunConfig, model: Path | str,
                    tokenizer: PreTrainedTokenizerBase | None = None) -> RunSelection:
    """What a run of ``config`` on ``model`` would train on (pairs, or the demonstrations / labels its method
    learns from), counted with the model's tokenizer alone (what fits per split, max length, steps); records
    nothing. ``tokenizer`` saves loading it again."""
    check_target_modules(Path(model), config.target_modules)  # a misspelt module is named here too
    check_init_from(store, config, model)  # --init-from: a run that exists, is done, on this same model
    if feedback_of(config.method) == "prompts":  # RLOO: prompts alone, scored by a reward run checked now
        return _plan_prompts(store, config, model, tokenizer)
    learns_from_pairs = feedback_of(config.method) == "pairs"
    selection = select_for_config(store, config) if learns_from_pairs else select_examples(store, config, str(model))
    if tokenizer is None:
        from trainers.model_source import load_tokenizer_for

        tokenizer = load_tokenizer_for(model)
    if learns_from_pairs:
        return plan_selection(selection, tokenizer, config)
    return plan_examples(selection, tokenizer, config)  # SFT's demonstrations, KTO's labels


def _plan_prompts(store: Store, config: RunConfig, model: Path | str,
                  tokenizer: PreTrainedTokenizerBase | None) -> ExampleSelection:
    from trainers.reward_functions import check_reward_terms
    from trainers.rl_prompts import plan_prompts, select_prompts

    check_reward_terms(store, config, model)
    selection = select_prompts(store, config, str(model))
    if tokenizer is None:
        from trainers.model_source import load_tokenizer_for

        tokenizer = load_tokenizer_for(model)
    return plan_prompts(selection, tokenizer, config)


def prepare_run(
    store: Store,
    config: RunConfig,
    *,
    model_path: Path | str | None = None,
    runs_root: Path | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> PreparedRun:
    """Select the pairs and record a queued run; the model path is stored in the config.

    ``model_path`` (a .gguf or an HF model directory) overrides ``config.train_model``. Raises
    ``RunConfigError``/``PairSelectionError`` (both ``ValueError``) with a user-facing message.
    """
    model = model_path or config.train_model
    if not model:
        raise RunConfigError("no model to train: pass --train-model (a .gguf file or an HF model directory)")
    model = Path(model).expanduser().resolve()
    if not model.exists():
        raise RunConfigError(f"model to train not found: {model}")
    check_target_modules(model, config.target_modules)  # now, not once the model is loaded in the trainer
    dataset = config.dataset
    if dataset and dataset_file(dataset) is not None:  # a file is recorded by its absolute path; a name as given
        dataset = str(dataset_file(dataset).resolve())
    config = config.replace(train_model=str(model), dataset=dataset)
    selection = plan_for_config(store, config, model, tokenizer)  # the one count of pairs and steps
    chain = check_init_from(store, config, model)  # what it starts from, recorded with the run
    if runs_root is None:
        from store.locations import runs_dir

        runs_root = runs_dir()
    runs_root.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("run-%Y%m%d-%H%M%S", time.gmtime()) + f"-{selection.dataset_hash[:8]}"
    while True:  # claim the name by creating its work directory (two prepares at once get two names)
        output_dir = unique_output_dir(runs_root, stem)
        try:
            RunPaths(output_dir).work_dir.mkdir()
            break
        except FileExistsError:
            continue
    run_id = store.create_run(
        config.to_dict(), model_id=model.name, output_dir=str(output_dir), pair_ids=selection.train_ids,
        heldout_ids=selection.heldout_ids, dataset_hash=selection.dataset_hash,
    )
    store.set_run_summary(run_id, {"status": "queued", "selection": selection.report.to_dict(),
                                   "chain": chain.to_dict()})
    store.set_run_status(run_id, "queued", selection.report.describe())
    return PreparedRun(run_id=run_id, output_dir=output_dir, selection=selection, config=config)


def launch_command(run_id: int, db_path: Path | str, resume: bool = False) -> list[str]:
    """The command line that trains run ``run_id`` in its own process (same interpreter, no TUI imports).

    Equivalent to ``prefstudio --db DB train --run-id N [--resume]``.
    """
    cmd = [sys.executable, "-m", "trainers.run.cli", "--db", str(db_path), "--run-id", str(run_id)]
    return cmd + (["--resume"] if resume else [])


def start_run_process(run_id: int, db_path: Path | str, resume: bool = False, *, store: Store | None = None,
                      env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start the trainer process for a prepared run, its output appended to the run's log file.

    It runs in its own session, so a Ctrl-C meant for the studio does not reach it; cancel it with
    ``request_cancel``. With ``store`` given, the log goes to the run's ``<name>.log``.
    """
    log_path = None
    if store is not None:
        log_path = RunPaths(Path(store.get_run(run_id).output_dir)).log_path
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    out: IO[bytes] | int = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = log_path.open("ab")
    try:
        return subprocess.Popen(
            launch_command(run_id, db_path, resume), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=full_env, start_new_session=True,
        )
    finally:
        if not isinstance(out, int):
            out.close()


def request_cancel(pid: int) -> bool:
    """Ask a trainer process to stop at its next step boundary (SIGTERM); False if it is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def finalize_dead_run(store: Store, run_id: int, returncode: int | None) -> bool:
    """After the trainer process exited: if the run still looks active, mark it failed; return whether so.

    A process killed by the kernel's OOM killer (SIGKILL) cannot record anything itself.
    """
    run = store.get_run(run_id)
    if run.status not in ACTIVE:
        return False
    if returncode is not None and returncode < 0 and -returncode == signal.SIGKILL:
        message = ("the trainer was killed (SIGKILL), most likely out of memory: try a shorter --max-length, "
                   "a smaller --batch-size or --four-bit on a GPU; resume continues from the last checkpoint")
    else:
        message = f"the trainer process ended unexpectedly (exit code {returncode}); see the run's log"
    store.set_run_status(run_id, "failed", message)
    return True
