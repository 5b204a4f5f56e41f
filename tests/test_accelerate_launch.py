"""A run trained in two processes with ``accelerate launch`` (DDP over gloo, on the CPU): one record, the
one-process loss, and a cancel that stops both ranks after the same step.

``--num-processes 2`` makes the run's own process start ``accelerate launch --multi_gpu --num_processes 2``
(``trainers.run.launcher``); each rank runs the ordinary run code, rank 0 records.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from store.studio_store import Store
from tests.tiny_model import build_tiny_model, fill_separable
from trainers.methods import METHODS
from trainers.run.lifecycle import launch_command, prepare_run, request_cancel, start_run_process
from trainers.run.outputs import RunPaths
from trainers.run.process import execute_run, wait_for_exit
from trainers.run_config import RunConfig

# Every step takes all six pairs (3 per rank x 2 ranks, or 6 in one process), so both runs see the same
# batches whatever order their samplers draw them in. No dropout anywhere, fp32.
BASE = {"device": "cpu", "dtype": "fp32", "heldout_fraction": 0.0, "learning_rate": 5e-3, "lora_dropout": 0.0,
        "max_length": 64, "threads": 1, "seed": 0, "save_steps": 1000}
STEPS = 3
# DDP averages the two ranks' gradients of their 3-pair mean losses: the gradient of the 6-pair mean the one
# process computes, the same numbers summed in another order. In fp32 that differs in the 6th-7th digit;
# three Adam steps keep it there (measured: |difference| < 1e-5 on losses ~0.69 -> ~0.5). 1e-3 leaves room
# and still fails for any real difference: a rank training on the same 3 pairs as the other, or a rank
# whose gradient is not averaged, moves the third step's loss by more than 1e-2 (the loss falls ~0.06 per step).
LOSS_TOLERANCE = 1e-3
# A hang (a rank left waiting in a collective) is caught by these; a run takes 25-40 s on an idle 2-core machine,
# up to 160 s with eight other test runs beside it.
PROCESS_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-accelerate"))


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("accelerate-store") / "studio.db"
    with Store.open(path) as store:
        fill_separable(store)
    return path


def prepare(db: Path, model: Path, **changes: object) -> int:
    with Store.open(db) as store:
        config = RunConfig(**{**BASE, **changes})
        return prepare_run(store, config, model_path=model, runs_root=db.parent / "runs").run_id


def test_two_processes_record_one_run_and_reach_the_one_process_loss(db: Path, tiny_model_dir: Path) -> None:
    two = prepare(db, tiny_model_dir, num_processes=2, batch_size=3, max_steps=STEPS)
    one = prepare(db, tiny_model_dir, num_processes=1, batch_size=6, max_steps=STEPS)

    proc = subprocess.run(launch_command(two, db), capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "training in 2 processes" in proc.stdout
    assert "rank 1: done" in proc.stdout  # the second rank trained to the end, and recorded nothing
    with Store.open(db) as store:
        outcome = execute_run(store, one, log=lambda line: None)
        assert outcome.status == "done", outcome.message
        run_two = store.get_run(two)
        rows = store.run_metrics(two)
        loss_one = store.run_metrics(one)[-1]["loss"]

    assert run_two.status == "done", run_two.message
    # Exactly one set of metric rows: each step once (a second recording rank would double them).
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1))
    output = Path(run_two.output_dir)
    lines = (output / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, STEPS + 1))
    assert sorted(p.name for p in output.glob("adapter_model*")) == ["adapter_model.safetensors"]
    assert not list(output.parent.glob(f".{output.name}.*"))  # no work or staging folder of either rank left
    assert run_two.summary["steps"] == STEPS
    # Two ranks x 3 pairs per step = the one process's 6 pairs per step: the same losses.
    print(f"final loss: two processes {rows[-1]['loss']:.7f}, one process {loss_one:.7f}")
    assert rows[-1]["loss"] == pytest.approx(loss_one, abs=LOSS_TOLERANCE)
    assert rows[-1]["loss"] < rows[0]["loss"]  # it learned (so the match means something)


# The other methods, each fed from the same judged pairs (SFT on the chosen replies, KTO on the pairs unpaired, the
# reward model on the pairs). Their losses are not compared with one process: SFT's token-mean loss and KTO's
# batch KL estimate are computed per rank, so one process on the whole batch is not the same sum.
OTHER_METHODS = {"sft": {"sft_include_chosen": True}, "kto": {"kto_from_pairs": True}, "reward": {}}


@pytest.mark.parametrize("method", sorted(m for m in OTHER_METHODS if m in METHODS))
def test_every_method_trains_in_two_processes_with_one_record(db: Path, tiny_model_dir: Path, method: str) -> None:
    run_id = prepare(db, tiny_model_dir, method=method, num_processes=2, batch_size=3, max_steps=2,
                     **OTHER_METHODS[method])
    proc = subprocess.run(launch_command(run_id, db), capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rank 1: done" in proc.stdout
    with Store.open(db) as store:
        run = store.get_run(run_id)
        rows = store.run_metrics(run_id)
    assert run.status == "done", run.message
    assert [row["step"] for row in rows] == [1, 2]
    output = Path(run.output_dir)
    assert sorted(p.name for p in output.glob("adapter_model*")) == ["adapter_model.safetensors"]
    assert not list(output.parent.glob(f".{output.name}.*"))


def test_cancel_stops_every_rank_after_the_same_step(db: Path, tiny_model_dir: Path) -> None:
    run_id = prepare(db, tiny_model_dir, num_processes=2, batch_size=3, max_steps=5000)
    with Store.open(db) as store:
        proc = start_run_process(run_id, db, store=store)  # as the train screen starts it
        log_path = RunPaths(Path(store.get_run(run_id).output_dir)).log_path
        try:
            deadline = time.monotonic() + PROCESS_TIMEOUT_S
            while len(store.run_metrics(run_id)) < 2:
                assert proc.poll() is None, log_path.read_text(encoding="utf-8")[-3000:]
                assert time.monotonic() < deadline, "the two ranks never trained two steps"
                time.sleep(0.2)
            assert request_cancel(proc.pid)  # what the train screen's cancel does
            # Without the step-boundary agreement rank 0 stops alone and rank 1 waits in its next all-reduce.
            assert wait_for_exit(proc, timeout=PROCESS_TIMEOUT_S) == 130, log_path.read_text(encoding="utf-8")[-3000:]
        finally:
            if proc.poll() is None:  # a failed test leaves no ranks behind: the launch's own group first
                for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                    os.killpg(int(child), signal.SIGKILL)
                os.killpg(proc.pid, signal.SIGKILL)
        run = store.get_run(run_id)
    log = log_path.read_text(encoding="utf-8")
    assert run.status == "cancelled", run.message
    pattern = r"cancel: stopping after step (\d+) \(rank (\d) of 2\)"
    stopped = {rank: int(step) for step, rank in re.findall(pattern, log)}
    assert set(stopped) == {"0", "1"}, log[-3000:]
    assert stopped["0"] == stopped["1"] == run.summary["steps"]
    assert run.summary["steps"] < 5000
    # Both ranks saved the checkpoint of that step (each its own RNG state), so --resume continues from it.
    checkpoint = RunPaths(Path(run.output_dir)).work_dir / f"checkpoint-{stopped['0']}"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    assert (Path(run.output_dir) / "adapter_model.safetensors").is_file()



def test_each_rank_takes_its_own_batch_so_the_planned_steps_shrink() -> None:
    from trainers.run.plan import planned_steps

    assert planned_steps(12, RunConfig(batch_size=2, epochs=1)) == 6
    assert planned_steps(12, RunConfig(batch_size=2, epochs=1, num_processes=2)) == 3
    with pytest.raises(ValueError, match="--num-processes must be 1 or more"):
        RunConfig(num_processes=0)


def test_the_launch_is_accelerate_ddp_with_the_run_on_every_rank() -> None:
    from trainers.run.launcher import accelerate_command

    cmd = accelerate_command(7, "/data/studio.db", 2, resume=True, port=29999)
    # --multi_gpu is accelerate's multi-process (torchrun) launcher; its --cpu would start one process only.
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd and "--cpu" not in cmd
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[cmd.index("--main_process_port") + 1] == "29999"
    assert cmd[cmd.index("--module") + 1:] == ["trainers.run.cli", "--db", "/data/studio.db", "--run-id", "7",
                                                "--resume"]
