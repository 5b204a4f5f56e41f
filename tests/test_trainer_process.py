"""The trainer in its own process, as the studio runs it: start, live metrics, SIGTERM, resume, crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import prefstudio_bin
from tiny_model import fill_separable

from store.studio_store import Store
from trainers.run.lifecycle import finalize_dead_run, launch_command, prepare_run, request_cancel
from trainers.run.outputs import RunPaths
from trainers.run_config import RunConfig


def studio_has_train_command() -> bool:
    from studio import cli

    return any(c.name == "train" for c in cli.app.registered_commands)


def train_command(db: Path, run_id: int, resume: bool = False) -> list[str]:
    """``prefstudio --db DB train --run-id N`` once the studio wires it in; the module entry point until then."""
    if studio_has_train_command():
        return [prefstudio_bin(), "--db", str(db), "train", "--run-id", str(run_id)] + (["--resume"] if resume else [])
    return launch_command(run_id, db, resume)


def wait_until(condition, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"trainer exited early ({proc.returncode}):\n{out[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


@pytest.fixture
def db(tmp_path: Path, studio_home: Path) -> Path:
    return tmp_path / "studio.db"


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))


def test_sigterm_cancels_at_a_step_and_resume_continues(db: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    with Store.open(db) as store:
        fill_separable(store)
        # 120 steps: room for the cancel to land mid-run (it does within a step or two of the request), and a
        # resume that finishes in a few seconds.
        config = RunConfig(max_steps=120, learning_rate=5e-3, heldout_fraction=0.0, save_steps=1000)
        prepared = prepare_run(store, config, model_path=tiny_model_dir, runs_root=tmp_path / "runs")
        run_id = prepared.run_id

        proc = start(train_command(db, run_id))
        wait_until(lambda: len(store.run_metrics(run_id)) >= 2, proc=proc)
        run = store.get_run(run_id)
        assert run.status == "training" and run.pid == proc.pid
        assert request_cancel(proc.pid)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130, out

        run = store.get_run(run_id)
        assert run.status == "cancelled", run.message
        stopped = run.summary["steps"]
        assert 2 <= stopped < 120 and f"cancelled at step {stopped}" in run.message
        assert (prepared.output_dir / "adapter_model.safetensors").exists()
        assert (RunPaths(prepared.output_dir).work_dir / f"checkpoint-{stopped}").is_dir()
        assert not list(RunPaths(prepared.output_dir).work_dir.rglob("training_args.bin"))
        assert max(m["step"] for m in store.run_metrics(run_id)) == stopped

        proc = start(train_command(db, run_id, resume=True))
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out
        run = store.get_run(run_id)
        assert run.status == "done" and run.summary["steps"] == 120
        assert run.summary["resumed_from"].endswith(f"checkpoint-{stopped}")
        steps = [m["step"] for m in store.run_metrics(run_id)]
        assert steps == list(range(1, 121))  # resumed exactly after the cancel step, nothing repeated
        assert (prepared.output_dir / "adapter_model.safetensors").exists()
        assert not RunPaths(prepared.output_dir).work_dir.exists()


def test_killed_trainer_is_marked_failed(db: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    with Store.open(db) as store:
        fill_separable(store)
        config = RunConfig(max_steps=5000, learning_rate=5e-3, heldout_fraction=0.0, save_steps=1000)
        prepared = prepare_run(store, config, model_path=tiny_model_dir, runs_root=tmp_path / "runs")
        proc = start(launch_command(prepared.run_id, db))
        wait_until(lambda: len(store.run_metrics(prepared.run_id)) >= 1, proc=proc)
        os.kill(proc.pid, signal.SIGKILL)  # what the kernel's OOM killer does
        proc.communicate(timeout=30)
        assert store.get_run(prepared.run_id).status == "training"  # the process could not say anything
        assert finalize_dead_run(store, prepared.run_id, proc.returncode)
        run = store.get_run(prepared.run_id)
        assert run.status == "failed" and "out of memory" in run.message and "--max-length" in run.message
        assert not prepared.output_dir.exists()  # nothing that looks like a finished adapter


def test_headless_train_prepares_and_trains(db: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    with Store.open(db) as store:
        fill_separable(store)
    cmd = [sys.executable, "-m", "trainers.train_cli", "--db", str(db), "--train-model", str(tiny_model_dir),
           "--max-steps", "3", "--lora-r", "4", "--heldout-fraction", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "6 for training, 0 held out" in proc.stdout and "step 3/3" in proc.stdout
    with Store.open(db) as store:
        (run,) = store.list_runs()
        assert run.status == "done" and run.config["lora_r"] == 4
        assert Path(run.output_dir).parent == tmp_path / "home" / "data" / "runs"


def test_headless_train_without_pairs_is_one_error_line(db: Path, tiny_model_dir: Path) -> None:
    cmd = [sys.executable, "-m", "trainers.train_cli", "--db", str(db), "--train-model", str(tiny_model_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no preference pairs in the store")
    assert "Traceback" not in proc.stderr


def test_resume_after_a_kill_logs_each_step_once(db: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    with Store.open(db) as store:
        fill_separable(store)
        config = RunConfig(max_steps=40, learning_rate=5e-3, heldout_fraction=0.0, save_steps=5)
        prepared = prepare_run(store, config, model_path=tiny_model_dir, runs_root=tmp_path / "runs")
        proc = start(launch_command(prepared.run_id, db))
        wait_until(lambda: len(store.run_metrics(prepared.run_id)) >= 8, proc=proc)  # past the step-5 checkpoint
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        finalize_dead_run(store, prepared.run_id, proc.returncode)
        assert store.get_run(prepared.run_id).status == "failed"
        resumed = start(launch_command(prepared.run_id, db, resume=True))
        out, _ = resumed.communicate(timeout=300)
        assert resumed.returncode == 0 and store.get_run(prepared.run_id).status == "done", out[-3000:]
        steps = [m["step"] for m in store.run_metrics(prepared.run_id)]
        assert steps == list(range(1, 41))  # the steps after the checkpoint were logged again, once


def test_resume_skips_a_checkpoint_the_kill_left_half_written(tmp_path: Path) -> None:
    from trainers.run.checkpoints import last_complete_checkpoint

    for step, complete in ((5, True), (10, False), (2, True)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"x")
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    said: list[str] = []
    assert last_complete_checkpoint(tmp_path, said.append) == str(tmp_path / "checkpoint-5")
    assert not (tmp_path / "checkpoint-10").exists() and (tmp_path / "checkpoint-2").exists()
    assert said == ["removing incomplete checkpoint-10 (the trainer stopped while writing it)"]
    assert last_complete_checkpoint(tmp_path / "nothing-here", said.append) is None
