"""Before and after, headless: the same prompts answered by base and tuned, plus held-out metrics.

The CLI (`prefstudio compare`, `prefstudio report`) and the compare screen both call ``run_comparison``.
Its result is stored with the run (evaluation kind ``comparison``) so a report can be written later
without generating again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from studio.evaluation.comparison import (
    BlindTally,
    ComparisonError,
    ComparisonPrompt,
    heldout_pairs,
    side_by_side,
)
from studio.evaluation.comparison_result import ComparisonResult, StanceParts
from studio.evaluation.comparison_text import report_columns, samples_note, stance_lines
from studio.evaluation.prompts import PromptSource, resolve_prompts
from studio.evaluation.reward_metric import RewardMeans, measure_reward
from studio.evaluation.rl_heldout import is_rl_run, rl_heldout_prompts
from studio.evaluation.run_adapters import adapter_name, gguf_adapter_for_run
from studio.evaluation.safety_metrics import SafetyMetrics, measure_safety
from studio.evaluation.stance_metric import (
    StanceMetricError,
    run_exercise_system,
    run_stance_metrics,
)
from studio.inference.engine import ChatEngine, Generation, SamplingSettings
from studio.inference.scoring import PreferenceMetrics, preference_metrics

if TYPE_CHECKING:
    from store.pairs import PreferencePair
    from store.records import RunRecord
    from store.studio_store import Store
    from studio.reward.scorer import RewardScorer
    from studio.safety.checker import SafetyChecker

EVALUATION_KIND = "comparison"
Progress = Callable[[str, int, int], None]
"""Called with (phase, done, total)."""


def run_comparison(
    engine: ChatEngine,
    store: Store,
    run_id: int,
    *,
    system: str,
    sampling: SamplingSettings,
    seed: int = 0,
    prompts_file: Path | None = None,
    prompts_from: PromptSource | str | None = None,
    limit: int | None = None,
    with_metrics: bool = True,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkers: Sequence[SafetyChecker] = (),
    reward_scorer: RewardScorer | None = None,
) -> ComparisonResult:
    """Answer the comparison prompts with base and tuned (same seeds and settings) and score the run's
    held-out pairs before and after. Leaves the base model active. Raises ValueError subclasses with
    user-facing messages (failed run, foreign adapter, empty prompts file, …).

    The prompts come from ``prompts_from`` (a ``PromptSource`` or its spec: held-out, a bank, the session's
    questions, a file) or, the older spelling, ``prompts_file``; by default the exercise's test prompts, else
    the held-out pairs, else the first bank. The sampling settings and the source are stored with the result.
    With ``checkers``, every base and tuned answer is checked too (``safety_metrics.measure_safety``) and the
    flagged rates are stored with the result. With ``reward_scorer`` (a reward run's), every answer is scored and
    the mean reward of each side is stored with the result; a scorer that fails is a note, the rest stands.
    """
    if prompts_from is None:
        source = PromptSource("file", str(prompts_file)) if prompts_file is not None else PromptSource()
    else:
        source = prompts_from if isinstance(prompts_from, PromptSource) else PromptSource.parse(prompts_from)
    run = store.get_run(run_id)
    name = adapter_name(run)
    engine.load_adapter(name, gguf_adapter_for_run(run, engine.info, store.path))
    notes: list[str] = []
    exercise = bool((run.config or {}).get("support_ratio") is not None)
    if exercise:
        # The exercise's own system prompt (short replies) and its test prompts; its held-out items are
        # scored by the stance metric instead of as pairs.
        system = run_exercise_system(run)
    rl = is_rl_run(run)  # an RLOO run held out prompts, not pairs: its comparison answers them by default
    try:
        pairs = [] if exercise or rl else heldout_pairs(store, run)
    except ComparisonError as exc:
        pairs = []
        notes.append(str(exc))
    test_prompts = _exercise_test_prompts(store, run) if exercise and source.kind == "auto" else []
    if rl and source.kind in ("auto", "heldout"):
        prompts, label = _rl_prompts(store, run, source, pairs, notes)
    else:
        prompts, label = resolve_prompts(source, store, run, pairs, test_prompts)
    if limit:
        prompts = prompts[:limit]
    result = ComparisonResult(run_id=run_id, prompts_source=label, rows=[], seed=seed, notes=notes,
                              sampling=sampling, prompts_spec=source.spec)
    try:
        if with_metrics and exercise:
            result.stance = _stance(engine, store, run, system, name, progress, notes)
        if with_metrics and pairs:
            beta = float(run.config.get("beta", 0.1))
            result.before, result.after = _heldout_metrics(engine, name, pairs, beta, progress)
        total = 2 * len(prompts)
        answered = 0

        def on_answer(_index: int, _side: str, _answer: Generation) -> None:
            nonlocal answered
            answered += 1
            if progress:
                progress("answering", answered, total)

        result.rows = side_by_side(engine, prompts, system, sampling, seed, engine.activate_adapter, name,
                                   on_answer=on_answer, should_stop=should_stop)
    finally:
        engine.activate_adapter(None)
    if checkers and result.rows:
        result.safety = _safety(store, result, checkers, progress, should_stop)
    if reward_scorer is not None and result.rows:
        result.reward = _reward(reward_scorer, result, system, progress, should_stop)
    store.save_evaluation(run_id, EVALUATION_KIND, result.to_dict())
    return result


def _rl_prompts(store: Store, run: RunRecord, source: PromptSource, pairs: list[PreferencePair],
                notes: list[str]) -> tuple[list[str | ComparisonPrompt], str]:
    """An RL run's held-out prompts; asked for by default (auto) and there are none: the bank, with a note why."""
    try:
        return list(rl_heldout_prompts(store, run)), "held-out prompts"
    except ComparisonError as exc:
        if source.kind == "heldout":
            raise
        notes.append(str(exc))
        return resolve_prompts(source, store, run, pairs, [])


def _reward(scorer: RewardScorer, result: ComparisonResult, system: str, progress: Progress | None,
            should_stop: Callable[[], bool] | None) -> RewardMeans | None:
    from studio.reward.scorer import RewardScorerError

    try:
        return measure_reward(scorer, result.rows, system, should_stop=should_stop,
                              progress=(lambda done, total: progress("reward scores", done, total)) if progress
                              else None)
    except RewardScorerError as exc:
        result.notes.append(f"reward model run {scorer.run_id} did not score the answers: {exc}")
        return None


def comparison_with_reward(store: Store, run_id: int, scorer: RewardScorer, system: str,
                           progress: Progress | None = None) -> ComparisonResult | None:
    """The run's stored comparison with its answers scored by ``scorer``'s reward run and stored with it (answers
    are not generated again); one already scored by that run is returned as it is. None when the run has no
    stored comparison. ``RewardScorerError`` when the scorer fails (nothing is stored then)."""
    result = stored_comparison(store, run_id)
    if result is None or not result.rows or (result.reward is not None and result.reward.run_id == scorer.run_id):
        return result
    reward = measure_reward(scorer, result.rows, system,
                            progress=(lambda done, total: progress("reward scores", done, total)) if progress else None)
    # Read again just before saving: what another measure (the safety checks) stored meanwhile is kept.
    latest = stored_comparison(store, run_id)
    result = replace(latest if latest is not None and latest.rows == result.rows else result, reward=reward)
    store.save_evaluation(run_id, EVALUATION_KIND, result.to_dict())
    return result


def _safety(store: Store, result: ComparisonResult, checkers: Sequence[SafetyChecker], progress: Progress | None,
            should_stop: Callable[[], bool] | None) -> SafetyMetrics:
    return measure_safety(store, result.rows, checkers, should_stop=should_stop,
                          progress=(lambda done, total: progress("safety checks", done, total)) if progress else None)


def comparison_with_safety(store: Store, run_id: int, checkers: Sequence[SafetyChecker],
                           progress: Progress | None = None) -> ComparisonResult | None:
    """The run's stored comparison with its answers' safety measured by ``checkers`` and stored with it, so the
    next look reads it back; a comparison that already holds every checker's numbers is returned as it is (and
    each answer a checker read before is read from the store's cache, never checked again). None when the run
    has no stored comparison."""
    result = stored_comparison(store, run_id)
    if result is None or not result.rows or not checkers:
        return result
    measured = {(c.checker, c.version) for c in result.safety.checkers} if result.safety else set()
    if all((checker.name, checker.version) in measured for checker in checkers):
        return result
    safety = _safety(store, result, checkers, progress, None)
    # Read again just before saving: what another measure (a reward model's scores) stored meanwhile is kept.
    latest = stored_comparison(store, run_id)
    result = replace(latest if latest is not None and latest.rows == result.rows else result, safety=safety)
    store.save_evaluation(run_id, EVALUATION_KIND, result.to_dict())
    return result


def _heldout_metrics(engine: ChatEngine, name: str, pairs: list, beta: float,
                     progress: Progress | None) -> tuple[PreferenceMetrics, PreferenceMetrics]:
    def report(phase: str) -> Callable[[int, int], None] | None:
        return (lambda done, total: progress(phase, done, total)) if progress else None

    engine.activate_adapter(None)
    before = preference_metrics(engine, pairs, on_progress=report("scoring base"))
    engine.activate_adapter(name)
    after = preference_metrics(engine, pairs, reference=before.as_reference(), beta=beta,
                               on_progress=report("scoring tuned"))
    return before, after


def _exercise_test_prompts(store: Store, run: RunRecord) -> list[str]:
    try:
        return [p.prompt for p in store.test_prompts(run.config["dataset"])]
    except (LookupError, ValueError):
        return []


def _stance(engine: ChatEngine, store: Store, run: RunRecord, system: str, name: str, progress: Progress | None,
            notes: list[str]) -> StanceParts | None:
    # Held-out items when there are any, and always the training items (labelled as such): the homework's
    # data size 50 of 50 holds nothing out (studio.evaluation.stance_metric.run_stance_metrics).
    try:
        return run_stance_metrics(engine, store, run, system, name, on_progress=progress) or None
    except StanceMetricError as exc:
        notes.append(str(exc))
        return None


def stored_comparison(store: Store, run_id: int) -> ComparisonResult | None:
    data = store.latest_evaluation(run_id, EVALUATION_KIND)
    return ComparisonResult.from_dict(data) if data else None


def last_stance_lines(store: Store, dataset: str) -> list[str]:
    """The stance lines (held-out and training items) of the newest exercise run on ``dataset`` that has a
    stored comparison, headed by the run and its settings; empty when there is none (the exercise screen's)."""
    for run in store.list_runs():
        config = run.config or {}
        if config.get("dataset") != dataset or config.get("support_ratio") is None:
            continue
        lines = stance_lines(stored_comparison(store, run.id))
        if lines:
            head = (f"Last compared run {run.id} (data size {config.get('data_size') or 'all'}, support ratio "
                    f"{config['support_ratio']}, {config.get('epochs')} epoch(s)):")
            return [head, *lines]
    return []


def vote_tally(store: Store, run_id: int) -> BlindTally:
    """The blind votes stored with a run, counted as tuned wins / ties / losses."""
    return BlindTally.from_votes((v["vote"], v["tuned_on_left"]) for v in store.votes(run_id))


def write_run_report(store: Store, run_id: int, result: ComparisonResult | None, out_dir: Path) -> Path:
    """``prefstudio report`` and the compare screen's ``w``: the run, its curves, the before/after metrics,
    the blind tally (when anyone voted) and the side-by-side samples."""
    from studio.evaluation.report import write_report

    tally = vote_tally(store, run_id)
    note = samples_note(result) if result else ""
    return write_report(out_dir, store.get_run(run_id), store.run_metrics(run_id),
                        report_columns(result) if result else {}, tally if tally.total else None,
                        result.rows if result else [], samples_note=note, safety=result.safety if result else None,
                        steering=store.latest_evaluation(run_id, "steer_comparison"))  # SteerLM: compare --steer
