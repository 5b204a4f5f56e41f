"""Steering side by side on the compare screen, through App.run_test() and Pilot: with a SteerLM run, ctrl+t opens
two rows of its trained attributes, enter answers the chooser's prompts at both settings (the code ``compare
--steer`` runs), the panels show each prompt's two answers, the result is stored for the report, escape goes back
to base vs tuned; a run that is not a SteerLM run says why it cannot steer. The real default model, the real
SteerLM run of conftest ``trained_steer_run`` (copied by ``steer_data``), real SQLite."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from conftest import wait_for
from test_tui_steer import input_ready, steer_data  # noqa: F401  (steer_data is a fixture used by name)

from store.studio_store import Store
from studio.evaluation.compare_session import run_comparison
from studio.evaluation.steer_comparison import stored_steer_comparison
from studio.inference.engine import SamplingSettings
from studio.settings import load_settings
from studio.tui.app import PreferenceStudioApp
from studio.tui.screens.compare import CompareScreen
from studio.tui.widgets.candidate_panel import CandidatePanel
from studio.tui.widgets.steer_row import SteerRow

PROMPTS = ("Name a fruit.", "Where do fish live?")


def panel_text(screen: CompareScreen, side: str) -> str:
    """What an answer panel shows, as plain text."""
    return str(screen.query_one(f"#{side} Static").render())


def toasts(app: PreferenceStudioApp) -> list[str]:
    return [str(toast.render()) for toast in app.screen.query("Toast")]


def make_app(db_path: Path, model: Path) -> tuple[PreferenceStudioApp, Store]:
    store = Store.open(db_path)
    # Greedy, short: the same prompt at two settings differs only by the values its prompt carries.
    settings = replace(load_settings(), model=model, seed=5, candidates=1,
                       sampling=SamplingSettings(max_tokens=8, temperature=0.0))
    return PreferenceStudioApp(settings=settings, store=store), store


async def test_steering_answers_at_two_settings_side_by_side(steer_data, default_model, studio_home,  # noqa: F811
                                                             tmp_path) -> None:
    db_path, run_id = steer_data
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    app, store = make_app(db_path, default_model)
    try:
        async with app.run_test(size=(150, 45), notifications=True) as pilot:
            await wait_for(pilot, lambda: input_ready(app))
            # A stored base-vs-tuned comparison on the two prompts: the chooser opens on that file.
            base = run_comparison(app.engine, store, run_id, system=app.current_system_prompt,
                                  sampling=app.settings.sampling, seed=5, prompts_from=f"file:{prompts_file}")
            app.action_compare(run_id)
            await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.result is not None)
            screen = app.screen
            assert not screen.query(SteerRow)

            await pilot.press("ctrl+t")
            first, second = screen.query(SteerRow)
            assert first.attributes == second.attributes == ("verbosity",)  # the run's trained ones only
            assert (first.values, second.values) == ({"verbosity": 0}, {"verbosity": 4})
            assert app.focused is first
            await pilot.press("right", "left")  # the chat's slider keys: 0 -> 1 -> 0
            assert first.values == {"verbosity": 0}
            await pilot.press("enter")  # to the right row
            assert app.focused is second
            await pilot.press("enter")  # answers at both settings
            # The run's last stored steering (another test's compare --steer on the shared run) shows when the rows
            # open: wait for this one's answers, on this comparison's prompts.
            await wait_for(pilot, lambda: screen.steering is not None
                           and [row.prompt for row in screen.steering.rows] == list(PROMPTS))

            shown = screen.steering
            assert [row.prompt for row in shown.rows] == list(PROMPTS)
            assert shown.settings == [{"verbosity": 0}, {"verbosity": 4}]
            stored = stored_steer_comparison(store, run_id)  # stored as compare --steer stores it
            assert stored is not None and stored.to_dict() == shown.to_dict()
            assert panel_text(screen, "compare-left") == shown.rows[0].first_text
            assert panel_text(screen, "compare-right") == shown.rows[0].second_text
            left, right = screen.query(CandidatePanel)
            assert "[verbosity:0]" in str(left.border_title) and "[verbosity:4]" in str(right.border_title)
            assert "Prompt: Name a fruit." in str(screen.query_one("#compare-prompt").render())
            await pilot.press("n")
            assert panel_text(screen, "compare-right") == shown.rows[1].second_text
            await pilot.press("1")  # no blind vote on two settings of one run
            assert not store.votes(run_id)
            assert any("takes no votes" in toast for toast in toasts(app))

            await pilot.press("w")  # the report shows it
            report = Path(store.get_run(run_id).output_dir) / "report" / "report.md"
            await wait_for(pilot, lambda: report.exists())
            text = report.read_text(encoding="utf-8")
            assert "Steering side by side" in text and "[verbosity:0]" in text and shown.rows[1].prompt in text

            await pilot.press("escape")  # back to base vs tuned
            assert not screen.query(SteerRow) and screen.steering is None
            answers = {panel_text(screen, "compare-left"), panel_text(screen, "compare-right")}
            assert answers == {base.rows[0].base_text.strip(), base.rows[0].tuned_text.strip()}
            assert app.engine.active_adapter == app.active_adapter  # the chat's adapter is back
    finally:
        store.close()


async def test_a_run_not_steerlm_says_why_it_cannot_steer(steer_data, default_model, studio_home,  # noqa: F811
                                                          tmp_path) -> None:
    db_path, _run_id = steer_data
    app, store = make_app(db_path, default_model)
    dpo_run = store.create_run({"method": "dpo"}, default_model.name, str(tmp_path / "dpo-run"), [], [])
    store.set_run_status(dpo_run, "done")
    try:
        async with app.run_test(size=(150, 45), notifications=True) as pilot:
            await wait_for(pilot, lambda: input_ready(app))
            app.push_screen(CompareScreen(dpo_run))
            await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
            await pilot.press("ctrl+t")
            await pilot.pause(0.2)
            assert not app.screen.query(SteerRow)
            assert any(f"run {dpo_run} is a dpo run, not a SteerLM run" in toast for toast in toasts(app))
    finally:
        store.close()
