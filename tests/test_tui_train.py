"""The train screen through Pilot: a tiny real DPO run in its own process, live progress, cancel."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from conftest import wait_for
from tiny_model import build_tiny_model, fill_separable

from store.studio_store import Store
from studio.settings import load_settings
from studio.tui.app import PreferenceStudioApp
from studio.tui.screens.train import MetricPlot, TrainScreen


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def train_app(tmp_path, default_model, tiny_model_dir, studio_home):
    store = Store.open(tmp_path / "studio.db")
    fill_separable(store, repeat=2)
    settings = replace(load_settings(), model=default_model, train_model=tiny_model_dir)
    app = PreferenceStudioApp(settings=settings, store=store)
    yield app
    store.close()


def set_form(screen: TrainScreen, **values) -> None:
    for name, value in values.items():
        screen.query_one(f"#cfg-{name}").value = str(value)


async def test_train_screen_runs_shows_progress_and_finishes(train_app):
    app = train_app
    async with app.run_test(size=(140, 44)) as pilot:
        await wait_for(pilot, lambda: app.engine is not None)
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen))
        screen = app.screen
        set_form(screen, epochs=3, learning_rate=0.005, batch_size=2, heldout_fraction=0)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: screen.run_id is not None)
        run_id = screen.run_id
        status = screen.query_one("#train-status")
        await wait_for(pilot, lambda: "finished" in str(status.render()) or "failed" in str(status.render()))
        run = app.store.get_run(run_id)
        assert run.status == "done", run.message
        metrics = app.store.run_metrics(run_id)
        assert len(metrics) >= 3
        loss_plot = screen.query_one("#plot-loss", MetricPlot)
        assert len(loss_plot.points["loss"]) == len([m for m in metrics if "loss" in m])
        bar = screen.query_one("#train-progress")
        assert bar.total == screen.total_steps == 18 // 2 and bar.progress == bar.total
        assert (Path(run.output_dir) / "adapter_model.safetensors").exists()


async def test_train_screen_cancel_stops_the_process_and_keeps_the_adapter(train_app):
    app = train_app
    async with app.run_test(size=(140, 44)) as pilot:
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen))
        screen = app.screen
        set_form(screen, epochs=200, batch_size=1, heldout_fraction=0)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: screen.run_id is not None and screen.last_step is not None and screen.last_step >= 2)
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: app.store.get_run(screen.run_id).status == "cancelled")
        await wait_for(pilot, lambda: screen.process is None)
        run = app.store.get_run(screen.run_id)
        assert (Path(run.output_dir) / "adapter_model.safetensors").exists()
        assert "cancelled" in str(screen.query_one("#train-status").render())


async def test_train_screen_reports_no_pairs_clearly(tmp_path, default_model, tiny_model_dir, studio_home):
    store = Store.open(tmp_path / "empty.db")
    settings = replace(load_settings(), model=default_model, train_model=tiny_model_dir)
    app = PreferenceStudioApp(settings=settings, store=store)
    try:
        async with app.run_test(size=(140, 44)) as pilot:
            await pilot.press("f5")
            await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen))
            screen = app.screen
            await wait_for(pilot, lambda: screen.plan_text.startswith("Cannot start:"))  # said before ctrl+s
            assert "no preference pairs" in screen.plan_text
            await pilot.press("ctrl+s")
            status = screen.query_one("#train-status")
            await wait_for(pilot, lambda: str(status.render()).startswith("Cannot start:"))
            assert "pair" in str(status.render())
            assert app.store.list_runs() == []
    finally:
        store.close()


async def test_a_second_run_on_the_same_screen_is_shown_from_its_first_step(train_app):
    app = train_app
    async with app.run_test(size=(140, 44)) as pilot:
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen))
        screen = app.screen
        status = screen.query_one("#train-status")
        for epochs, expected_run in ((3, 1), (2, 2)):
            set_form(screen, epochs=epochs, learning_rate=0.005, batch_size=2, heldout_fraction=0)
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: screen.run_id == expected_run)  # noqa: B023
            run_id = screen.run_id
            await wait_for(pilot, lambda: f"Run {run_id} finished" in str(status.render()))  # noqa: B023
            await wait_for(pilot, lambda: screen.process is None)
            metrics = app.store.run_metrics(run_id)
            loss_steps = [step for step, _ in screen.query_one("#plot-loss", MetricPlot).points["loss"]]
            assert len(metrics) == 3 * epochs
            assert loss_steps == [m["step"] for m in metrics if "loss" in m] and loss_steps[0] == 1


@pytest.mark.parametrize("max_length", ["auto", "256"])
async def test_a_growing_chat_trains_from_the_form_and_every_count_agrees(max_length, tmp_path, default_model,
                                                                         tiny_model_dir, studio_home):
    """The journey: one session whose prompt grows with the chat, F5, the defaults (or the old fixed 256, which
    drops pairs from both splits): the form says what will train before the start, the header says the same,
    the trainer's log too, and the progress ends complete at the trainer's own step count with no ETA running."""
    from test_train_counts import judged_session

    from trainers.pair_selection import SelectionReport
    from trainers.run.outputs import RunPaths

    store = Store.open(tmp_path / "studio.db")
    judged_session(store, repeat_first=True)
    settings = replace(load_settings(), model=default_model, train_model=tiny_model_dir)
    app = PreferenceStudioApp(settings=settings, store=store)
    try:
        async with app.run_test(size=(140, 44)) as pilot:
            await pilot.press("f5")
            await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen))
            screen = app.screen
            assert screen.query_one("#cfg-max_length").value == "auto"  # the default is chosen from the data
            set_form(screen, max_length=max_length, learning_rate=0.005)
            await wait_for(pilot, lambda: screen.plan_text.startswith("Will train:") and
                           f"max length {'256' if max_length == '256' else ''}" in screen.plan_text)
            preview = screen.plan_text.removeprefix("Will train: ")
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: screen.run_id is not None)
            status = screen.query_one("#train-status")
            assert str(status.render()) == f"Run {screen.run_id}: {preview}"
            await wait_for(pilot, lambda: "finished" in str(status.render()) or "failed" in str(status.render()))
            run = app.store.get_run(screen.run_id)
            assert run.status == "done", run.message
            report = SelectionReport.from_dict(run.summary["selection"])
            assert report.describe() == preview
            if max_length == "256":
                assert report.too_long_train and report.too_long_heldout and "held-out pair(s) dropped" in preview
            else:
                assert report.too_long == 0 and report.train + report.heldout == 15
            assert run.summary["steps"] == run.summary["max_steps"] == report.steps
            bar = screen.query_one("#train-progress")
            assert bar.total == bar.progress == report.steps and bar.percentage == 1
            assert not bar.query_one("#eta").display  # no countdown after the end
            assert str(screen.query_one("#train-rate").render()) == f"step {report.steps}/{report.steps} · done"
            log = RunPaths(Path(run.output_dir)).log_path.read_text()
            assert f"pairs: {preview}" in log and f"step {report.steps}/{report.steps} " in log
    finally:
        store.close()


async def test_this_session_on_the_train_form_counts_the_chats_session(train_app):
    """'this session' is the session the chat is in (a new, empty one here), not every judged pair."""
    app = train_app
    async with app.run_test(size=(140, 44)) as pilot:
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen))
        screen = app.screen
        await wait_for(pilot, lambda: screen.plan_text.startswith("Will train"))  # every session: the judged pairs
        screen.query_one("#cfg-scope").value = "session"
        chat_session = app.current_session_id
        assert chat_session is not None and chat_session != 1  # the chat opened a session of its own
        await wait_for(pilot, lambda: f"session {chat_session}" in screen.plan_text)
        assert screen.plan_text.startswith(f"Cannot start: no preference pairs in session {chat_session}")
