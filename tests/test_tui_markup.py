"""User, model, file and dataset text is never Rich/Textual markup, on any screen (issue 10, item 7).

Each test puts text such as ``[/]`` (which Textual's markup parser refuses with MarkupError and which ended
the app), ``[bold]x[/bold]`` and ``[link=x]`` wherever a screen shows text, and checks that it is shown
literally and the app keeps running. Real app, real model, real SQLite.
"""

from __future__ import annotations

import json

from conftest import error_shown, offered, wait_for
from test_tui_chat import ask, make_app  # noqa: F401  (make_app is a fixture used by name)

from store.datasets.importing import import_dataset
from studio.evaluation.compare_session import EVALUATION_KIND
from studio.evaluation.prompt_bank import load_bank
from studio.tui.screens.modals import ErrorScreen, TextEditScreen
from studio.tui.widgets.conversation_turn import ConversationTurn

MARKUP = "[/] [bold]x[/bold] [link=x]y[/link] [red"


def shown(widget) -> str:  # noqa: ANN001
    """What a widget displays, as plain text."""
    return str(widget.render())


def toasts(app) -> list[str]:  # noqa: ANN001
    """The notifications on screen (Textual's toasts), as the user reads them."""
    return [shown(toast) for toast in app.screen.query("Toast")]


async def test_chat_shows_typed_and_model_text_literally(make_app, tmp_path):  # noqa: F811
    bank_file = tmp_path / "[bold]odd[-]bank[red].txt"  # a file name cannot hold "/"
    bank_file.write_text(f"{MARKUP} first bank prompt\n\nsecond\n", encoding="utf-8")
    app = make_app()
    app.prompt_banks = [load_bank(bank_file)]
    async with app.run_test(size=(120, 36), notifications=True) as pilot:  # toasts shown, as to a user
        await wait_for(pilot, lambda: app.engine is not None and app.chat.state == "input")
        chat = app.chat
        # Typed key by key, as a user would.
        chat.query_one("#prompt-input").focus()
        await pilot.press(*f"Say {MARKUP}")
        assert chat.query_one("#prompt-input").value == f"Say {MARKUP}"
        with app.engine.session("the test"):  # the candidates wait, so "generating for: …" is on screen
            await pilot.press("enter")
            assert MARKUP in shown(chat.query_one("#judge-bar"))  # "generating for: …"
        await wait_for(pilot, lambda: chat.state == "judging")
        (pending,) = chat.query(ConversationTurn)
        assert f"Say {MARKUP}" in shown(pending)
        # Model text reaches the candidate panels through show_text / finish.
        chat.panels[0].show_text(MARKUP)
        assert shown(chat.panels[0].query_one("Static")) == MARKUP
        await pilot.press("e")  # the user's edit becomes the assistant turn
        await wait_for(pilot, lambda: isinstance(app.screen, TextEditScreen))
        app.screen.query_one("TextArea").text = f"Reply {MARKUP}"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: chat.state == "input")
        user_turn, reply_turn = chat.query(ConversationTurn)
        assert shown(user_turn).endswith(f"Say {MARKUP}") and shown(reply_turn).endswith(f"Reply {MARKUP}")
        assert app.store.turns(chat.session_id)[0].content == f"Say {MARKUP}"
        # A bank whose file name and prompts look like markup: the input, the counter, the palette.
        await pilot.press("f3")
        assert chat.query_one("#prompt-input").value == f"{MARKUP} first bank prompt"
        assert "bank: [bold]odd[-]bank[red] 1/2" in shown(chat.query_one("#counter"))
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert any("odd" in t for t in titles)
        await pilot.press("ctrl+p")
        await pilot.press(*"Use prompt")
        await pilot.pause(0.3)
        await pilot.press("escape")
        # The system prompt editor and notifications.
        await pilot.press("f2")
        await wait_for(pilot, lambda: isinstance(app.screen, TextEditScreen))
        app.screen.query_one("TextArea").text = f"System {MARKUP}"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, TextEditScreen))
        assert chat.system_prompt == f"System {MARKUP}"
        chat.notify(f"screen note {MARKUP}")
        app.notify(f"app note {MARKUP}", severity="error")
        await wait_for(pilot, lambda: {f"screen note {MARKUP}", f"app note {MARKUP}"} <= set(toasts(app)), timeout=10)
        assert app.is_running


async def test_error_dialog_and_editor_titles_are_literal(make_app):  # noqa: F811
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: app.engine is not None and app.chat.state == "input")
        app.push_screen(ErrorScreen(f"Title {MARKUP}", f"Message {MARKUP}"))
        await wait_for(pilot, lambda: error_shown(app))
        await pilot.pause(0.1)
        assert shown(app.screen.query_one("#error-message")) == f"Message {MARKUP}"
        assert shown(app.screen.query_one(".dialog-title")) == f"Title {MARKUP}"
        await pilot.press("escape")
        app.push_screen(TextEditScreen(f"Edit {MARKUP}", MARKUP, f"hint {MARKUP}"))
        await wait_for(pilot, lambda: isinstance(app.screen, TextEditScreen))
        await pilot.pause(0.1)
        assert shown(app.screen.query_one(".dialog-title")) == f"Edit {MARKUP}"
        assert app.screen.query_one("TextArea").text == MARKUP
        await pilot.press("escape")
        assert app.is_running


async def test_compare_screen_shows_prompts_answers_and_sources_literally(make_app, tmp_path):  # noqa: F811
    from studio.tui.screens.compare import CompareScreen, ComparisonFailed

    app = make_app()
    store = app.store
    run_id = store.create_run({}, "gemma", str(tmp_path / "run"), [], [])
    store.set_run_status(run_id, "done")
    rows = [{"prompt": f"Prompt {MARKUP}", "base_text": f"Base {MARKUP}", "tuned_text": f"Tuned {MARKUP}",
             "seed": 1}]
    store.save_evaluation(run_id, EVALUATION_KIND, {"run_id": run_id, "prompts_source": f"file {MARKUP}",
                                                    "seed": 0, "rows": rows})
    async with app.run_test(size=(130, 40)) as pilot:
        await wait_for(pilot, lambda: app.engine is not None and app.chat.state == "input")
        app.push_screen(CompareScreen(run_id))
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.result is not None)
        await pilot.pause(0.2)
        screen = app.screen
        assert f"Prompt {MARKUP}" in shown(screen.query_one("#compare-prompt"))
        answers = {shown(screen.query_one(f"#{side} Static")) for side in ("compare-left", "compare-right")}
        assert answers == {f"Base {MARKUP}", f"Tuned {MARKUP}"}
        assert f"file {MARKUP}" in shown(screen.query_one("#compare-title"))
        await pilot.press("b")  # revealed: the panel titles name the sides
        await pilot.pause(0.1)
        assert app.is_running and isinstance(app.screen, CompareScreen)
        # A failure quotes its cause (a file name, a prompt) in the title.
        screen.post_message(ComparisonFailed(f"prompts file {MARKUP} is empty"))
        await wait_for(pilot, lambda: "cannot compare" in shown(screen.query_one("#compare-title")))
        assert f"prompts file {MARKUP} is empty" in shown(screen.query_one("#compare-title"))
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is app.chat)


async def test_train_screen_shows_dataset_names_and_errors_literally(make_app, tmp_path):  # noqa: F811
    from studio.tui.screens.train import TrainScreen

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"P{i} {MARKUP}", "chosen": f"yes {MARKUP}", "rejected": "no"})
                            + "\n" for i in range(3)), encoding="utf-8")
    app = make_app()
    import_dataset(app.store, data, name=f"set {MARKUP}")
    async with app.run_test(size=(130, 40), notifications=True) as pilot:  # toasts shown, as to a user
        await wait_for(pilot, lambda: app.engine is not None and app.chat.state == "input")
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen))
        screen = app.screen
        scope = screen.query_one("#cfg-scope")
        assert any(f"set {MARKUP}" in choice for choice in offered(scope))
        scope.value = f"dataset:set {MARKUP}"
        screen.query_one("#cfg-epochs").value = MARKUP
        await pilot.press("ctrl+s")
        await pilot.pause(0.3)
        status = shown(screen.query_one("#train-status"))
        assert MARKUP in status  # "epochs: '[/] …' is not a number"
        # A run whose log and failure message hold such text: the log tail, the status, the notification.
        run_dir = tmp_path / "runs" / "run-markup"
        run_dir.parent.mkdir()
        run_dir.with_name("run-markup.log").write_text(f"step 1 {MARKUP}\nTraceback {MARKUP}\n", encoding="utf-8")
        run_id = app.store.create_run({}, "gemma", str(run_dir), [], [])
        app.store.set_run_status(run_id, "failed", message=f"boom {MARKUP}")
        screen.follow(run_id, None)  # as the screen follows a run it started
        await wait_for(pilot, lambda: "failed" in shown(screen.query_one("#train-status")), timeout=30)
        assert f"boom {MARKUP}" in shown(screen.query_one("#train-status"))
        log_lines = [strip.text for strip in screen.query_one("#train-log").lines]
        assert f"step 1 {MARKUP}" in log_lines and f"Traceback {MARKUP}" in log_lines
        await wait_for(pilot, lambda: any(f"boom {MARKUP}" in message for message in toasts(app)), timeout=10)
        await pilot.pause(0.2)
        assert app.is_running and isinstance(app.screen, TrainScreen)


async def test_exercise_screen_shows_dataset_text_and_import_errors_literally(make_app, tmp_path):  # noqa: F811
    from studio.tui.screens.exercise import ExerciseScreen

    folder = tmp_path / "stance"
    folder.mkdir()
    items = [{"id": i, "prompt": f"Q{i} {MARKUP}", "support": f"yes {MARKUP}", "oppose": f"no {MARKUP}"}
             for i in range(4)]
    (folder / "labelled_data.json").write_text(json.dumps(items), encoding="utf-8")
    app = make_app()
    import_dataset(app.store, folder / "labelled_data.json", name=f"stance {MARKUP}")
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, lambda: app.engine is not None and app.chat.state == "input")
        await pilot.press("f8")
        await wait_for(pilot, lambda: isinstance(app.screen, ExerciseScreen))
        screen = app.screen
        select = screen.query_one("#ex-dataset")
        select.value = f"stance {MARKUP}"
        screen.query_one("#ex-data_size").value = "3"
        await pilot.pause(0.3)
        table = screen.query_one("#ex-table")
        cells = {str(table.get_cell_at((r, c))) for r in range(table.row_count) for c in range(6)}
        assert f"yes {MARKUP}" in cells and f"no {MARKUP}" in cells
        assert any(f"Q0 {MARKUP}" in cell for cell in cells)
        screen.query_one("#ex-import").value = str(tmp_path / f"missing {MARKUP}.json")
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: "missing" in shown(screen.query_one("#ex-status")), timeout=30)
        assert f"missing {MARKUP}.json" in shown(screen.query_one("#ex-status"))
        assert app.is_running and isinstance(app.screen, ExerciseScreen)
