"""The train screen following an RLOO run through Pilot: reward, spread and KL plotted, entropy and reply length on
the rate line, the latest sampled replies with their rewards (tailed from the run's ``samples.jsonl``).

The run is a real row in a real store with real metric rows (TRL RLOOTrainer's keys) and a samples file in the
run's work directory, written here as the trainer writes them; the screen reads them as it reads any run's.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import wait_for
from textual.pilot import Pilot

from store.studio_store import Store
from studio.settings import load_settings
from studio.tui.app import PreferenceStudioApp
from studio.tui.screens.train import METHOD_PLOTS, MetricPlot, TrainScreen
from studio.tui.widgets.rl_samples import SAMPLES_FILE, RLSamplesPanel
from trainers.run.outputs import RunPaths


def rloo_metrics(step: int) -> dict[str, float]:
    return {"loss": 0.01 * step, "reward": 0.5 * step, "reward_std": 0.2, "kl": 0.001 * step, "entropy": 2.5,
            "completions/mean_length": 30.0 + step}


def sample_lines(step: int, rewards: tuple[float, ...], reply: str = "Thanks for asking! [b]Here[/b] it is.") -> str:
    return "".join(json.dumps({"step": step, "prompt": f"How do I water plants? (step {step})",
                               "reply": f"{reply} #{i}", "reward": reward}) + "\n" for i, reward in enumerate(rewards))


@pytest.fixture
def rloo_app(tmp_path: Path, default_model: Path, studio_home: Path):
    """A store holding a finished reward run and an RLOO run still training (this test's process stands in for its
    trainer, so the screen treats it as alive), two steps logged."""
    store = Store.open(tmp_path / "studio.db")
    runs = tmp_path / "runs"
    reward_id = store.create_run({"method": "reward"}, "m", str(runs / "run-reward"), [], [])
    store.set_run_status(reward_id, "done")
    run_id = store.create_run({"method": "rloo", "reward_run": reward_id, "num_generations": 8}, "m",
                              str(runs / "run-rloo"), [], [])
    store.set_run_status(run_id, "training", pid=os.getpid())
    paths = RunPaths(runs / "run-rloo")
    paths.work_dir.mkdir(parents=True)
    for step in (1, 2):
        store.add_run_metrics(run_id, step, None, {**rloo_metrics(step), "total_steps": 20})
    (paths.work_dir / SAMPLES_FILE).write_text(sample_lines(1, (0.1, 0.2)) + sample_lines(2, (-0.4, 1.25)))
    app = PreferenceStudioApp(settings=replace(load_settings(), model=default_model), store=store)
    yield app, run_id, paths
    store.close()


async def open_train_screen(app: PreferenceStudioApp, pilot: Pilot) -> TrainScreen:
    await wait_for(pilot, lambda: app.engine is not None)  # the model loaded first: f5 then answers at once
    await pilot.press("f5")
    await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen))
    return app.screen


def panel_text(screen: TrainScreen) -> str:
    return str(screen.query_one("#rl-samples", RLSamplesPanel).render())


async def test_an_rloo_run_shows_reward_kl_and_its_latest_samples_live(rloo_app) -> None:
    app, run_id, paths = rloo_app
    async with app.run_test(size=(140, 44)) as pilot:
        screen = await open_train_screen(app, pilot)
        await wait_for(pilot, lambda: screen.run_id == run_id and screen.last_step == 2)
        plot = screen.query_one("#plot-margin", MetricPlot)
        assert (plot.title, plot.series) == METHOD_PLOTS["rloo"]
        assert plot.points["reward"] == [(1, 0.5), (2, 1.0)] and plot.points["kl"] == [(1, 0.001), (2, 0.002)]
        rate = str(screen.query_one("#train-rate").render())
        assert "reward +1.000" in rate and "kl +0.002" in rate and "entropy 2.5" in rate and "mean length 32" in rate

        panel = screen.query_one("#rl-samples", RLSamplesPanel)
        await wait_for(pilot, lambda: "step 2" in panel_text(screen))
        assert panel.display
        text = panel_text(screen)
        # The newest step only, best reward first; the reply's brackets shown as written, not read as markup.
        assert "(step 1)" not in text
        assert text.index("reward +1.250") < text.index("reward -0.400")
        assert "[b]Here[/b] it is. #1" in text

        # The trainer logs another step and appends its samples (the last line not finished yet).
        app.store.add_run_metrics(run_id, 3, None, rloo_metrics(3))
        with (paths.work_dir / SAMPLES_FILE).open("a") as fh:
            fh.write(sample_lines(3, (0.75,), reply="Step three") + '{"step": 3, "prompt": "half')
        await wait_for(pilot, lambda: "step 3" in panel_text(screen))
        assert "reward +0.750" in panel_text(screen) and "reward +1.250" not in panel_text(screen)
        assert plot.points["reward"][-1] == (3, 1.5)

        # Published: the run folder's copy is read once the work directory's is gone, from its first line.
        paths.output_dir.mkdir()
        (paths.output_dir / SAMPLES_FILE).write_text(sample_lines(4, (2.0,), reply="Published"))
        (paths.work_dir / SAMPLES_FILE).unlink()
        await wait_for(pilot, lambda: "step 4" in panel_text(screen))
        app.store.set_run_status(run_id, "done")
        await wait_for(pilot, lambda: "finished" in str(screen.query_one("#train-status").render()))

        # The form starts from this RLOO run's settings; another method drops them instead of being refused.
        from textual.widgets import Select

        screen.query_one("#cfg-method", Select).value = "dpo"
        await pilot.pause()
        config = screen._config_from_form()
        assert (config.method, config.reward_run, config.num_generations) == ("dpo", None, 4)


async def test_a_dpo_run_shows_no_samples_panel(tmp_path: Path, default_model: Path, studio_home: Path) -> None:
    store = Store.open(tmp_path / "studio.db")
    run_id = store.create_run({"method": "dpo"}, "m", str(tmp_path / "runs" / "run-dpo"), [], [])
    store.set_run_status(run_id, "training", pid=os.getpid())
    store.add_run_metrics(run_id, 1, None, {"loss": 0.69, "rewards/margins": 0.0})
    app = PreferenceStudioApp(settings=replace(load_settings(), model=default_model), store=store)
    try:
        async with app.run_test(size=(140, 44)) as pilot:
            screen = await open_train_screen(app, pilot)
            await wait_for(pilot, lambda: screen.last_step == 1)
            assert not screen.query_one("#rl-samples", RLSamplesPanel).display
            assert not screen.query_one("#cfg-reward_run").display  # the form asks for a reward model for RL only
            assert "entropy" not in str(screen.query_one("#train-rate").render())
    finally:
        store.close()


async def test_choosing_rloo_asks_for_a_finished_reward_run(tmp_path: Path, default_model: Path,
                                                            studio_home: Path) -> None:
    from textual.widgets import Select

    store = Store.open(tmp_path / "studio.db")
    runs = tmp_path / "runs"
    older = store.create_run({"method": "reward"}, "m", str(runs / "run-r1"), [], [])
    store.set_run_status(older, "done")
    newer = store.create_run({"method": "reward"}, "m", str(runs / "run-r2"), [], [])
    store.set_run_status(newer, "done")
    unfinished = store.create_run({"method": "reward"}, "m", str(runs / "run-r3"), [], [])
    store.set_run_status(unfinished, "failed", "test")
    app = PreferenceStudioApp(settings=replace(load_settings(), model=default_model), store=store)
    try:
        async with app.run_test(size=(140, 44)) as pilot:
            screen = await open_train_screen(app, pilot)
            chooser = screen.query_one("#cfg-reward_run", Select)
            assert not chooser.display
            screen.query_one("#cfg-method", Select).value = "rloo"
            await wait_for(pilot, lambda: chooser.display)
            assert [value for _label, value in chooser._options if isinstance(value, int)] == [newer, older]
            assert chooser.value == newer  # the newest finished one; a failed run is not offered
            chooser.value = older
            config = screen._config_from_form()
            assert (config.method, config.reward_run) == ("rloo", older)
            plot = screen.query_one("#plot-margin", MetricPlot)
            assert (plot.title, plot.series) == METHOD_PLOTS["rloo"]
            screen.query_one("#cfg-method", Select).value = "dpo"
            await wait_for(pilot, lambda: not chooser.display)
            assert screen._config_from_form().reward_run is None
    finally:
        store.close()
