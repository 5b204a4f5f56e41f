"""Training runs in the store: lifecycle, metrics, and runs left behind by a dead process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from tiny_model import fill_separable

from store import RecordNotFoundError, Store
from store.processes import process_start_time


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "studio.db") as opened:
        yield opened


def new_run(store: Store, **overrides) -> int:
    args = {
        "config": {"beta": 0.1, "lr": 5e-6},
        "model_id": "gemma-3-270m",
        "output_dir": "/tmp/runs/1",
        "pair_ids": ["j1", "j2c5"],
        "heldout_ids": ["j3"],
    }
    return store.create_run(**{**args, **overrides})


def test_run_lifecycle(store: Store) -> None:
    run_id = new_run(store, dataset_hash="abc123")
    run = store.get_run(run_id)
    assert run.status == "queued" and run.pid is None and run.message is None and run.summary is None
    assert run.config == {"beta": 0.1, "lr": 5e-6} and run.model_id == "gemma-3-270m"
    assert run.pair_ids == ["j1", "j2c5"] and run.heldout_ids == ["j3"]
    assert run.dataset_hash == "abc123" and run.output_dir == "/tmp/runs/1"
    assert run.created_at == run.updated_at

    store.set_run_status(run_id, "loading", message="loading the model", pid=4242)
    store.set_run_status(run_id, "training")
    run = store.get_run(run_id)
    assert (run.status, run.message, run.pid) == ("training", None, 4242)  # pid kept, message replaced
    assert run.updated_at > run.created_at

    store.set_run_summary(run_id, {"eval_accuracy": 0.75, "steps": 12})
    store.set_run_status(run_id, "done", message="finished")
    run = store.get_run(run_id)
    assert run.status == "done" and run.message == "finished"
    assert run.summary == {"eval_accuracy": 0.75, "steps": 12}


def test_run_errors(store: Store) -> None:
    run_id = new_run(store)
    with pytest.raises(ValueError, match="unknown run status"):
        store.set_run_status(run_id, "paused")
    assert store.get_run(run_id).status == "queued"
    with pytest.raises(RecordNotFoundError):
        store.get_run(999)
    with pytest.raises(RecordNotFoundError):
        store.set_run_status(999, "done")
    with pytest.raises(RecordNotFoundError):
        store.add_run_metrics(999, 1, None, {"loss": 1.0})


def test_list_runs_newest_first(store: Store) -> None:
    first, second = new_run(store), new_run(store)
    assert [run.id for run in store.list_runs()] == [second, first]


def test_metrics_in_step_order_and_after_step(store: Store) -> None:
    run_id = new_run(store)
    other = new_run(store)
    for step in (3, 1, 2):
        store.add_run_metrics(run_id, step, step / 10, {"loss": 1.0 / step, "rewards/margins": step})
    store.add_run_metrics(other, 1, None, {"loss": 9.0})
    metrics = store.run_metrics(run_id)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert metrics[0] == {"loss": 1.0, "rewards/margins": 1, "step": 1, "epoch": 0.1}
    assert [m["step"] for m in store.run_metrics(run_id, after_step=1)] == [2, 3]
    assert store.run_metrics(run_id, after_step=3) == []
    assert store.run_metrics(other) == [{"loss": 9.0, "step": 1, "epoch": None}]


def test_mark_stale_runs(store: Store) -> None:
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    gone = new_run(store)
    store.set_run_status(gone, "training", pid=exited.pid)
    alive = new_run(store)
    store.set_run_status(alive, "loading", pid=os.getpid())
    prepared = new_run(store)  # `train --prepare-only`: queued, no process yet
    started_without_pid = new_run(store)
    store.set_run_status(started_without_pid, "training")
    finished = new_run(store)
    store.set_run_status(finished, "done", pid=exited.pid)

    assert store.mark_stale_runs() == [gone, started_without_pid]

    run = store.get_run(gone)
    assert run.status == "failed"
    assert run.message == (
        f"the training process (pid {exited.pid}) is gone; marked failed when the studio started"
    )
    assert store.get_run(started_without_pid).message == (
        "the training process (no pid recorded) is gone; marked failed when the studio started")
    assert store.get_run(alive).status == "loading"
    assert store.get_run(prepared).status == "queued" and store.get_run(prepared).message is None
    assert store.get_run(finished).status == "done"
    assert store.mark_stale_runs() == []


@pytest.mark.skipif(process_start_time(os.getpid()) is None, reason="needs /proc to tell a process's start time")
def test_a_pid_taken_by_another_program_is_not_the_trainer(store: Store) -> None:
    # The trainer died without recording it; later another program got its pid (here: this test process,
    # alive, but started at another time than the one recorded with the pid).
    reused = new_run(store)
    store.set_run_status(reused, "training", pid=os.getpid())
    store.db.execute("UPDATE runs SET pid_started = 'linux-ticks:1' WHERE id = ?", [reused])
    mine = new_run(store)
    store.set_run_status(mine, "training", pid=os.getpid())  # recorded with the true start time

    assert store.mark_stale_runs([reused, mine], when="by the test") == [reused]
    run = store.get_run(reused)
    assert run.status == "failed" and run.message == (
        f"the training process (pid {os.getpid()}) is gone: that pid now belongs to another program; "
        "marked failed by the test")
    assert store.get_run(mine).status == "training"


def _dead_pid() -> int:
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    return exited.pid


def test_report_and_compare_say_a_run_whose_process_is_gone_is_not_running(
        tmp_path: Path, studio_home: Path, default_model: Path) -> None:
    # A trainer that could not record its own failure (a locked database, a full disk) leaves 'training'.
    db = tmp_path / "studio.db"
    with Store.open(db) as store:
        run_id = new_run(store, output_dir=str(tmp_path / "runs" / "r1"))
        store.set_run_status(run_id, "training", pid=_dead_pid())
    report = run_cli("--db", str(db), "--model", str(default_model), "report", "--run", str(run_id),
                     "--out", str(tmp_path / "report"), home=studio_home)
    assert report.returncode == 1 and "Traceback" not in report.stderr
    assert "still training" not in report.stderr
    assert f"run {run_id} is failed: the training process (pid " in report.stderr and "is gone" in report.stderr
    with Store.open(db) as store:
        run = store.get_run(run_id)
        assert run.status == "failed" and run.message.endswith("marked failed when its report was asked for")
        store.set_run_status(run_id, "training", pid=_dead_pid())
    compare = run_cli("--db", str(db), "--model", str(default_model), "compare", "--run", str(run_id),
                      home=studio_home)
    assert compare.returncode == 1 and "Traceback" not in compare.stderr
    assert f"run {run_id} is failed: the training process (pid " in compare.stderr and "is gone" in compare.stderr
    with Store.open(db) as store:
        assert store.get_run(run_id).status == "failed"


def test_a_prepared_run_survives_opening_the_studio_and_still_trains(
        tmp_path: Path, studio_home: Path, tiny_model_dir: Path) -> None:
    db = tmp_path / "studio.db"
    with Store.open(db) as store:
        fill_separable(store)
    base = [sys.executable, "-m", "trainers.train_cli", "--db", str(db)]
    prepared = subprocess.run([*base, "--train-model", str(tiny_model_dir), "--max-steps", "2", "--lora-r", "4",
                               "--heldout-fraction", "0", "--prepare-only"], capture_output=True, text=True,
                              timeout=180)
    assert prepared.returncode == 0, prepared.stderr
    with Store.open(db) as store:
        (run,) = store.list_runs()
        assert f"--run-id {run.id}" in prepared.stdout  # the accelerate launch command it printed
        assert store.mark_stale_runs() == []  # what opening the studio does
        assert store.get_run(run.id).status == "queued"
    # What `accelerate launch -m trainers.train_cli --db DB --run-id N` runs in each process.
    trained = subprocess.run([*base, "--run-id", str(run.id)], capture_output=True, text=True, timeout=180)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    with Store.open(db) as store:
        assert store.get_run(run.id).status == "done"


def test_votes_and_evaluations_are_kept_with_the_run(tmp_path) -> None:
    with Store.open(tmp_path / "v.db") as store:
        run_id = store.create_run({}, "m.gguf", str(tmp_path / "out"), ["j1"], ["j2"])
        store.record_vote(run_id, "Q1", 7, True, "a", "left", "right")
        store.record_vote(run_id, "Q2", 8, False, "tie")
        with pytest.raises(ValueError, match="unknown vote"):
            store.record_vote(run_id, "Q3", 9, False, "c")
        assert [(v["prompt"], v["tuned_on_left"], v["vote"]) for v in store.votes(run_id)] == [
            ("Q1", True, "a"), ("Q2", False, "tie")]
        assert store.latest_evaluation(run_id, "heldout_metrics") is None
        store.save_evaluation(run_id, "heldout_metrics", {"accuracy": 0.5})
        store.save_evaluation(run_id, "heldout_metrics", {"accuracy": 0.75})
        assert store.latest_evaluation(run_id, "heldout_metrics") == {"accuracy": 0.75}
        with pytest.raises(RecordNotFoundError):
            store.record_vote(999, "Q", 1, True, "a")


async def test_the_train_screen_says_a_followed_run_whose_trainer_died_is_not_running(
        tmp_path: Path, studio_home: Path, default_model: Path) -> None:
    from dataclasses import replace

    from conftest import wait_for

    from studio.settings import StudioSettings
    from studio.tui.app import PreferenceStudioApp
    from studio.tui.screens.train import TrainScreen

    with Store.open(tmp_path / "studio.db") as store:
        # Started by an earlier studio; its trainer died after this studio opened (so not marked at start).
        run_id = new_run(store, output_dir=str(tmp_path / "runs" / "r1"))
        store.set_run_status(run_id, "training", "step 3", pid=os.getpid())
        app = PreferenceStudioApp(settings=replace(StudioSettings(), model=default_model), store=store)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("f5")
            await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen) and app.screen.run_id == run_id)
            await pilot.pause(1.2)  # polled while the trainer lives: still training
            assert store.get_run(run_id).status == "training"
            store.set_run_status(run_id, "training", "step 3", pid=_dead_pid())
            status = app.screen.query_one("#train-status")
            await wait_for(pilot, lambda: "is gone" in str(status.render()), timeout=10)
            text = str(status.render())
            assert f"Run {run_id} failed." in text and "marked failed when the train screen found it" in text
            assert store.get_run(run_id).status == "failed"


@pytest.mark.skipif(process_start_time(os.getpid()) is None, reason="needs /proc to tell a process's start time")
def test_resume_is_not_refused_because_another_program_took_the_dead_trainers_pid(store: Store) -> None:
    from trainers.run.errors import RunError
    from trainers.run.process import check_startable

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_id = new_run(store)
        store.set_run_status(run_id, "training", pid=other.pid)  # a live trainer: resuming it is refused
        with pytest.raises(RunError, match=f"already running \\(pid {other.pid}\\)"):
            check_startable(store.get_run(run_id), resume=True)
        # The trainer died and `other` is an unrelated program that got its pid later.
        store.db.execute("UPDATE runs SET pid_started = 'linux-ticks:1' WHERE id = ?", [run_id])
        check_startable(store.get_run(run_id), resume=True)
    finally:
        other.kill()
        other.wait()
