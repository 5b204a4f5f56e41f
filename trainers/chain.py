"""Runs that build on runs (``--init-from RUN``): which earlier run a run starts from, checked before anything
is written, and the chain of runs behind it, read from the store.

A run with ``init_from`` trains a new LoRA on the base with the earlier run's adapter merged in
(``adapter_sum.merge_adapter``, through ``model_source.load_model(merge_adapter=...)``), and publishes the sum
of the two (``adapter_sum.sum_adapters``; its own LoRA is kept in ``link-adapter/``). So every run's adapter,
applied to the base, is that run's whole model, whatever its chain: the GGUF export, the engine and the next
run in the chain need nothing else. Only language-model adapters chain (sft, kto, dpo): a reward model's
adapter has a score head and is not a model to chat with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from store.errors import RecordNotFoundError
from trainers.gguf_adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from trainers.run.outputs import RunFolderError, checked_run_paths, runs_roots
from trainers.run_config import RunConfig, RunConfigError

if TYPE_CHECKING:
    from peft import PeftModel

    from store.records import RunRecord
    from store.studio_store import Store

# Methods whose adapter is a causal-LM LoRA: what a run can start from, and what can start from one.
CAUSAL_LM_METHODS = ("sft", "kto", "dpo")
LINK_ADAPTER_DIR = "link-adapter"  # a chained run's own LoRA (trained on the merged base), beside the sum
_MAX_CHAIN = 1000  # a chain longer than this is a loop in a database edited by hand


class ChainError(RunConfigError):
    """``--init-from`` names a run this run cannot start from; the message names the run and why."""


@dataclass(frozen=True)
class ChainLink:
    """One earlier run of a chain, as shown to the user."""

    run_id: int
    method: str
    status: str


@dataclass(frozen=True)
class RunChain:
    """What a run starts from: the earlier runs, oldest first (none for a run on the base), and the adapter
    of the last of them (the whole chain's effect, merged into the base before training)."""

    links: tuple[ChainLink, ...] = ()
    parent_adapter: Path | None = None

    @property
    def run_ids(self) -> list[int]:
        return [link.run_id for link in self.links]

    def to_dict(self) -> dict[str, object]:
        """What a run records of its chain (summary, run_config.json)."""
        return {"init_from": self.links[-1].run_id if self.links else None, "runs": self.run_ids,
                "parent_adapter": str(self.parent_adapter) if self.parent_adapter else None}

    def describe(self) -> str:
        """``run 1 (sft) → run 2 (dpo)``, or ``the base model``."""
        if not self.links:
            return "the base model"
        return " → ".join(f"run {link.run_id} ({link.method})" for link in self.links)


def method_of(run: RunRecord) -> str:
    """The method a stored run trained (runs recorded before methods existed were DPO)."""
    return str(run.config.get("method") or "dpo")


def chain_of(store: Store, run: RunRecord) -> list[ChainLink]:
    """The runs behind ``run`` by their ``init_from``, oldest first, ``run`` last. A run missing from the store
    ends the chain there (shown with status ``missing``); a loop (only a hand-edited database has one) stops."""
    links = [ChainLink(run.id, method_of(run), run.status)]
    seen = {run.id}
    parent = run.config.get("init_from")
    while isinstance(parent, int) and parent not in seen and len(links) < _MAX_CHAIN:
        seen.add(parent)
        try:
            earlier = store.get_run(parent)
        except RecordNotFoundError:
            links.append(ChainLink(parent, "?", "missing"))
            break
        links.append(ChainLink(earlier.id, method_of(earlier), earlier.status))
        parent = earlier.config.get("init_from")
    return list(reversed(links))


def check_init_from(store: Store, config: RunConfig, model: Path | str) -> RunChain:
    """The chain a run of ``config`` on ``model`` starts from, or ``ChainError`` saying why it cannot: the run
    must exist, have finished (done) with its adapter on disk, have trained a language model (sft, kto, dpo)
    on this same base model, and this run's method must be one that chains. Reads the store, writes nothing."""
    run_id = config.init_from
    if run_id is None:
        return RunChain()
    where = f"--init-from {run_id}"
    if config.method not in CAUSAL_LM_METHODS:
        raise ChainError(f"{where}: a {config.method} run cannot start from an earlier run's adapter; --init-from "
                         f"works for {', '.join(CAUSAL_LM_METHODS)} runs")
    try:
        run = store.get_run(run_id)
    except RecordNotFoundError:
        raise ChainError(f"{where}: there is no run {run_id} in {store.path} (`prefstudio runs` lists them)") from None
    method = method_of(run)
    if method not in CAUSAL_LM_METHODS:
        raise ChainError(f"{where}: run {run_id} trained a {method} model, not a language-model adapter; start from "
                         f"a {', '.join(CAUSAL_LM_METHODS)} run")
    if run.status != "done":
        detail = f" ({run.message})" if run.message else ""
        raise ChainError(f"{where}: run {run_id} is {run.status}{detail}; only a run that finished (done) has an "
                         "adapter to start from")
    try:
        folder = checked_run_paths(run.output_dir, runs_roots(store.path)).output_dir
    except RunFolderError as exc:
        raise ChainError(f"{where}: {exc}") from None
    missing = [name for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG) if not (folder / name).is_file()]
    if missing:
        raise ChainError(f"{where}: run {run_id} has no adapter in {folder} ({', '.join(missing)} missing)")
    problem = other_base(run, Path(model))
    if problem:
        raise ChainError(f"{where}: {problem}")
    return RunChain(links=tuple(chain_of(store, run)), parent_adapter=folder)


def other_base(run: RunRecord, model: Path) -> str | None:
    """Why ``run`` was trained on another base model than ``model``, or None when it is the same one: the same
    GGUF by sha256 (the run's summary records it), else the same model directory."""
    from trainers.model_source import sha256_of

    recorded = (run.summary or {}).get("model") or {}
    trained_on = str(recorded.get("origin") or run.config.get("train_model") or "")
    earlier_sha = recorded.get("sha256")
    model = model.expanduser().resolve()
    if earlier_sha and model.is_file():
        sha = sha256_of(model)
        if sha == earlier_sha:
            return None
        return (f"run {run.id} was trained on {run.model_id} (sha256 {earlier_sha[:12]}…), not on {model.name} "
                f"(sha256 {sha[:12]}…); its adapter only fits the model it was trained on: train on "
                f"{trained_on or run.model_id}, or start from a run on {model.name}")
    if trained_on and Path(trained_on).expanduser().resolve() == model:
        return None
    return (f"run {run.id} was trained on {trained_on or run.model_id}, not on {model}; its adapter only fits the "
            "model it was trained on")


def run_chain(store: Store, config: RunConfig) -> RunChain:
    """The chain of a run about to train (checked again: the earlier run's adapter may be gone since)."""
    if config.init_from is None:
        return RunChain()
    if not config.train_model:
        raise ChainError(f"--init-from {config.init_from}: the run names no model to train")
    return check_init_from(store, config, config.train_model)


def save_run_adapter(model: PeftModel, staging: Path, chain: RunChain) -> None:
    """Write a trained run's adapter into ``staging``: the PEFT LoRA as trained, or for a chained run the sum
    of the earlier adapter and this run's LoRA (the whole chain's effect on the base), with this run's own
    LoRA in ``link-adapter/``."""
    if chain.parent_adapter is None:
        model.save_pretrained(str(staging), safe_serialization=True)
        return
    from trainers.adapter_sum import sum_adapters

    link = staging / LINK_ADAPTER_DIR
    model.save_pretrained(str(link), safe_serialization=True)
    sum_adapters(chain.parent_adapter, link, staging)
