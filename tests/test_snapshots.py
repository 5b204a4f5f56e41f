"""Snapshot tests (pytest-textual-snapshot): the real screens, fed fixed data, compared with the SVGs under
tests/__snapshots__/. Regenerate after a deliberate layout change with
``pytest tests/test_snapshots.py --snapshot-update`` and look at the pictures before committing them.

What keeps a picture the same from run to run: every store row is written by the test (no dates or
timings are shown from them); the train screen's and the engine's clocks are a fixed tick, so the steps/s
rate and the seconds per candidate are fixed numbers; the blind order and the candidates' seeds are fixed;
no cursor blinks; no temporary path is on screen; the chat's engine has fixed thread counts (its status
line names them).
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import wait_for
from textual.pilot import Pilot
from textual.widgets import Input, TextArea
from tiny_model import fill_separable

from store.studio_store import Store
from studio.inference.engine import ChatEngine, EngineConfig, SamplingSettings
from studio.settings import load_settings
from studio.tui.app import PreferenceStudioApp
from studio.tui.screens.chat import JUDGE_HINT
from studio.tui.screens.compare import CompareScreen
from studio.tui.screens.exercise import ExerciseScreen
from studio.tui.screens.train import TrainScreen
from trainers.run.outputs import RunPaths
from trainers.run_config import RunConfig

SIZE = (140, 44)


@pytest.fixture
def make_app(tmp_path, default_model, engine, tiny_model_dir, studio_home):
    """An app on a fresh store in ``tmp_path``, the shared engine (loaded: no "loading model…" race) and
    an empty config (the defaults, whatever the machine's own config says)."""
    stores: list[Store] = []

    def make(store: Store | None = None, app_engine: ChatEngine = engine, **overrides) -> PreferenceStudioApp:  # noqa: ANN003
        store = store or Store.open(tmp_path / "studio.db")
        stores.append(store)
        config = tmp_path / "studio.toml"
        config.write_text("", encoding="utf-8")
        # No safety checker unless a test asks: its badges arrive from a worker after the candidates (a race with
        # the snapshot); tests/test_tui_safety.py shows them.
        overrides.setdefault("safety", ())
        settings = replace(load_settings(config), model=default_model, train_model=tiny_model_dir, **overrides)
        return PreferenceStudioApp(settings=settings, store=store, engine=app_engine)

    yield make
    for store in stores:
        store.close()


def still_cursors(pilot: Pilot) -> None:
    """No blinking cursor: a picture taken half a second later must be the same picture."""
    for widget in pilot.app.screen.query(Input):
        widget.cursor_blink = False
    for area in pilot.app.screen.query(TextArea):
        area.cursor_blink = False


class TickClock:
    """Stands in for ``time`` in a module that shows timings (the train screen's steps/s, the engine's
    seconds per candidate): every reading is one second after the last, so what they show is the same
    number on every machine. Anything else is the real ``time``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now

    perf_counter = monotonic

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(time, name)


# --- train: a run mid-way, with fixed metrics ---

METRICS = [  # what TRL's on_log gives for a DPO step, rounded: loss falls, the margin and accuracy rise
    (step, {"loss": round(0.6931 - 0.06 * step, 4), "rewards/margins": round(0.09 * step, 3),
            "rewards/accuracies": min(1.0, 0.5 + 0.1 * step), "total_steps": 12})
    for step in range(1, 7)
]


def training_run(store: Store, runs_root: Path) -> int:
    """A run row in status ``training`` at step 6 of 12 (six pairs, batch 2, four epochs), its metrics and
    its log as the trainer writes them.
    The pid recorded is this test process's: the store counts a run alive while its pid is, so the screen
    follows it as it follows a trainer started by an earlier studio."""
    output = runs_root / "run-1"
    config = RunConfig(epochs=4, batch_size=2, heldout_fraction=0, learning_rate=0.005)
    run_id = store.create_run(config.to_dict(), "tiny", str(output), [f"j{i}" for i in range(1, 7)], [])
    store.set_run_status(run_id, "training", pid=os.getpid())
    for step, metrics in METRICS:
        store.add_run_metrics(run_id, step, step / 3, metrics)
    runs_root.mkdir(parents=True, exist_ok=True)
    RunPaths(output).log_path.write_text(
        "pairs: 6 for training, 0 held out; 12 step(s) (3 per epoch)\n"
        + "".join(f"step {step}/12 loss {m['loss']:.4f} margin {m['rewards/margins']:+.3f}\n" for step, m in METRICS),
        encoding="utf-8")
    return run_id


def test_train_screen_mid_run(snap_compare, make_app, tmp_path, monkeypatch):
    import studio.tui.screens.train as train_screen

    monkeypatch.setattr(train_screen, "time", TickClock())
    store = Store.open(tmp_path / "studio.db")
    fill_separable(store)
    training_run(store, tmp_path / "runs")
    app = make_app(store)

    async def open_train(pilot: Pilot) -> None:
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen))
        screen = app.screen
        await wait_for(pilot, lambda: screen.last_step == 6)  # every metric row drawn
        await wait_for(pilot, lambda: screen.plan_text.startswith("Will train:"))
        still_cursors(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=open_train)


# --- compare: blind mode on a stored comparison ---

def compared_run(store: Store, runs_root: Path) -> int:
    """A finished run with a stored comparison of two prompts (fixed answers and held-out metrics), written
    as the store keeps it (the evaluation's JSON), and one blind vote on the first prompt."""
    config = RunConfig(max_steps=6, heldout_fraction=0.34)
    run_id = store.create_run(config.to_dict(), "gemma-3-270m-q4_k_m.gguf", str(runs_root / "run-1"),
                              ["j1", "j2", "j3", "j4"], ["j5", "j6"])
    store.set_run_status(run_id, "done")
    rows = [
        {"prompt": "What is the capital of France?", "base_text": "Potato potato potato.",
         "tuned_text": "The capital of France is Paris.", "seed": 11},
        {"prompt": "Name a primary colour.", "base_text": "Potato.", "tuned_text": "Red is a primary colour.",
         "seed": 12},
    ]
    store.save_evaluation(run_id, "comparison", {
        "run_id": run_id, "prompts_source": "held-out pairs", "rows": rows, "seed": 0, "notes": [],
        "before": {"n": 2, "raw_accuracy": 0.5, "mean_margin": -0.42},
        "after": {"n": 2, "raw_accuracy": 1.0, "mean_margin": 3.17, "implicit_reward_accuracy": 1.0},
        "stance": None, "sampling": SamplingSettings(temperature=0, max_tokens=48).to_dict(),
        "prompts_spec": "heldout",
    })
    first = rows[0]
    store.record_vote(run_id, first["prompt"], first["seed"], True, "a", first["tuned_text"], first["base_text"])
    return run_id


def test_compare_screen_blind(snap_compare, make_app, tmp_path, monkeypatch):
    # The blind order is drawn from a fresh random seed each time blind mode starts; pinned here.
    monkeypatch.setattr(secrets, "randbits", lambda _bits: 5)
    store = Store.open(tmp_path / "studio.db")
    run_id = compared_run(store, tmp_path / "runs")
    app = make_app(store)

    async def open_compare(pilot: Pilot) -> None:
        app.action_compare(run_id)  # as the train and exercise screens open it when a run ends
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.result is not None)
        await pilot.press("n")  # the second prompt, the first one already voted
        still_cursors(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=open_compare)


# --- exercise: the preview of the bundled exercise ---

def test_exercise_preview(snap_compare, make_app):
    app = make_app()

    async def open_exercise(pilot: Pilot) -> None:
        await pilot.press("f8")
        await wait_for(pilot, lambda: isinstance(app.screen, ExerciseScreen))
        await wait_for(pilot, lambda: app.screen.query_one("#ex-table").row_count > 0)
        app.screen.query_one("#ex-data_size", Input).value = "12"
        await wait_for(pilot, lambda: app.screen.query_one("#ex-table").row_count == 12)
        still_cursors(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=open_exercise)


# --- chat: two candidates being judged ---

@pytest.fixture
def two_thread_engine(default_model):
    """The chat's status line names the engine's threads: fixed at two, whatever this machine has."""
    engine = ChatEngine(EngineConfig(model_path=default_model, n_ctx=1024, n_threads=2, n_threads_batch=2))
    yield engine
    engine.close()


def test_chat_screen_judging_two_candidates(snap_compare, make_app, two_thread_engine, monkeypatch):
    import studio.inference.batched_generation as batched_module
    import studio.inference.engine as engine_module

    clock = TickClock()  # each candidate's "… s" is the same every run, decoded one by one or side by side
    monkeypatch.setattr(engine_module, "time", clock)
    monkeypatch.setattr(batched_module, "time", clock)
    # A base seed: the same two seeds, so the same two replies, every run (greedy would make A and B the same
    # reply). Sampled on llama.cpp's CPU path with two threads; another build may draw other words.
    app = make_app(app_engine=two_thread_engine, seed=7, sampling=SamplingSettings(temperature=0.7, max_tokens=24))

    async def ask(pilot: Pilot) -> None:
        prompt = app.screen.query_one("#prompt-input", Input)
        await wait_for(pilot, lambda: not prompt.disabled)
        prompt.value = "Tell me something about cats."
        await pilot.press("enter")
        await wait_for(pilot, lambda: str(app.screen.query_one("#judge-bar").render()) == JUDGE_HINT)
        still_cursors(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=ask)
