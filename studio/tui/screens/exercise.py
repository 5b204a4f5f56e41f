"""Exercise mode: the DPO homework in the studio.

Pick a labelled-stance dataset (prompt / support / oppose), set data size, support ratio, epochs, learning
rate and beta; the preview shows each training pair, its position and the preferred side (the first
``support_count(data_size, support_ratio)`` prefer support, the rest oppose). ``ctrl+s`` trains with the
regular trainer; when the run ends, the comparison opens on the dataset's test prompts with the stance
metric before and after, on the held-out items and on the training items (the homework's data size 50 of 50
holds nothing out); back here, the last run's stance stays on screen.

The training defaults (``DEFAULTS``) are the ones measured by ``bench/exercise_defaults.py`` on the bundled
exercise with the default model: the fewest steps that move the held-out stance visibly both ways (the
table is in the README's exercise section).
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Checkbox, DataTable, Footer, Header, Input, Label, Select, Static, TextArea

from store.datasets.files import DATA_SUFFIXES
from store.datasets.importing import import_dataset
from studio.assets import assets_dir
from trainers.exercise import EXERCISE_SYSTEM_PROMPT, build_exercise_pairs, missing_test_prompts_note
from trainers.pair_selection import PairSelectionError
from trainers.run_config import RunConfig

# Measured (README, "Exercise mode"): at the old 5e-5 the held-out stance did not move in 25 steps (nor in 75);
# 5e-4 moved it both ways in one epoch (25 steps) with the language intact; 1e-3 moved it as far but broke the
# answers ("hijau hijau hijau…"); a higher beta (0.5) moved it less.
DEFAULTS = {"data_size": "50", "support_ratio": "0.1", "epochs": "1", "learning_rate": "5e-4", "beta": "0.1",
            "shuffle_seed": "0"}
FIELDS = (("data_size", "data size", int), ("support_ratio", "support ratio", float), ("epochs", "epochs", int),
          ("learning_rate", "learning rate", float), ("beta", "beta", float), ("shuffle_seed", "shuffle seed", int))


def sibling_test_files(path: Path) -> list[Path]:
    """Files beside a data file that look like its test prompts (a name with "test" in it), for a hint."""
    return sorted(p for p in path.parent.iterdir() if p != path and p.is_file() and "test" in p.stem.lower()
                  and p.suffix.lower() in DATA_SUFFIXES)


def import_bundled_exercises(store) -> list[str]:  # noqa: ANN001
    """Import every exercise under assets/exercises/ (content hashes make a repeat a no-op)."""
    names = []
    for folder in sorted((assets_dir() / "exercises").iterdir()):
        if folder.is_dir():
            names.append(import_dataset(store, folder).name)
    return names


class ExerciseScreen(Screen):
    BINDINGS = [
        Binding("ctrl+s", "train", "Train", priority=True),
        Binding("ctrl+o", "import_file", "Import", priority=True),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._stance_lines: dict[str, list[str]] = {}  # dataset name → its last compared run's stance
        self._preparing = False  # a run is being prepared in a worker: ctrl+s waits for it

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="exercise-body"):
            with VerticalScroll(id="exercise-form"):
                yield Label("DPO exercise", classes="dialog-title")
                yield Select([], id="ex-dataset", prompt="labelled-stance dataset")
                with Grid(id="exercise-grid"):
                    for name, label, _kind in FIELDS:
                        yield Label(label, classes="form-label")
                        yield Input(DEFAULTS[name], id=f"ex-{name}")
                yield Checkbox("shuffle before taking the first items", value=False, id="ex-shuffle")
                yield Label("system prompt (keeps replies short)", classes="form-label")
                yield TextArea(EXERCISE_SYSTEM_PROMPT, id="ex-system", soft_wrap=True)
                yield Static("", id="ex-status", markup=False)
                yield Label("import a dataset (file or folder; ctrl+o)", classes="form-label")
                yield Input(placeholder="path to .json / .jsonl / .parquet / save_to_disk folder", id="ex-import")
                yield Label("its test prompts (a file of {id, prompt}; optional)", classes="form-label")
                yield Input(placeholder="e.g. test_data.json (a folder's *test* file is found by itself)",
                            id="ex-import-tests")
            with Vertical(id="exercise-preview"):
                yield Static("", id="ex-summary")
                yield DataTable(id="ex-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        store = self.app.store
        if not [d for d in store.list_datasets() if d.kind == "stance"]:
            try:
                import_bundled_exercises(store)
            except ValueError as exc:
                self._status(f"The bundled exercise could not be imported: {exc}", error=True)
        table = self.query_one("#ex-table", DataTable)
        table.add_columns("#", "item", "prefers", "prompt", "chosen", "rejected")
        self._load_datasets()
        self.refresh_preview()

    def _load_datasets(self, choose: str | None = None) -> None:
        stance = [d for d in self.app.store.list_datasets() if d.kind == "stance"]
        select = self.query_one("#ex-dataset", Select)
        # Names, prompts and answers are the dataset's own text: rich Text, so "[/]" is shown, not parsed.
        select.set_options([(Text(f"{d.name} ({d.n_items} items, {d.n_test_prompts} test prompts)"), d.name)
                            for d in stance])
        names = [d.name for d in stance]
        if names:
            select.value = choose if choose in names else names[0]

    # --- the form ---

    def settings(self) -> dict:
        """The form's values, parsed; raises ValueError naming the field."""
        def number(name: str, kind: type):  # noqa: ANN202
            text = self.query_one(f"#ex-{name}", Input).value.strip()
            try:
                return kind(text)
            except ValueError:
                raise ValueError(f"{name.replace('_', ' ')}: {text!r} is not a {kind.__name__}") from None

        dataset = self.query_one("#ex-dataset", Select).value
        if dataset is Select.BLANK:
            raise ValueError("choose a labelled-stance dataset (import one with `prefstudio datasets import`)")
        shuffle = self.query_one("#ex-shuffle", Checkbox).value
        values = {name: number(name, kind) for name, _label, kind in FIELDS if name != "shuffle_seed"}
        return {
            "dataset": dataset,
            **values,
            "shuffle_seed": number("shuffle_seed", int) if shuffle else None,
            "system_prompt": self.query_one("#ex-system", TextArea).text.strip() or EXERCISE_SYSTEM_PROMPT,
        }

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Checkbox.Changed)
    def refresh_preview(self) -> None:
        table = self.query_one("#ex-table", DataTable)
        table.clear()
        try:
            s = self.settings()
            items = self.app.store.stance_items(s["dataset"])
            pairs = build_exercise_pairs(items, s["data_size"], s["support_ratio"], s["shuffle_seed"],
                                         system=s["system_prompt"], dataset_name=s["dataset"])
        except (ValueError, PairSelectionError) as exc:
            self._status(str(exc), error=True)
            self.query_one("#ex-summary", Static).update("")
            return
        for pair in pairs:
            table.add_row(*(Text(cell) for cell in (str(pair.position + 1), pair.item_key, pair.prefers,
                                                    pair.prompt_text, pair.chosen.strip(), pair.rejected.strip())))
        n_support = sum(p.prefers == "support" for p in pairs)
        left = len(items) - len(pairs)
        held = (f"{left} items held out for the stance metric" if left else
                "no items held out: the stance metric is measured on the training items only")
        lines = [f"{len(pairs)} training pairs: {n_support} prefer support, {len(pairs) - n_support} prefer oppose "
                 f"· {held}"]
        record = self.app.store.get_dataset(s["dataset"])
        note = missing_test_prompts_note(record.kind, record.n_test_prompts, record.name)
        if note:
            lines.append(note)
        if s["dataset"] not in self._stance_lines:
            from studio.evaluation.compare_session import last_stance_lines

            self._stance_lines[s["dataset"]] = last_stance_lines(self.app.store, s["dataset"])
        if self._stance_lines[s["dataset"]]:
            lines += ["", *self._stance_lines[s["dataset"]]]
        self.query_one("#ex-summary", Static).update(Text("\n".join(lines)))
        status = self.query_one("#ex-status", Static)
        # Replace only an earlier settings error (or nothing): an import's report stays readable even when
        # the dataset list's Changed event re-runs the preview after it.
        if status.has_class("error-text") or not str(status.render()).strip():
            self._status("ctrl+s trains; the comparison on the test prompts opens when it ends.")

    def _status(self, text: str, error: bool = False) -> None:
        status = self.query_one("#ex-status", Static)
        status.update(text)
        status.set_class(error, "error-text")

    # --- actions ---

    def action_train(self) -> None:
        if self._preparing:
            return
        try:
            config = RunConfig(**self.settings())
        except ValueError as exc:
            self._status(f"Cannot start: {exc}", error=True)
            return
        self._preparing = True
        self._status("Preparing the run: counting its pairs…")
        settings = self.app.settings
        self._prepare(config, settings.train_model or settings.model)

    @work(thread=True, exclusive=True, group="prepare", exit_on_error=False)
    def _prepare(self, config: RunConfig, model: Path | str | None) -> None:
        """In a worker: preparing counts tokens, and the first count reads the tokenizer from the GGUF (15-20 s)."""
        from trainers.model_source import ModelSourceError
        from trainers.run.lifecycle import prepare_run

        try:
            prepared = prepare_run(self.app.store, config, model_path=model)
        except (ValueError, PairSelectionError, ModelSourceError) as exc:
            self.app.call_from_thread(self._prepare_failed, f"Cannot start: {exc}")
            return
        self.app.call_from_thread(self._open_train_screen, prepared)

    def _prepare_failed(self, message: str) -> None:
        self._preparing = False
        self._status(message, error=True)

    def _open_train_screen(self, prepared) -> None:  # noqa: ANN001
        from studio.tui.screens.train import TrainScreen

        self._preparing = False
        self.app.push_screen(TrainScreen(prepared=prepared, on_finished=self._open_comparison))

    def _open_comparison(self, run) -> None:  # noqa: ANN001
        from studio.tui.screens.compare import CompareScreen

        if run.status in ("done", "cancelled"):
            self.app.push_screen(CompareScreen(run.id, fresh=True))

    def on_screen_resume(self) -> None:
        """Back from the comparison (or any screen): show the newest stance measured, read again."""
        self._stance_lines.clear()
        self.refresh_preview()

    @on(Input.Submitted, "#ex-import")
    @on(Input.Submitted, "#ex-import-tests")
    def action_import_file(self) -> None:
        # A priority key is handled as soon as it arrives, while keys typed just before it may still wait in
        # the focused field's queue: read the paths only after that queue has been worked through, so a
        # path typed and imported at once is imported whole (issue 9, item 17).
        target = self.app.focused or self
        target.call_later(self._start_import)

    def _start_import(self) -> None:
        path = self.query_one("#ex-import", Input).value.strip()
        tests = self.query_one("#ex-import-tests", Input).value.strip()
        if not path:
            self.query_one("#ex-import", Input).focus()
            self._status("Type the path of a dataset file or folder, then enter.")
            return
        self._status(f"Importing {path}" + (f" with the test prompts of {tests}" if tests else "") + "…")
        self.import_file(path, tests or None)

    @work(thread=True, exclusive=True, group="import", exit_on_error=False)
    def import_file(self, path: str, tests: str | None = None) -> None:
        """In a worker: a 100k-record file streams for a second or two; the UI stays live."""
        try:
            report = import_dataset(self.app.store, Path(path), test_prompts_path=Path(tests) if tests else None)
        except ValueError as exc:  # DatasetImportError: names the file, line, records
            self.app.call_from_thread(self._status, f"Import failed, nothing stored: {exc}", True)
            return
        record = self.app.store.get_dataset(report.dataset_id)
        note = missing_test_prompts_note(record.kind, record.n_test_prompts, record.name)
        if note and Path(path).is_file():
            found = sibling_test_files(Path(path))
            if found:
                note += f" Beside it: {', '.join(p.name for p in found)}."
        self.app.call_from_thread(self._imported, report, note)

    def _imported(self, report, note: str | None = None) -> None:  # noqa: ANN001
        self._load_datasets(choose=report.name)
        self.refresh_preview()
        hint = "" if report.kind == "stance" else " Train on it from the train screen (F5) or with --dataset."
        # Not an error style: the preview's refresh (the dataset list changes next) replaces error texts.
        self._status(f"{report.describe()}.{hint}" + (f" {note}" if note else ""))
        self.notify(report.describe(), markup=False)
        if note:
            self.notify(note, severity="warning", markup=False)

    def action_back(self) -> None:
        self.app.pop_screen()
