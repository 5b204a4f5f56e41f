"""A shareable report of one training run: ``report.md``, ``report.html``, ``loss.png`` and ``margins.png``.

Both documents are rendered from one list of blocks, so they always say the same thing. The HTML embeds
the charts, so it can be sent as a single file; the Markdown links to the PNGs beside it.
"""

from __future__ import annotations

import base64
import html
import json
import os
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store.output_folders import earlier_export_files, write_marker
from studio import __version__

if TYPE_CHECKING:
    from store.records import RunRecord
    from studio.evaluation.comparison import BlindTally, ComparisonRow
    from studio.evaluation.safety_metrics import SafetyMetrics

LOSS_PNG = "loss.png"
MARGINS_PNG = "margins.png"
REPORT_FILES = (LOSS_PNG, MARGINS_PNG, "report.html", "report.md")
REPORT_EXPORT_KIND = "report"
UNFINISHED = ("queued", "loading", "training")
METRIC_NOTES = (
    "raw_accuracy: share of held-out pairs where the model gives the chosen reply the higher log-probability. "
    "implicit_reward_accuracy: DPO's measure, the same against the base model's scores "
    "(β·[(logπ(c)−logπref(c)) − (logπ(r)−logπref(r))] > 0). Margins are means over pairs, in nats."
)

REWARD_NOTE = (
    "mean_reward (run N): a trained reward model's (run N) mean score of the base and of the tuned answers to the "
    "comparison prompts below, each answer read after the system prompt and its prompt; higher is better."
)

TRAINING_ITEMS_NOTE = (
    "support_share: share of labelled items where the support answer is more likely than the oppose answer. "
    "The rows marked (training items) are measured on items the run trained on: they show what it learned, "
    "not how it generalises; the unmarked rows are the held-out items, when the run held any out."
)


# The second chart per method: (metric key, axis label) panels; DPO's margins for a method that names none.
# An RL run (rloo, TRL RLOOTrainer's keys) shows how the reward rose and how far the policy moved from the start.
PROGRESS_PANELS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "dpo": ("reward margin and accuracy per step",
            (("rewards/margins", "reward margin"), ("rewards/accuracies", "reward accuracy"))),
    "rloo": ("mean reward and KL to the start per step",
             (("reward", "mean reward"), ("reward_std", "reward spread"), ("kl", "KL to the start"))),
}
# The last logged value of these goes in the Training table, per method (DPO's by default).
FINAL_METRICS: dict[str, tuple[tuple[str, str], ...]] = {
    "dpo": (("final reward margin", "rewards/margins"), ("final reward accuracy", "rewards/accuracies")),
    "rloo": (("final mean reward", "reward"), ("final reward spread", "reward_std"), ("final KL", "kl"),
             ("final entropy", "entropy"), ("final reply length (tokens)", "completions/mean_length")),
}


def _method(run: RunRecord) -> str:
    return str((run.config or {}).get("method", "dpo"))


class ReportError(ValueError):
    """No report can be written for this run (it failed, is still training, or the target is unusable)."""


@dataclass(frozen=True)
class Block:
    """One piece of the report: kind is h1/h2/h3, p, note, table, code or img (text = file name)."""

    kind: str
    text: str = ""
    rows: tuple[tuple[str, ...], ...] = ()  # tables: the first row is the header


def _fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> Block:
    return Block("table", rows=(tuple(header), *(tuple(_fmt(v) for v in row) for row in rows)))


# --- charts ---


def _series(rows: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float) and "step" in r]
    return [p[0] for p in points], [p[1] for p in points]


def _plot(path: Path, rows: Sequence[dict], panels: Sequence[tuple[str, str]]) -> None:
    # Figure without pyplot: no global state, safe from a TUI worker thread, and Agg renders the PNG.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 2.6 * len(panels)), dpi=110, layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (key, label) in zip(axes, panels, strict=True):
        steps, values = _series(rows, key)
        if steps:
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3)
        else:
            ax.text(0.5, 0.5, f"{key} was not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    fig.savefig(path, format="png")


# --- the document ---


def _header(run: RunRecord) -> list[Block]:
    blocks = [
        Block("h1", f"Preference Studio report: run {run.id}"),
        _table(
            ("", ""),
            [("status", run.status), ("message", run.message), ("model", run.model_id),
             ("started", run.created_at), ("last update", run.updated_at), ("output", run.output_dir)],
        ),
    ]
    if run.status == "cancelled":
        steps = (run.summary or {}).get("steps")
        at = f" at step {steps}" if steps is not None else ""
        blocks.append(Block("note", f"This run was cancelled{at}. The adapter is the one saved when it stopped, "
                                    "so these results describe a partly trained model."))
    return blocks


def _data_and_training(run: RunRecord, metrics_rows: Sequence[dict]) -> list[Block]:
    summary = run.summary or {}
    selection = summary.get("selection") or {}
    if selection.get("source"):  # the counts recorded when the run was prepared: the same numbers as its log
        from trainers.feedback_selection import ExampleReport
        from trainers.pair_selection import SelectionReport

        # An SFT / KTO run counted demonstrations or labels (its report names its unit).
        kind = ExampleReport if "unit" in selection else SelectionReport
        rows: list[tuple[str, Any]] = [*kind.from_dict(selection).counts(),
                                       ("dataset hash", run.dataset_hash)]
    else:
        rows = [("training pairs", len(run.pair_ids)), ("held-out pairs", len(run.heldout_ids)),
                ("dataset hash", run.dataset_hash)]
    last = metrics_rows[-1] if metrics_rows else {}
    method = _method(run)
    training = [
        ("steps logged", len(metrics_rows)),
        ("last step", last.get("step")),
        ("final loss", last.get("loss")),
        *((label, last.get(key)) for label, key in FINAL_METRICS.get(method, FINAL_METRICS["dpo"])),
        ("training seconds", (summary.get("seconds") or {}).get("train")),
        ("device", summary.get("device")),
    ]
    # The trainer's own end-of-run evaluation on the held-out pairs (transformers, unquantised).
    evaluation = summary.get("eval") or {}
    training += [(f"trainer eval: {k.removeprefix('eval_')}", evaluation[k])
                 for k in ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins") if k in evaluation]
    # A method that learns from single replies or prompts measures its held-out rows itself, before and after
    # (an RLOO run: the mean reward of greedy replies to its held-out prompts).
    heldout = summary.get("heldout") or {}
    before, after = heldout.get("before") or {}, heldout.get("after") or {}
    training += [(f"held-out {key.replace('_', ' ')}: before → after (trainer)",
                  f"{_fmt(before.get(key))} → {_fmt(value)}") for key, value in after.items()]
    return [
        Block("h2", "Configuration"),
        _table(("option", "value"), sorted((run.config or {}).items())),
        Block("h2", "Data"),
        _table(("", ""), rows),
        Block("h2", "Training"),
        _table(("", ""), training),
        Block("img", LOSS_PNG, rows=((f"{method.upper()} loss per step",),)),
        Block("img", MARGINS_PNG, rows=((_progress_panels(method)[0],),)),
    ]


def _progress_panels(method: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return PROGRESS_PANELS.get(method, PROGRESS_PANELS["dpo"])


def _before_after(before_after: dict[str, Any]) -> list[Block]:
    blocks = [Block("h2", "Held-out metrics, before and after")]
    columns = {label: (v.to_dict() if hasattr(v, "to_dict") else dict(v)) for label, v in before_after.items()}
    if not columns:
        return [*blocks, Block("p", "No held-out metrics were computed.")]
    names: list[str] = []
    for values in columns.values():
        names += [k for k in values if k not in names]
    table = _table(("metric", *columns), [(n, *(c.get(n) for c in columns.values())) for n in names])
    notes = [Block("p", METRIC_NOTES)]
    if any(n.endswith("(training items)") for n in names):  # exercise runs (studio.evaluation.stance_metric)
        notes.append(Block("p", TRAINING_ITEMS_NOTE))
    if any(n.startswith("mean_reward") for n in names):  # a reward model scored the answers
        notes.append(Block("p", REWARD_NOTE))
    return [*blocks, table, *notes]


def _tally(tally: BlindTally | None) -> list[Block]:
    blocks = [Block("h2", "Blind comparison")]
    if tally is None or tally.total == 0:
        return [*blocks, Block("p", "No blind votes were recorded.")]
    interval = tally.interval
    rows = [("tuned wins", tally.wins), ("ties", tally.ties), ("tuned losses", tally.losses),
            ("tuned win rate (ties excluded)", tally.win_rate),
            ("95 % interval (Wilson)", f"{interval[0]:.3f} – {interval[1]:.3f}" if interval else None)]
    return [*blocks, _table(("", ""), rows)]


SAFETY_NOTE = (
    "flagged: answers the checker called unsafe, of those it read; the interval is the 95 % Wilson score interval. "
    "mean score: the checker's probability of unsafe, where it gives one, with a 95 % Student t interval. Both "
    "models answered the same prompts with the same seeds."
)


def _interval(interval: tuple[float, float] | None) -> str | None:
    return f"{interval[0]:.3f} – {interval[1]:.3f}" if interval else None


def _safety(safety: SafetyMetrics | None) -> list[Block]:
    """The safety of base and tuned answers, per checker; nothing when no checker was configured."""
    if safety is None:
        return []
    rows = [(checker.checker, side, f"{values.flagged.flagged}/{values.flagged.checked}", values.flagged.rate,
             _interval(values.flagged.interval), values.score.mean, _interval(values.score.interval))
            for checker in safety.checkers
            for side, values in (("base", checker.base), ("tuned", checker.tuned))]
    blocks = [Block("h2", "Safety checks, before and after"),
              Block("p", f"Every base and tuned answer to the {safety.n_prompts} comparison prompt(s), read by each "
                         "configured checker."),
              _table(("checker", "answers", "flagged", "flagged rate", "95 % interval (Wilson)", "mean score",
                      "95 % interval (t)"), rows),
              Block("p", SAFETY_NOTE)]
    if safety.problems:
        blocks.append(Block("note", f"{len(safety.problems)} check(s) could not be made: "
                                    + "; ".join(safety.problems[:5])))
    return blocks


def _samples(samples: Sequence[ComparisonRow], max_samples: int, note: str = "") -> list[Block]:
    blocks = [Block("h2", "Side-by-side samples")]
    if not samples:
        return [*blocks, Block("p", "No side-by-side answers were generated.")]
    if note:  # where the prompts came from and how both sides sampled (greedy or not)
        blocks.append(Block("p", note))
    for i, row in enumerate(samples[:max_samples], start=1):
        blocks += [Block("h3", f"Sample {i} (seed {row.seed})"), Block("p", "Prompt:"), Block("code", row.prompt),
                   Block("p", "Base:"), Block("code", row.base_text), Block("p", "Tuned:"),
                   Block("code", row.tuned_text)]
    return blocks


def _steering(steering: dict[str, Any] | None, max_samples: int) -> list[Block]:
    """A SteerLM run's latest ``compare --steer``: the same prompts at two settings (stored as evaluation kind
    ``steer_comparison``, studio/evaluation/steer_comparison.py); nothing when there is none."""
    if not steering or not steering.get("rows"):
        return []
    first, second = (",".join(f"{k}:{v}" for k, v in s.items()) for s in steering["settings"])
    blocks = [Block("h2", "Steering side by side"),
              Block("p", f"The run's adapter answering the same prompts (from {steering['prompts_source']}) at "
                         f"[{first}] and at [{second}], with the same seed per prompt.")]
    for i, row in enumerate(steering["rows"][:max_samples], start=1):
        blocks += [Block("h3", f"Prompt {i} (seed {row['seed']})"), Block("code", row["prompt"]),
                   Block("p", f"[{first}]:"), Block("code", row["first_text"]),
                   Block("p", f"[{second}]:"), Block("code", row["second_text"])]
    return blocks


def build_blocks(run: RunRecord, metrics_rows: Sequence[dict], before_after: dict[str, Any],
                 tally: BlindTally | None, samples: Sequence[ComparisonRow], max_samples: int = 5, samples_note: str = "",
                 safety: SafetyMetrics | None = None, steering: dict[str, Any] | None = None) -> list[Block]:
    """The report's content, in order, independent of the output format."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return [*_header(run), *_data_and_training(run, metrics_rows), *_before_after(before_after), *_safety(safety),
            *_tally(tally), *_samples(samples, max_samples, samples_note), *_steering(steering, max_samples),
            Block("p", f"Written by Preference Studio {__version__} on {stamp}.")]


# --- rendering ---


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_fence(text: str) -> str:
    # A fence longer than any backtick run in the text, so model output cannot close it early.
    longest, run_len = 0, 0
    for ch in text:
        run_len = run_len + 1 if ch == "`" else 0
        longest = max(longest, run_len)
    return "`" * max(3, longest + 1)


def render_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "note":
            out.append("> **Note:** " + b.text)
        elif b.kind == "code":
            fence = _md_fence(b.text)
            out.append(f"{fence}text\n{b.text}\n{fence}")
        elif b.kind == "img":
            out.append(f"![{b.rows[0][0]}]({b.text})")
        elif b.kind == "table":
            header, *body = b.rows
            lines = ["| " + " | ".join(_md_cell(c) for c in header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in body]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}
pre{background:#f5f5f5;padding:.6rem;white-space:pre-wrap;word-break:break-word}
.note{background:#fff4d6;border-left:4px solid #e0a800;padding:.5rem 1rem}img{max-width:100%}"""


def render_html(blocks: Sequence[Block], images: dict[str, bytes]) -> str:
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{esc(blocks[0].text if blocks else 'Report')}</title><style>{_CSS}</style></head><body>"]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append(f"<{b.kind}>{esc(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{esc(b.text)}</p>")
        elif b.kind == "note":
            out.append(f'<p class="note"><strong>Note:</strong> {esc(b.text)}</p>')
        elif b.kind == "code":
            out.append(f"<pre>{esc(b.text)}</pre>")
        elif b.kind == "img":
            data = base64.b64encode(images[b.text]).decode("ascii")
            out.append(f'<p><img alt="{esc(b.rows[0][0])}" src="data:image/png;base64,{data}"></p>')
        elif b.kind == "table":
            header, *body = b.rows
            cells = "".join(f"<th>{esc(c)}</th>" for c in header)
            rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in body)
            out.append(f"<table><thead><tr>{cells}</tr></thead><tbody>{rows}</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --- writing ---


def _check_run(run: RunRecord) -> None:
    if run.status == "failed":
        raise ReportError(
            f"run {run.id} failed ({run.message or 'no message'}); it has no trained adapter to report on. "
            "Fix the cause and train again."
        )
    if run.status in UNFINISHED:
        raise ReportError(f"run {run.id} is still {run.status}; wait for it to finish (or cancel it) first")


def _temp_dir(out_dir: Path) -> Path:
    # Not tempfile.mkdtemp: its 0700 mode would become the report directory's after the rename.
    while True:
        tmp = out_dir.parent / f".{out_dir.name}.{secrets.token_hex(4)}.tmp"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def _publish(tmp: Path, out_dir: Path, names: Sequence[str]) -> None:
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        os.replace(tmp, out_dir)  # one rename: the directory appears whole
        return
    # An existing directory with other files in it: replace our files one by one (each appears whole),
    # the Markdown last, so report.md never points at charts that are not there yet.
    for name in names:
        os.replace(tmp / name, out_dir / name)
    tmp.rmdir()


def write_report(
    out_dir: Path,
    run: RunRecord,
    metrics_rows: Sequence[dict],
    before_after: dict[str, Any],
    tally: BlindTally | None,
    samples: Sequence[ComparisonRow],
    max_samples: int = 5,
    samples_note: str = "",
    safety: SafetyMetrics | None = None,
    steering: dict[str, Any] | None = None,
) -> Path:
    """Write the run's report into ``out_dir`` and return the path of ``report.md``.

    ``metrics_rows`` are ``store.run_metrics(run.id)``; ``before_after`` maps a column label ("base",
    "tuned") to its metrics (a dict, or anything with ``to_dict()`` such as ``PreferenceMetrics``);
    ``tally`` is a ``BlindTally`` or None; ``samples`` are ``ComparisonRow``s, the first ``max_samples``
    shown, after ``samples_note`` (how they were generated); ``safety`` the answers' safety per checker, when
    checkers were configured. A failed or unfinished run raises ``ReportError``; a cancelled one is reported with a note.
    Everything is written in a temporary directory beside ``out_dir`` and moved into place.
    """
    _check_run(run)
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportError(f"{out_dir} exists and is not a directory; choose another --out")
    check_report_folder(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_dir(out_dir)
    try:
        method = _method(run)
        _plot(tmp / LOSS_PNG, metrics_rows, [("loss", f"{method.upper()} loss")])
        _plot(tmp / MARGINS_PNG, metrics_rows, _progress_panels(method)[1])
        blocks = build_blocks(run, metrics_rows, before_after, tally, samples, max_samples, samples_note, safety,
                              steering)
        images = {name: (tmp / name).read_bytes() for name in (LOSS_PNG, MARGINS_PNG)}
        (tmp / "report.html").write_text(render_html(blocks, images), encoding="utf-8")
        (tmp / "report.md").write_text(render_markdown(blocks), encoding="utf-8")
        _publish(tmp, out_dir, REPORT_FILES)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Marked as a report (the CLI's and the compare screen's alike), so the next report may replace these
    # files, and only these.
    write_marker(out_dir, REPORT_EXPORT_KIND, REPORT_FILES)
    return out_dir / "report.md"


def check_report_folder(out: Path) -> None:
    """A report goes into a new or empty folder, or over an earlier report (store/output_folders.py's rule):
    OutputFolderError otherwise, before anything is written."""
    earlier_export_files(Path(out).expanduser(), REPORT_EXPORT_KIND)
