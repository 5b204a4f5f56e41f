"""Real DPO training on a tiny random model, in this process: it learns, and its outputs are whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_model import fill_separable, judge

from store.studio_store import Store
from trainers.model_source import ModelSourceError
from trainers.pair_selection import PairSelectionError
from trainers.run.lifecycle import prepare_run
from trainers.run.outputs import RunPaths
from trainers.run.process import CancelController, execute_run
from trainers.run_config import RunConfig

FAST = {"learning_rate": 5e-3, "lora_r": 8, "batch_size": 2, "save_steps": 5, "dtype": "fp32"}


@pytest.fixture
def store(tmp_path: Path, studio_home: Path):
    with Store.open(tmp_path / "studio.db") as opened:
        yield opened


def prepare(store: Store, model: Path, tmp_path: Path, **config):
    return prepare_run(store, RunConfig(**{**FAST, **config}), model_path=model, runs_root=tmp_path / "runs")


def test_separable_pairs_are_learned(store: Store, tiny_model_dir: Path, tmp_path: Path) -> None:
    fill_separable(store)
    prepared = prepare(store, tiny_model_dir, tmp_path, epochs=8, heldout_fraction=0.0)
    outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
    assert outcome.status == "done", outcome.message

    run = store.get_run(prepared.run_id)
    assert run.status == "done" and run.pid is not None and run.message.startswith("done: 24 steps")
    metrics = store.run_metrics(prepared.run_id)
    assert [m["step"] for m in metrics] == list(range(1, 25))
    assert metrics[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # the reference is the policy at step 0
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.1
    assert metrics[-1]["rewards/accuracies"] == 1.0 and metrics[-1]["rewards/margins"] > 0
    for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "learning_rate",
                "epoch", "tokens_per_s"):
        assert key in metrics[-1]

    out = Path(run.output_dir)
    assert out == prepared.output_dir
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "run_config.json", "pairs.json", "metrics.jsonl",
            "summary.json"} <= names
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))  # no pickles in the output
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 24
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "done" and summary["device"] == "cpu" and summary["dtype"] == "fp32"
    assert run.summary["steps"] == 24 and run.summary["last"]["rewards/accuracies"] == 1.0
    assert json.loads((out / "pairs.json").read_text())["train"] == run.pair_ids
    assert json.loads((out / "run_config.json").read_text())["config"]["epochs"] == 8
    assert not RunPaths(out).work_dir.exists()  # checkpoints are removed once a run is done

    from peft import PeftConfig

    adapter = PeftConfig.from_pretrained(str(out))
    assert adapter.r == 8 and set(adapter.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_heldout_pairs_are_evaluated(store: Store, tiny_model_dir: Path, tmp_path: Path) -> None:
    fill_separable(store)
    prepared = prepare(store, tiny_model_dir, tmp_path, epochs=2, heldout_fraction=0.34, loss_type="ipo")
    outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
    assert outcome.status == "done", outcome.message
    summary = store.get_run(prepared.run_id).summary
    assert summary["heldout_pairs"] == 2 and summary["train_pairs"] == 4
    assert "eval_loss" in summary["eval"] and "eval_rewards/accuracies" in summary["eval"]


def test_prompts_longer_than_max_length_fail_before_the_run_starts(store: Store, tiny_model_dir: Path,
                                                                     tmp_path: Path) -> None:
    session = store.create_session("")
    judge(store, session, "word " * 40, "yes", "no")
    with pytest.raises(PairSelectionError) as caught:
        prepare(store, tiny_model_dir, tmp_path, max_length=16, heldout_fraction=0.0)
    message = str(caught.value)
    assert "--max-length 16 is shorter than every training prompt" in message and "none of the 1 training" in message
    assert "--max-length" in message.rsplit(";", 1)[1]  # the fix names a length that fits
    assert store.list_runs() == []  # counted before anything is recorded or converted


def test_missing_or_corrupt_model_fails_clearly(store: Store, tiny_model_dir: Path, tmp_path: Path) -> None:
    fill_separable(store)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelSourceError) as caught:  # its tokenizer is read when the run is prepared
        prepare(store, broken, tmp_path)
    assert "cannot load" in str(caught.value) and "broken.gguf" in str(caught.value)
    assert store.list_runs() == []
    assert not [p for p in (tmp_path / "home").rglob("hf-*")]  # no half-converted model left in the cache
    assert not [p for p in (tmp_path / "home").rglob("*.partial")]

    empty_dir = tmp_path / "not-a-model"
    empty_dir.mkdir()
    with pytest.raises(ModelSourceError, match="no config.json"):
        prepare(store, empty_dir, tmp_path)


def test_a_done_run_cannot_start_again(store: Store, tiny_model_dir: Path, tmp_path: Path) -> None:
    fill_separable(store)
    prepared = prepare(store, tiny_model_dir, tmp_path, max_steps=2, heldout_fraction=0.0)
    assert execute_run(store, prepared.run_id, log=lambda _line: None).status == "done"
    from trainers.run.errors import RunError

    with pytest.raises(RunError, match="already started"):
        execute_run(store, prepared.run_id)
    with pytest.raises(RunError, match="already done"):
        execute_run(store, prepared.run_id, resume=True)


def test_cancel_event_stops_at_a_step_and_keeps_the_adapter(store: Store, tiny_model_dir: Path,
                                                            tmp_path: Path) -> None:
    fill_separable(store)
    prepared = prepare(store, tiny_model_dir, tmp_path, max_steps=50, heldout_fraction=0.0, save_steps=100)
    cancel = CancelController()
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("step 3/"):
            cancel.event.set()  # what the SIGTERM handler does; step 3 is already over when it logs

    outcome = execute_run(store, prepared.run_id, cancel=cancel, log=log)
    run = store.get_run(prepared.run_id)
    assert outcome.status == "cancelled" and run.status == "cancelled" and "cancelled at step 4" in run.message
    assert (prepared.output_dir / "adapter_model.safetensors").exists()
    assert json.loads((prepared.output_dir / "summary.json").read_text())["status"] == "cancelled"
    assert (RunPaths(prepared.output_dir).work_dir / "checkpoint-4").is_dir()  # saved at the cancel step

    outcome = execute_run(store, prepared.run_id, resume=True, log=lambda _line: None)
    run = store.get_run(prepared.run_id)
    assert outcome.status == "done" and run.summary["steps"] == 50
    assert run.summary["resumed_from"].endswith("checkpoint-4")
    assert [m["step"] for m in store.run_metrics(prepared.run_id)] == list(range(1, 51))
    assert len((prepared.output_dir / "metrics.jsonl").read_text().splitlines()) == 50


def test_disk_full_while_saving_fails_clearly_and_leaves_no_output(
    store: Store, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import trainers.run.outputs as run_outputs

    def full(_folder: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_outputs, "_fsync_tree", full)
    fill_separable(store)
    prepared = prepare(store, tiny_model_dir, tmp_path, max_steps=2, heldout_fraction=0.0)
    outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
    run = store.get_run(prepared.run_id)
    assert outcome.status == "failed" and run.status == "failed"
    assert "disk is full" in run.message and "resume" in run.message
    assert not prepared.output_dir.exists()
    assert not [p for p in prepared.output_dir.parent.iterdir() if ".staging" in p.name]


def test_disk_full_in_a_checkpoint_fails_clearly(
    store: Store, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainers.run.callbacks import DropPickledArgs

    def full(*_args, **_kwargs) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed") from OSError(28, "No space left on device")

    monkeypatch.setattr(DropPickledArgs, "on_save", full)
    fill_separable(store)
    prepared = prepare(store, tiny_model_dir, tmp_path, max_steps=4, save_steps=2, heldout_fraction=0.0)
    outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
    assert outcome.status == "failed" and "disk is full" in outcome.message
    assert not prepared.output_dir.exists()


def test_out_of_memory_fails_with_the_fix(
    store: Store, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from trl import DPOTrainer

    def oom(*_args, **_kwargs):  # noqa: ANN202
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(DPOTrainer, "training_step", oom)
    fill_separable(store)
    prepared = prepare(store, tiny_model_dir, tmp_path, max_steps=2, heldout_fraction=0.0)
    outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
    run = store.get_run(prepared.run_id)
    assert run.status == "failed" and run.message.startswith("out of memory")
    for fix in ("--max-length", "--batch-size", "--four-bit"):
        assert fix in run.message
    assert outcome.status == "failed" and not prepared.output_dir.exists()
