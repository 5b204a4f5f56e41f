"""Before and after on the real default model: a real DPO run, its adapter in llama.cpp, compare,
blind votes through Pilot, report, export, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import copy_run_folder, run_cli, wait_for
from tiny_model import SEPARABLE_PAIRS, build_tiny_model

from store.studio_store import Store
from studio.evaluation.compare_session import stored_comparison, vote_tally
from studio.evaluation.comparison import BlindTally
from studio.evaluation.comparison_text import metric_paragraphs, metrics_text, summary_line
from studio.evaluation.prompts import find_bank
from studio.evaluation.run_adapters import RunAdapterError, gguf_adapter_for_run
from studio.inference.engine import SamplingSettings
from studio.inference.model_files import inspect_gguf
from studio.settings import StudioSettings
from studio.tui.app import PreferenceStudioApp
from studio.tui.screens.compare import CompareScreen

SYSTEM = "You are a concise, friendly assistant."
SHA = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
pytestmark = pytest.mark.slow


def _fill(store: Store, model_name: str) -> None:
    session = store.create_session(SYSTEM)
    for prompt, chosen, rejected in SEPARABLE_PAIRS:
        prompt_id = store.add_prompt(session, prompt, [])
        rendered = f"{SYSTEM}\n\nUser: {prompt}\nAssistant:"
        ids = [store.add_candidate(prompt_id, slot, " " + text, rendered, model_name, SHA, {}, seed=slot)
               for slot, text in enumerate((chosen, rejected))]
        store.record_judgement(prompt_id, "a", chosen_candidate_id=ids[0], rejected_candidate_id=ids[1])


@pytest.fixture(scope="module")
def trained(trained_dpo_run, tmp_path_factory):
    """A store with six judged pairs, two held out, and a finished 6-step run on the default model: this
    module's copy of the session's run (conftest ``trained_dpo_run``), which the comparisons are stored in."""
    folder, run_id = trained_dpo_run
    return copy_run_folder(folder, tmp_path_factory.mktemp("compare") / "data") / "studio.db", run_id


def test_compare_cli_answers_with_both_and_the_tuned_model_prefers_the_chosen_side(trained, default_model,
                                                                                   studio_home):
    db, run_id = trained
    proc = run_cli("--db", str(db), "--model", str(default_model), "compare", "--run", str(run_id), "--json",
                   home=studio_home, check=True, timeout=300)
    result = json.loads(proc.stdout)
    assert result["prompts_source"] == "held-out pairs" and len(result["rows"]) == 2
    assert all(row["base_text"] is not None and row["tuned_text"] is not None for row in result["rows"])
    before, after = result["before"], result["after"]
    assert before["n"] == after["n"] == 2
    # Trained to prefer the sensible reply over "Potato potato potato.": the held-out margin grows.
    assert after["mean_margin"] > before["mean_margin"] + 1.0
    assert after["implicit_reward_accuracy"] == 1.0
    with Store.open(db) as store:
        assert store.latest_evaluation(run_id, "comparison")["rows"] == result["rows"]


def test_compare_with_a_prompts_file_and_bad_files(trained, default_model, studio_home, tmp_path):
    db, run_id = trained
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Name a colour.\nSay goodbye.\n")
    proc = run_cli("--db", str(db), "--model", str(default_model), "compare", "--run", str(run_id), "--prompts",
                   str(prompts), home=studio_home, check=True, timeout=300)
    assert "2 prompt(s) from file prompts.txt" in proc.stdout and "tuned:" in proc.stdout
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": \n')
    for path, expected in ((empty, "empty"), (bad, "line 2")):
        proc = run_cli("--db", str(db), "--model", str(default_model), "compare", "--run", str(run_id),
                       "--prompts", str(path), home=studio_home)
        assert proc.returncode == 1 and str(path) in proc.stderr and expected in proc.stderr
        assert "Traceback" not in proc.stderr


def test_report_and_adapter_export(trained, default_model, studio_home, tmp_path):
    db, run_id = trained
    out = tmp_path / "report"
    run_cli("--db", str(db), "--model", str(default_model), "report", "--run", str(run_id), "--out", str(out),
            home=studio_home, check=True, timeout=300)
    markdown = (out / "report.md").read_text()
    assert "loss.png" in markdown and (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.html").stat().st_size > 1000
    gguf = tmp_path / "adapter.gguf"
    run_cli("--db", str(db), "--model", str(default_model), "adapters", "export", "--run", str(run_id), "--out",
            str(gguf), home=studio_home, check=True)
    info = inspect_gguf(gguf)
    assert info.file_type == "adapter" and info.architecture == "gemma3"


def test_failed_run_and_foreign_adapter_are_refused_clearly(trained, default_model, studio_home, tmp_path):
    from trainers.run.lifecycle import prepare_run
    from trainers.run.process import execute_run
    from trainers.run_config import RunConfig

    db, _ = trained
    base = inspect_gguf(default_model)
    with Store.open(tmp_path / "other.db") as store:
        _fill(store, "tiny")
        tiny = build_tiny_model(tmp_path / "tiny")
        prepared = prepare_run(store, RunConfig(max_steps=1, heldout_fraction=0, target_modules=["q_proj"]),
                               model_path=tiny, runs_root=tmp_path / "runs")
        assert execute_run(store, prepared.run_id, log=lambda _l: None).status == "done"
        run = store.get_run(prepared.run_id)
        with pytest.raises(RunAdapterError, match="does not fit gemma-3-270m"):
            gguf_adapter_for_run(run, base, store.path)
        failed_id = store.create_run({}, "m", str(tmp_path / "nowhere"), [], [])
        store.set_run_status(failed_id, "failed", "out of memory")
        with pytest.raises(RunAdapterError, match="is failed: out of memory"):
            gguf_adapter_for_run(store.get_run(failed_id), base, store.path)
    proc = run_cli("--db", str(tmp_path / "other.db"), "--model", str(default_model), "adapters", "export", "--run",
                   str(failed_id), "--out", str(tmp_path / "x.gguf"), home=studio_home)
    assert proc.returncode == 1 and "only finished or cancelled runs" in proc.stderr
    assert not (tmp_path / "x.gguf").exists()



async def test_blind_votes_through_pilot_are_stored_and_tallied(trained, default_model, studio_home, tmp_path):
    db, run_id = trained
    store = Store.open(db)
    settings = StudioSettings(model=default_model)
    app = PreferenceStudioApp(settings=settings, store=store)
    try:
        async with app.run_test(size=(130, 40)) as pilot:
            await wait_for(pilot, lambda: app.engine is not None)
            await pilot.press("f6")
            await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.result is not None)
            screen = app.screen
            assert screen.blind and "tuned" not in screen.query_one("#compare-left").border_title
            metrics = str(screen.query_one("#compare-metrics").render())
            assert metrics == metrics_text(screen.result) and metrics.startswith("held-out pairs: 2 ·")
            before = len(store.votes(run_id))
            await pilot.press("1")
            await pilot.press("t")
            await pilot.pause(0.2)
            votes = store.votes(run_id)[before:]
            assert [v["vote"] for v in votes] == ["a", "tie"]
            assert [v["tuned_on_left"] for v in votes] == screen.order[:2]
            expected = BlindTally.from_votes((v["vote"], v["tuned_on_left"]) for v in store.votes(run_id))
            blind_text = str(screen.query_one("#compare-tally").render())
            assert f"Blind votes cast: {expected.total}" in blind_text
            assert "win" not in blind_text and "loss" not in blind_text  # no hint which side is tuned
            await pilot.press("b")
            assert expected.describe() in str(screen.query_one("#compare-tally").render())
            assert "tuned" in screen.query_one("#compare-left").border_title + screen.query_one(
                "#compare-right").border_title
            report = Path(store.get_run(run_id).output_dir) / "report" / "report.md"
            await pilot.press("w")
            await wait_for(pilot, report.exists)
            text = report.read_text()
            assert "No blind votes" not in text  # the votes above reached the report
            assert f"| tuned wins | {expected.wins} |" in text and f"| ties | {expected.ties} |" in text
            await pilot.press("escape")
            await pilot.press("f7")
            await wait_for(pilot, lambda: app.active_adapter == f"run-{run_id}")
            assert f"adapter: run-{run_id}" in app.sub_title and app.engine.active_adapter == f"run-{run_id}"
            # Candidates and judgements made now record the adapter that produced them (iterative DPO).
            app.chat.query_one("#prompt-input").value = "Say hello."
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.chat.state == "judging")
            await pilot.press("1")
            await wait_for(pilot, lambda: app.chat.state == "input")
            judgement = store.judgements()[-1]
            assert judgement.adapter == f"run-{run_id}"
            assert {c.adapter for c in store.candidates(judgement.prompt_id)} == {f"run-{run_id}"}
    finally:
        store.close()


def test_compare_cli_chooses_the_prompts_and_answers_greedily(trained, default_model, studio_home, tmp_path):
    db, run_id = trained
    cli = ("--db", str(db), "--model", str(default_model))
    greedy = ("--temperature", "0", "--max-tokens", "6")

    def compare(*args: str) -> dict:
        proc = run_cli(*cli, "compare", "--run", str(run_id), *args, "--json", home=studio_home, check=True,
                       timeout=300)
        return json.loads(proc.stdout)

    result = compare("--prompts-from", "bank:values", "--limit", "2", *greedy)
    assert result["prompts_source"] == "prompt bank 'values'" and result["prompts_spec"] == "bank:values"
    assert [row["prompt"] for row in result["rows"]] == list(find_bank("values").prompts[:2])
    assert result["sampling"]["temperature"] == 0.0 and result["sampling"]["max_tokens"] == 6
    with Store.open(db) as store:
        assert store.latest_evaluation(run_id, "comparison")["sampling"] == result["sampling"]
    # Greedy: another seed gives the very same answers on both sides.
    again = compare("--prompts-from", "bank:values", "--limit", "2", "--seed", "977", *greedy)
    assert [(r["base_text"], r["tuned_text"]) for r in again["rows"]] == [
        (r["base_text"], r["tuned_text"]) for r in result["rows"]]

    proc = run_cli(*cli, "compare", "--run", str(run_id), "--prompts-from", "session", "--limit", "3", *greedy,
                   home=studio_home, check=True, timeout=300)
    assert (f"run {run_id}: 3 prompt(s) from the questions of the run's session(s) 1 · greedy (temperature 0), "
            "max 6 tokens") in proc.stdout
    assert SEPARABLE_PAIRS[2][0] in proc.stdout
    with Store.open(db) as store:  # the CLI prints what the one formatter says of the stored result
        printed = stored_comparison(store, run_id)
    assert printed is not None and metric_paragraphs(printed)
    assert summary_line(printed) in proc.stdout
    assert all(f"\n\n{paragraph}\n" in proc.stdout for paragraph in metric_paragraphs(printed))

    out = tmp_path / "report"
    run_cli(*cli, "report", "--run", str(run_id), "--out", str(out), "--prompts-from", "heldout", *greedy,
            home=studio_home, check=True, timeout=300)
    assert "Prompts from held-out pairs; both answered greedy (temperature 0), max 6 tokens." in (
        out / "report.md").read_text()

    for args, message in ((("--prompts-from", "bank:nope"), "no prompt bank named 'nope'"),
                          (("--prompts-from", "heldout", "--prompts", "x.txt"), "either --prompts FILE or")):
        proc = run_cli(*cli, "compare", "--run", str(run_id), *args, home=studio_home)
        assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(*cli, "compare", "--run", str(run_id), "--temperature", "-1", home=studio_home)
    assert proc.returncode == 2 and "--temperature" in proc.stderr


async def _open_compare(pilot, app) -> CompareScreen:
    await wait_for(pilot, lambda: app.engine is not None)
    await pilot.press("f6")
    await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.result is not None)
    return app.screen


async def test_compare_screen_chooses_prompts_and_greedy_settings_and_pages_when_revealed(
        trained, default_model, tmp_path):
    db, run_id = trained
    store = Store.open(db)
    app = PreferenceStudioApp(settings=StudioSettings(model=default_model),
                              store=store)
    prompts_file = tmp_path / "mine.jsonl"
    prompts_file.write_text('{"prompt": "Name a river."}\n{"prompt": "Name a bird."}\n', encoding="utf-8")
    try:
        async with app.run_test(size=(140, 40)) as pilot:
            screen = await _open_compare(pilot, app)
            first = screen.result
            for field, value in (("#compare-temperature", "0"), ("#compare-max-tokens", "6")):
                await pilot.click(field)
                await pilot.press("end", *["backspace"] * 8, *value)
            await pilot.press("escape")  # leaves the field, not the screen
            assert app.screen is screen
            # s focuses the chooser; enter opens it; typing searches; enter picks the session's questions.
            await pilot.press("s", "enter", "t", "h", "e", "enter")
            await pilot.pause(0.1)
            assert screen.query_one("#compare-progress").display  # compared again in a worker, with progress
            await wait_for(pilot, lambda: screen.result is not first and screen.result.prompts_spec == "session")
            result = screen.result
            assert [row.prompt for row in result.rows] == [prompt for prompt, _, _ in SEPARABLE_PAIRS]
            assert result.rows[0].rendered_prompt == f"{SYSTEM}\n\nUser: {SEPARABLE_PAIRS[0][0]}\nAssistant:"
            assert (result.sampling.temperature, result.sampling.max_tokens) == (0.0, 6)
            assert "greedy (temperature 0), max 6 tokens" in str(screen.query_one("#compare-title").render())
            assert store.latest_evaluation(run_id, "comparison")["sampling"]["max_tokens"] == 6

            await pilot.press("b")  # revealed: n / p page through the prompts as in blind mode
            assert not screen.blind and screen.index == 0
            await pilot.press("n", "n")
            assert screen.index == 2 and SEPARABLE_PAIRS[2][0] in str(screen.query_one("#compare-prompt").render())
            await pilot.press("p")
            assert screen.index == 1

            await pilot.press("s", "enter", "f", "i", "l", "e", "enter")  # a file: its path, then enter
            await pilot.pause(0.1)
            assert app.focused is screen.query_one("#compare-file")
            await pilot.press(*str(prompts_file), "enter")
            await wait_for(pilot, lambda: screen.result.prompts_spec == f"file:{prompts_file}")
            assert [row.prompt for row in screen.result.rows] == ["Name a river.", "Name a bird."]
            assert screen.result.prompts_source == "file mine.jsonl"
    finally:
        store.close()


async def test_blind_votes_keep_their_meaning_across_a_reveal(trained, default_model, studio_home, tmp_path):
    db, run_id = trained
    store = Store.open(db)
    app = PreferenceStudioApp(settings=StudioSettings(model=default_model),
                              store=store)
    try:
        async with app.run_test(size=(140, 40)) as pilot:
            screen = await _open_compare(pilot, app)
            before = vote_tally(store, run_id)
            assert len(screen.result.rows) >= 2

            def tally_text() -> str:
                return str(screen.query_one("#compare-tally").render())

            await pilot.press("1" if screen.order[screen.index] else "2")  # the tuned answer's side
            assert f"Blind votes cast: {before.total + 1}" in tally_text() and "win" not in tally_text()
            await pilot.press("b")
            assert f"tuned {before.wins + 1} win(s)" in tally_text()
            await pilot.press("b")  # blind again: the sides are drawn afresh, votes still count by side
            assert screen.blind and "win" not in tally_text()
            seen = screen.index  # shown revealed: a vote on it would not be blind, so none is taken
            await pilot.press("1")
            assert vote_tally(store, run_id).total == before.total + 1 and screen.index == seen
            await pilot.press("p")  # the first prompt was only ever shown blind
            await pilot.press("1" if screen.order[screen.index] else "2")
            after = vote_tally(store, run_id)
            assert (after.wins, after.losses, after.ties) == (before.wins + 2, before.losses, before.ties)
    finally:
        store.close()
    out = tmp_path / "report"
    run_cli("--db", str(db), "--model", str(default_model), "report", "--run", str(run_id), "--out", str(out),
            home=studio_home, check=True, timeout=300)
    assert f"| tuned wins | {after.wins} |" in (out / "report.md").read_text()


async def test_a_prompt_that_does_not_fit_the_context_is_named_on_the_compare_screen(trained, default_model,
                                                                                    tmp_path):
    """EngineError from fitting a comparison prompt is a message on the screen, not a dead worker."""
    db, _run_id = trained
    store = Store.open(db)
    settings = StudioSettings(model=default_model, n_ctx=256, sampling=SamplingSettings(max_tokens=8))
    app = PreferenceStudioApp(settings=settings, store=store)
    too_long = tmp_path / "long.txt"
    too_long.write_text("Summarise this: " + "the river runs to the sea and " * 80 + "\n", encoding="utf-8")
    try:
        async with app.run_test(size=(140, 40)) as pilot:
            screen = await _open_compare(pilot, app)
            await pilot.press("s", "enter", "f", "i", "l", "e", "enter")
            await pilot.pause(0.1)
            # An earlier test may have left "file" chosen with its own path: replace the field's text.
            file_field = screen.query_one("#compare-file")
            file_field.value = str(too_long)
            file_field.focus()
            await pilot.press("enter")
            title = screen.query_one("#compare-title")
            await wait_for(pilot, lambda: "cannot compare" in str(title.render()))
            assert "context" in str(title.render())
            assert not screen.query_one("#compare-progress").display
    finally:
        store.close()
