"""A comparison in words: the one formatter ``prefstudio compare``, the compare screen and the report use.

Every line here is plain text, never markup; a client makes it safe for its own output (the CLI escapes
terminal controls, the screen shows it with ``markup=False``, the report escapes HTML).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from studio.evaluation.comparison import ComparisonRow
from studio.evaluation.comparison_result import ComparisonResult
from studio.evaluation.reward_metric import RewardMeans
from studio.evaluation.safety_metrics import MeanScore, SafetyMetrics, SideSafety
from studio.evaluation.stance_metric import describe_stance, stance_parts
from studio.inference.engine import SamplingSettings
from studio.inference.scoring import PreferenceMetrics

NO_METRICS_NOTE = "No held-out pairs in this run: no automatic metrics (votes still count)."


def describe_sampling(sampling: SamplingSettings | None) -> str:
    """How the answers were sampled, in a few words: "greedy (temperature 0), max 32 tokens"."""
    if sampling is None:
        return "with unrecorded sampling settings"
    how = "greedy (temperature 0)" if sampling.temperature == 0 else f"with temperature {sampling.temperature}"
    return f"{how}, max {sampling.max_tokens} tokens"


def summary_line(result: ComparisonResult) -> str:
    """"run 3: 8 prompt(s) from held-out pairs · greedy (temperature 0), max 32 tokens"."""
    return (f"run {result.run_id}: {len(result.rows)} prompt(s) from {result.prompts_source} · "
            f"{describe_sampling(result.sampling)}")


def metrics_line(before: PreferenceMetrics, after: PreferenceMetrics) -> str:
    """The held-out preference metrics, base → tuned, on one line."""
    implicit = after.implicit_reward_accuracy
    implicit_text = f"{implicit:.2f}" if implicit is not None else "—"
    return (f"held-out pairs: {before.n} · preference accuracy base {before.raw_accuracy:.2f} → tuned "
            f"{after.raw_accuracy:.2f} (implicit reward {implicit_text}) · mean margin "
            f"{before.mean_margin:+.3f} → {after.mean_margin:+.3f}")


def metric_paragraphs(result: ComparisonResult) -> list[str]:
    """The automatic metrics: the held-out preference line, then the stance lines (held-out and training
    items, each labelled); empty when the run has neither."""
    paragraphs = []
    if result.before and result.after:
        paragraphs.append(metrics_line(result.before, result.after))
    if result.stance:
        paragraphs.append("\n".join(stance_lines(result)))
    if result.safety:
        paragraphs.append("\n".join(safety_lines(result.safety)))
    if result.reward:
        paragraphs.append(reward_line(result.reward))
    return paragraphs


def reward_line(reward: RewardMeans) -> str:
    """"mean reward (reward run 7) on 8 prompt(s): base -0.41 → tuned +0.35 · tuned higher on 6 of 8"."""
    if not reward.n:
        return f"mean reward (reward run {reward.run_id}): no answers scored"
    return (f"mean reward (reward run {reward.run_id}) on {reward.n} prompt(s): base {reward.base_mean:+.2f} → "
            f"tuned {reward.tuned_mean:+.2f} · tuned higher on {reward.tuned_higher} of {reward.n}")


SHOWN_PROBLEMS = 3  # a checker failing on every answer names the first few, then counts the rest


def flagged_text(side: SideSafety) -> str:
    """"2/4 flagged (50%, 95 % CI 15%–85%)", or "none checked"."""
    rate, interval = side.flagged.rate, side.flagged.interval
    if rate is None or interval is None:
        return "none checked"
    return (f"{side.flagged.flagged}/{side.flagged.checked} flagged ({rate:.0%}, 95 % CI "
            f"{interval[0]:.0%}–{interval[1]:.0%})")


def score_text(score: MeanScore) -> str:
    """"0.43 (95 % CI 0.12–0.74)"; the mean alone below two scores."""
    if score.mean is None:
        return "—"
    interval = score.interval
    return f"{score.mean:.2f}" + (f" (95 % CI {interval[0]:.2f}–{interval[1]:.2f})" if interval else "")


def safety_lines(safety: SafetyMetrics) -> list[str]:
    """The safety of the answers, base → tuned, one line per checker (flagged rate, Wilson interval; mean
    score, Student t interval, for checkers that score), then what a checker could not read."""
    lines = [f"safety of the answers to {safety.n_prompts} prompt(s), base → tuned (flagged rate: Wilson interval; "
             "mean score: t interval):"]
    for checker in safety.checkers:
        line = f"  {checker.checker}: {flagged_text(checker.base)} → {flagged_text(checker.tuned)}"
        if checker.base.score.n or checker.tuned.score.n:
            line += f" · mean score {score_text(checker.base.score)} → {score_text(checker.tuned.score)}"
        lines.append(line)
    lines += [f"  not checked: {problem}" for problem in safety.problems[:SHOWN_PROBLEMS]]
    if len(safety.problems) > SHOWN_PROBLEMS:
        lines.append(f"  … and {len(safety.problems) - SHOWN_PROBLEMS} more answer(s) not checked")
    return lines


def stance_lines(result: ComparisonResult | None) -> list[str]:
    """The stance lines of an exercise run's comparison (held-out and training items, each labelled); empty
    when it measured none."""
    return describe_stance(result.stance if result else None)


def metrics_text(result: ComparisonResult | None) -> str:
    """The compare screen's metrics: the paragraphs, or a note that there are none."""
    paragraphs = metric_paragraphs(result) if result else []
    return "\n".join(paragraphs) or NO_METRICS_NOTE


def sample_lines(number: int, row: ComparisonRow, shorten: Callable[[str, int], str]) -> list[str]:
    """One side-by-side row as the CLI prints it; ``shorten(text, width)`` makes a text one short line."""
    return [f"[{number}] {shorten(row.prompt, 100)}  (seed {row.seed})",
            f"  base : {shorten(row.base_text, 200)}",
            f"  tuned: {shorten(row.tuned_text, 200)}"]


def samples_note(result: ComparisonResult) -> str:
    """The report's sentence above the samples: where the prompts came from and how both sides sampled."""
    return f"Prompts from {result.prompts_source}; both answered {describe_sampling(result.sampling)}."


def report_columns(result: ComparisonResult) -> dict[str, dict[str, Any]]:
    """The report's before/after table: held-out preference metrics and, for exercises, the support share."""
    columns: dict[str, dict[str, Any]] = {
        "base": result.before.to_dict() if result.before else {},
        "tuned": result.after.to_dict() if result.after else {},
    }
    if result.reward and result.reward.n:
        columns["base"][f"mean_reward (run {result.reward.run_id})"] = result.reward.base_mean
        columns["tuned"][f"mean_reward (run {result.reward.run_id})"] = result.reward.tuned_mean
    for part, values in stance_parts(result.stance).items():
        suffix = "" if part == "heldout" else " (training items)"
        for column, key in (("base", "before"), ("tuned", "after")):
            columns[column][f"support_share{suffix}"] = values[key]["share"]
            columns[column][f"stance_items{suffix}"] = values[key]["n"]
    return {k: v for k, v in columns.items() if v}
