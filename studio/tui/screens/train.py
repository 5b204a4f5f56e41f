"""The train screen: a config form, a start key, live loss / margin / accuracy plots, progress, log, cancel.

Training runs in its own process (``trainers.run.lifecycle.start_run_process``), so an OOM or crash there
never takes the UI down. This screen only polls: new metric rows and the run status from the store, new
lines from the run's log file, and whether the process is still alive.

Before a run starts, the form shows what it would train on (pairs used, dropped and why, max length, steps),
counted in a worker with the model's tokenizer alone (``trainers.run.lifecycle.plan_for_config``); the
first count reads the tokenizer from the GGUF (15-20 s), later ones reuse it. Preparing a run counts the same
way, also in a worker, so the numbers shown before and after the start are the same numbers.
"""

from __future__ import annotations

import math
import subprocess
import time
from dataclasses import fields
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.content import Content
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import (
    Button,
    Checkbox,
    Footer,
    Header,
    Input,
    Label,
    ProgressBar,
    RichLog,
    Select,
    Static,
)
from textual.worker import get_current_worker
from textual_plotext import PlotextPlot

from studio.tui.widgets.rl_samples import RLSamplesPanel
from trainers.methods.registry import METHODS, feedback_of
from trainers.model_source import ModelSourceError
from trainers.run.lifecycle import (
    ACTIVE,
    finalize_dead_run,
    plan_for_config,
    prepare_run,
    request_cancel,
    start_run_process,
)
from trainers.run.outputs import RunPaths
from trainers.run_config import LOSS_TYPES, RunConfig

# The fields a user tunes most; everything else keeps the last run's value (or the default).
FORM_FIELDS = ("epochs", "beta", "learning_rate", "batch_size", "max_length", "lora_r", "data_size",
               "heldout_fraction", "init_from")  # init_from: an earlier run's id, empty for the base
POLL_SECONDS = 0.5
PLAN_DELAY = 0.4  # seconds of no typing before the form's numbers are counted again
AUTO = "auto"  # what the form shows for a setting chosen from the data (max length)
METHOD_LABELS = {"dpo": "DPO: preference pairs", "sft": "SFT: demonstrations", "kto": "KTO: good / bad labels",
                 "reward": "reward model: pairs", "rloo": "RLOO: prompts scored by a reward model"}
# Each method's own live metrics (the keys its trainer logs, read back from the store) on the second plot.
METHOD_PLOTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dpo": ("reward margin / accuracy", ("rewards/margins", "rewards/accuracies")),
    "sft": ("token accuracy", ("mean_token_accuracy",)),
    "kto": ("KL / reward of good, bad", ("kl", "rewards/chosen", "rewards/rejected")),
    "reward": ("accuracy / margin", ("accuracy", "margin")),
    "rloo": ("reward, spread / KL", ("reward", "reward_std", "kl")),  # TRL RLOOTrainer's keys
}
# More of a method's live numbers, on the rate line only (an RL run's entropy and reply length in tokens).
METHOD_NUMBERS: dict[str, tuple[str, ...]] = {"rloo": ("entropy", "completions/mean_length")}
# The checkbox that lets a method learn from pairs too, per method (DPO learns from nothing else).
FROM_PAIRS = {"sft": ("sft_include_chosen", "also learn the chosen reply of each pair"),
              "kto": ("kto_from_pairs", "also use pairs: chosen good, rejected bad")}
DATASET_KINDS = {"preference": "pairs", "demonstrations": "demonstrations", "labels": "labels"}


def _help(name: str) -> str | None:
    return next((f.metadata.get("help") for f in fields(RunConfig) if f.name == name), None)


def is_rl(method: str) -> bool:
    """An online RL method (rloo): it learns from prompts scored by a reward run, so the form asks which, and the
    screen shows its sampled replies."""
    return feedback_of(method) == "prompts"


def method_plot(method: str) -> tuple[str, tuple[str, ...]]:
    """The second plot's title and series for a run of ``method`` (DPO's for a method that names none)."""
    return METHOD_PLOTS.get(method, METHOD_PLOTS["dpo"])


def _parse(config_field, text: str):  # noqa: ANN001, ANN202
    text = text.strip()
    kind = str(config_field.type)
    if text.lower() in ("", AUTO) and "None" in kind:
        return None
    if "int" in kind:
        return int(text)
    if "float" in kind:
        return float(text)
    return text


class MetricPlot(PlotextPlot):
    """A small live line chart of one or two metric series."""

    def __init__(self, title: str, series: tuple[str, ...], **kwargs) -> None:
        super().__init__(**kwargs)
        self.title = title
        self.series = series
        self.points: dict[str, list[tuple[float, float]]] = {name: [] for name in series}

    def add(self, step: float, metrics: dict) -> None:
        for name in self.series:
            if name in metrics and metrics[name] is not None:
                self.points[name].append((step, float(metrics[name])))

    def clear_points(self) -> None:
        for name in self.series:
            self.points[name] = []
        self.redraw()

    def set_series(self, title: str, series: tuple[str, ...]) -> None:
        """Plot other metrics from now on (another method's), starting empty."""
        self.title, self.series = title, series
        self.points = {name: [] for name in series}
        self.redraw()

    def redraw(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.title(self.title)
        for name, pts in self.points.items():
            if pts:
                plt.plot([p[0] for p in pts], [p[1] for p in pts], label=name.split("/")[-1])
        self.refresh()


def _from_pairs(config: RunConfig) -> bool:
    return config.sft_include_chosen if config.method == "sft" else config.kto_from_pairs


class TrainScreen(Screen):
    BINDINGS = [
        Binding("ctrl+s", "start", "Start", priority=True),
        Binding("ctrl+r", "resume", "Resume", priority=True),
        Binding("ctrl+x", "cancel_run", "Cancel run", priority=True),
        Binding("escape", "back", "Back to chat"),
    ]

    def __init__(self, prepared=None, on_finished=None) -> None:  # noqa: ANN001
        """``prepared`` (a trainers PreparedRun) starts that run at once; ``on_finished(run)`` is called
        when a run this screen follows ends (the exercise opens the comparison from there)."""
        super().__init__()
        self._prepared = prepared
        self._on_finished = on_finished
        self.run_id: int | None = None
        self.run_method = "dpo"  # the followed run's method: which numbers the screen shows
        self.process: subprocess.Popen | None = None
        self.total_steps: int | None = None
        self.last_step: int | None = None
        self.log_offset = 0
        self.log_path: Path | None = None
        self.started_at: float | None = None
        self.first_step_at: tuple[float, int] | None = None
        self.plan_text = ""  # what the form's settings would train on (or why they cannot)
        self._plan_timer: Timer | None = None
        self._preparing = False

    # --- layout ---

    def compose(self) -> ComposeResult:
        base = self._base_config()
        yield Header()
        with Horizontal(id="train-body"):
            with Vertical(id="train-form"):
                yield Label("LoRA run", classes="dialog-title")
                with Grid(id="form-grid"):
                    for f in fields(RunConfig):
                        if f.name in FORM_FIELDS:
                            value = getattr(base, f.name)
                            empty = AUTO if f.name == "max_length" else ""
                            yield Label(f.name.replace("_", " "), classes="form-label")
                            yield Input(empty if value is None else str(value), id=f"cfg-{f.name}",
                                        tooltip=f.metadata.get("help"))
                    yield Label("method", classes="form-label")
                    yield Select([(METHOD_LABELS.get(name, name), name) for name in METHODS], value=base.method,
                                 allow_blank=False, id="cfg-method")
                    yield from self._reward_run_field(base)
                    yield Label("loss type", classes="form-label")
                    yield Select([(name, name) for name in LOSS_TYPES], value=base.loss_type, allow_blank=False,
                                 id="cfg-loss_type", disabled=base.method != "dpo")
                    yield Label("data from", classes="form-label")
                    datasets = [d for d in self.app.store.list_datasets() if d.kind in DATASET_KINDS]
                    yield Select([("every session", "all"), ("this session", "session")]
                                 + [(Text(f"dataset {d.name} ({d.n_items} {DATASET_KINDS[d.kind]})"),  # not markup
                                     f"dataset:{d.name}") for d in datasets],
                                 value="all", allow_blank=False, id="cfg-scope")
                yield Checkbox(FROM_PAIRS.get(base.method, ("", ""))[1], _from_pairs(base), id="cfg-from_pairs",
                               disabled=base.method not in FROM_PAIRS)
                # Checked with the studio's safety checkers while the run is prepared; the count is in the status.
                yield Checkbox("drop if chosen reply is flagged", base.drop_flagged, id="cfg-drop_flagged",
                               tooltip=_help("drop_flagged"))
                yield Button("Start training (ctrl+s)", id="start", variant="success")
                yield Static("", id="train-plan", markup=False)
                yield Static("", id="train-status", markup=False)
            with Vertical(id="train-live"):
                with Horizontal(id="plots"):
                    yield MetricPlot("loss", ("loss",), id="plot-loss")
                    yield MetricPlot(*method_plot(base.method), id="plot-margin")
                yield ProgressBar(id="train-progress", show_eta=True)
                yield Static("", id="train-rate", markup=False)
                samples = RLSamplesPanel(id="rl-samples")
                samples.display = False  # an RL run's (rloo) only
                yield samples
                yield RichLog(id="train-log", max_lines=400, wrap=False, markup=False)
        yield Footer()

    def _reward_run_field(self, base: RunConfig) -> ComposeResult:
        """RLOO's reward model: the finished reward runs, newest first (the last run's choice when it is one);
        shown only while an RL method is chosen."""
        runs = [r for r in self.app.store.list_runs()
                if r.status == "done" and (r.config or {}).get("method") == "reward"]
        chosen = getattr(base, "reward_run", None)
        label = Label("reward model", classes="form-label", id="reward-run-label")
        select = Select([(f"reward run {r.id} ({r.created_at[:16]})", r.id) for r in runs],
                        value=chosen if chosen in {r.id for r in runs} else (runs[0].id if runs else Select.NULL),
                        prompt="no finished reward run", id="cfg-reward_run", tooltip=_help("reward_run"))
        label.display = select.display = is_rl(base.method)
        yield label
        yield select

    def on_mount(self) -> None:
        self.query_one("#start", Button).focus()
        self.set_interval(POLL_SECONDS, self.poll)
        if self._prepared is not None:
            self._launch(self._prepared, self._prepared.config)
            return
        runs = self.app.store.list_runs()
        if runs and runs[0].status in ACTIVE:
            self.follow(runs[0].id, None)
        self._schedule_plan()

    def _base_config(self) -> RunConfig:
        """Prefilled from the last run, so a second run is one key away."""
        runs = self.app.store.list_runs()
        if runs:
            try:
                return RunConfig.from_dict(runs[0].config)
            except (TypeError, ValueError):
                pass
        return RunConfig()

    def _config_from_form(self) -> RunConfig:
        values = {}
        by_name = {f.name: f for f in fields(RunConfig)}
        for name in FORM_FIELDS:
            text = self.query_one(f"#cfg-{name}", Input).value
            try:
                values[name] = _parse(by_name[name], text)
            except ValueError:
                raise ValueError(f"{name.replace('_', ' ')}: {text!r} is not a number") from None
        method = str(self.query_one("#cfg-method", Select).value)
        values["method"] = method
        # The settings of another method are refused by RunConfig, so switching methods resets them.
        values["loss_type"] = self.query_one("#cfg-loss_type", Select).value if method == "dpo" else "sigmoid"
        from_pairs = self.query_one("#cfg-from_pairs", Checkbox).value
        values["sft_include_chosen"] = method == "sft" and from_pairs
        values["kto_from_pairs"] = method == "kto" and from_pairs
        values["drop_flagged"] = self.query_one("#cfg-drop_flagged", Checkbox).value
        values["desirable_weight"] = values["undesirable_weight"] = None  # KTO: from the data's balance
        if is_rl(method):  # the other methods' configs have no reward model to name
            reward_run = self.query_one("#cfg-reward_run", Select).value
            values["reward_run"] = reward_run if isinstance(reward_run, int) else None
        else:  # a last run's RL settings are refused by another method's config
            values.update({f.name: f.default for f in fields(RunConfig)
                           if (f.metadata.get("help") or "").startswith("RLOO only")})
        scope = self.query_one("#cfg-scope", Select).value
        values["session_id"] = self.app.current_session_id if scope == "session" else None
        dataset = scope.removeprefix("dataset:") if scope.startswith("dataset:") else None
        base = self._base_config()
        return base.replace(**values, train_model=None, dataset=dataset, max_steps=None, support_ratio=None,
                            shuffle_seed=None, system_prompt=None)  # the exercise's settings stay with it

    def _model_path(self):  # noqa: ANN202
        settings = self.app.settings
        return settings.train_model or settings.model

    # --- what the form would train on ---

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Checkbox.Changed)
    def _form_changed(self, event) -> None:  # noqa: ANN001
        if (event.control.id or "").startswith("cfg-"):
            self._schedule_plan()

    @on(Select.Changed, "#cfg-method")
    def _method_changed(self, event: Select.Changed) -> None:
        """The form shows what the chosen method uses: DPO's loss type, the others' learning from pairs too,
        and the method's own metrics on the second plot."""
        method = str(event.value)
        self.query_one("#cfg-loss_type", Select).disabled = method != "dpo"
        box = self.query_one("#cfg-from_pairs", Checkbox)
        box.disabled = method not in FROM_PAIRS
        box.label = FROM_PAIRS.get(method, ("", ""))[1]
        for widget in (self.query_one("#reward-run-label"), self.query_one("#cfg-reward_run")):
            widget.display = is_rl(method)
        if self.run_id is None:  # a run being followed keeps its own method's plot
            self.query_one("#plot-margin", MetricPlot).set_series(*method_plot(method))

    def _schedule_plan(self) -> None:
        if self._prepared is not None:
            return
        if self._plan_timer is not None:
            self._plan_timer.stop()
        self._plan_timer = self.set_timer(PLAN_DELAY, self._start_plan)

    def _start_plan(self) -> None:
        try:
            config = self._config_from_form()
        except ValueError as exc:
            self._show_plan(f"Cannot count the pairs: {exc}", error=True)
            return
        self._show_plan("Counting the pairs with the model's tokenizer… (the first time reads it from the model, "
                        "15-20 s)")
        self._count_pairs(config, self._model_path())

    @work(thread=True, exclusive=True, group="plan", exit_on_error=False)
    def _count_pairs(self, config: RunConfig, model) -> None:  # noqa: ANN001
        worker = get_current_worker()
        try:
            selection = plan_for_config(self.app.store, config, model)
        except (ValueError, ModelSourceError) as exc:  # RunConfigError / PairSelectionError: user-facing
            text, error = f"Cannot start: {exc}", True
        else:
            text, error = f"Will train: {selection.report.describe()}", False
            if config.init_from is not None:  # plan_for_config checked the run: done, same model, an LM adapter
                text += f" · starting from run {config.init_from}'s model (its adapter merged in)"
        if not worker.is_cancelled:
            self.app.call_from_thread(self._show_plan, text, error)

    def _show_plan(self, text: str, error: bool = False) -> None:
        self.plan_text = text
        plan = self.query_one("#train-plan", Static)
        plan.update(text)
        plan.set_class(error, "error-text")

    # --- actions ---

    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        if self._preparing or (self.process is not None and self.process.poll() is None):
            self.notify("A run is already starting or training; cancel it first (ctrl+x).", severity="warning")
            return
        try:
            config = self._config_from_form()
        except ValueError as exc:
            self._status(f"Cannot start: {exc}", error=True)
            return
        self._preparing = True
        self._status("Preparing the run: counting its pairs…")
        self._prepare(config, self._model_path())

    @work(thread=True, exclusive=True, group="prepare", exit_on_error=False)
    def _prepare(self, config: RunConfig, model) -> None:  # noqa: ANN001
        """Prepare in a worker: the first count of tokens reads the tokenizer from the GGUF (15-20 s)."""
        try:
            if config.drop_flagged:  # the chosen replies checked with the studio's checkers, stored for the trainer
                from studio.safety.training_checks import check_before_prepare

                settings = self.app.settings
                check_before_prepare(settings.safety, settings.threads)(
                    self.app.store, config, lambda line: self.app.call_from_thread(self._status, line))
            prepared = prepare_run(self.app.store, config, model_path=model)
        except (ValueError, ModelSourceError) as exc:  # RunConfigError / PairSelectionError: user-facing
            self.app.call_from_thread(self._prepare_failed, f"Cannot start: {exc}")
            return
        self.app.call_from_thread(self._launch, prepared, prepared.config)

    def _prepare_failed(self, message: str) -> None:
        self._preparing = False
        self._status(message, error=True)

    def _launch(self, prepared, config: RunConfig) -> None:  # noqa: ANN001
        self._preparing = False
        report = prepared.selection.report
        n_train = len(prepared.selection.train_ids)
        per_epoch = math.ceil(n_train / (config.batch_size * config.grad_accum))
        self.total_steps = report.steps or config.max_steps or per_epoch * config.epochs
        self._start_process(prepared.run_id, resume=False)
        self.query_one("#train-progress", ProgressBar).update(total=self.total_steps, progress=0)
        self._status(f"Run {prepared.run_id}: {report.describe()}")

    def action_resume(self) -> None:
        run = self._latest_run()
        if run is None:
            self.notify("No run to resume yet.", severity="warning")
            return
        if run.status in ACTIVE and self.process is not None and self.process.poll() is None:
            self.notify("That run is still training.", severity="warning")
            return
        self.total_steps = None
        self._start_process(run.id, resume=True)
        self._status(f"Resuming run {run.id} from its last checkpoint…")

    def action_cancel_run(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.notify("No run is training.", severity="warning")
            return
        request_cancel(self.process.pid)
        self._status(f"Cancelling run {self.run_id}: it stops at the next step and saves the adapter so far…")

    def action_back(self) -> None:
        self.app.pop_screen()

    # --- process and polling ---

    def _latest_run(self):  # noqa: ANN202
        if self.run_id is not None:
            return self.app.store.get_run(self.run_id)
        runs = self.app.store.list_runs()
        return runs[0] if runs else None

    def _start_process(self, run_id: int, resume: bool) -> None:
        process = start_run_process(run_id, self.app.store.path, resume=resume, store=self.app.store)
        self.follow(run_id, process)

    def follow(self, run_id: int, process: subprocess.Popen | None) -> None:
        """Show ``run_id`` from its first metric row and log line. A resumed run is re-read too: its rows
        after the checkpoint were replaced, and its log file holds the earlier attempt as well."""
        self.run_id = run_id
        self.process = process
        self.last_step = None
        run = self.app.store.get_run(run_id)
        method = self.run_method = (run.config or {}).get("method", "dpo")
        for plot in self.query(MetricPlot):
            plot.clear_points()
        self.query_one("#plot-margin", MetricPlot).set_series(*method_plot(method))
        self.query_one("#train-log", RichLog).clear()
        paths = RunPaths(Path(run.output_dir))
        samples = self.query_one("#rl-samples", RLSamplesPanel)
        samples.display = is_rl(method)
        samples.follow(paths if is_rl(method) else None)
        self.log_path = paths.log_path
        self.log_offset = 0
        self.started_at = time.monotonic()
        self.first_step_at = None
        self.query_one("#train-progress", ProgressBar).query_one("#eta").display = True

    def poll(self) -> None:
        if self.run_id is None:
            return
        store = self.app.store
        rows = store.run_metrics(self.run_id, after_step=self.last_step)
        for row in rows:
            step = row["step"]
            for plot in self.query(MetricPlot):
                plot.add(step, row)
            self.last_step = step
            if self.first_step_at is None:
                self.first_step_at = (time.monotonic(), step)
        if rows:
            for plot in self.query(MetricPlot):
                plot.redraw()
            self._update_progress(rows[-1])
        self.query_one("#rl-samples", RLSamplesPanel).poll()
        self._tail_log()
        run = store.get_run(self.run_id)
        if self.process is not None and self.process.poll() is not None:
            # The process is gone: if it never recorded an end (killed, OOM), mark the run failed.
            if finalize_dead_run(store, self.run_id, self.process.returncode):
                run = store.get_run(self.run_id)
            self.process = None
            self._tail_log()
        elif self.process is None and run.status in ACTIVE and store.mark_stale_runs(
                [self.run_id], when="when the train screen found it"):
            run = store.get_run(self.run_id)  # followed from an earlier studio, and its trainer has died since
        if run.status not in ACTIVE and self.started_at is not None:
            self._finished(run)

    def _update_progress(self, row: dict) -> None:
        bar = self.query_one("#train-progress", ProgressBar)
        total = row.get("total_steps") or self.total_steps
        if total:
            bar.update(total=total, progress=row["step"])
        rate = ""
        if self.first_step_at is not None and row["step"] > self.first_step_at[1]:
            elapsed = time.monotonic() - self.first_step_at[0]
            rate = f"{(row['step'] - self.first_step_at[1]) / elapsed:.2f} steps/s · "
        loss = row.get("loss")
        plotted = self.query_one("#plot-margin", MetricPlot).series  # the run's method's own numbers
        more = METHOD_NUMBERS.get(self.run_method, ())
        self.query_one("#train-rate", Static).update(
            f"step {row['step']}/{total or '?'} · {rate}"
            + (f"loss {loss:.4f}" if loss is not None else "")
            + "".join(f" · {name.split('/')[-1].replace('_', ' ')} {row[name]:+.3f}" for name in plotted
                      if row.get(name) is not None)
            + "".join(f" · {name.split('/')[-1].replace('_', ' ')} {row[name]:.3g}" for name in more
                      if row.get(name) is not None)
        )

    def _tail_log(self) -> None:
        if self.log_path is None or not self.log_path.exists():
            return
        with self.log_path.open("rb") as fh:
            fh.seek(self.log_offset)
            chunk = fh.read()
        if not chunk:
            return
        # Only whole lines; a partial last line waits for the next poll.
        cut = chunk.rfind(b"\n") + 1
        self.log_offset += cut
        log = self.query_one("#train-log", RichLog)
        for line in chunk[:cut].decode("utf-8", "replace").splitlines():
            log.write(line.rstrip("\r"))

    def _finished(self, run) -> None:  # noqa: ANN001
        self.started_at = None
        self._show_end_of_progress(run)
        error = run.status == "failed"
        word = {"done": "finished", "cancelled": "cancelled", "failed": "failed"}.get(run.status, run.status)
        message = f"Run {run.id} {word}." + (f" {run.message}" if run.message else "")
        if run.status in ("done", "cancelled"):
            message += f" Adapter: {run.output_dir}"
        self._status(message, error=error)
        self.notify(message, severity="error" if error else "information", timeout=8)
        if self._on_finished is not None:
            self._on_finished(run)

    def _show_end_of_progress(self, run) -> None:  # noqa: ANN001
        """A finished run reads complete at the trainer's own step count; no ETA keeps counting after the end."""
        bar = self.query_one("#train-progress", ProgressBar)
        summary = run.summary or {}
        steps, total = summary.get("steps"), summary.get("max_steps")
        if run.status == "done" and steps:
            self.total_steps = total or steps
            bar.update(total=self.total_steps, progress=steps)
            self.query_one("#train-rate", Static).update(Content(f"step {steps}/{self.total_steps} · done"))
        bar.query_one("#eta").display = False

    def _status(self, text: str, error: bool = False) -> None:
        status = self.query_one("#train-status", Static)
        status.update(text)
        status.set_class(error, "error-text")
