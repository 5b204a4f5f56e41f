"""The safety of base and tuned answers (studio/evaluation/safety_metrics.py): flagged rate with its Wilson interval
and mean score with its t interval, per checker, on comparisons whose answer is known; each text checked once
(the store's cache), the numbers stored with the comparison and shown by the one formatter and the report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from test_comparison_report import finished_run

from store import Store
from studio.evaluation.compare_session import EVALUATION_KIND, comparison_with_safety, stored_comparison
from studio.evaluation.comparison import ComparisonRow
from studio.evaluation.comparison_result import ComparisonResult
from studio.evaluation.comparison_text import metrics_text, safety_lines
from studio.evaluation.report import write_report
from studio.evaluation.safety_metrics import FlaggedRate, MeanScore, SafetyMetrics, measure_safety
from studio.safety.checker import SafetyCheckerError, SafetyVerdict
from studio.safety.wordlist import WordListChecker
from trainers.prompt_format import ChatTurn

# Four prompts: the base says "darn" once, the tuned model twice (rows 2 and 4).
ROWS = [
    ComparisonRow("Greet me.", "Hello there.", "Hello, darn you.", 40),
    ComparisonRow("Describe rain.", "Darn wet.", "Wet and grey.", 41),
    ComparisonRow("Name a fruit.", "An apple.", "A pear.", 42),
    ComparisonRow("Say goodbye.", "Bye.", "Bye, DARN it.", 43),
]


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "studio.db") as opened:
        yield opened


@pytest.fixture
def wordlist(tmp_path: Path) -> WordListChecker:
    path = tmp_path / "mild.txt"
    path.write_text("# category: mild\ndarn\n", encoding="utf-8")
    return WordListChecker(path)


class CountingChecker:
    """A real checker (the word list) that counts the texts it actually reads."""

    def __init__(self, inner: WordListChecker) -> None:
        self.inner = inner
        self.read: list[str] = []

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def version(self) -> str:
        return self.inner.version

    def check(self, conversation: Sequence[ChatTurn], reply: str) -> SafetyVerdict:
        self.read.append(reply)
        return self.inner.check(conversation, reply)


class ScoreByText:
    """A scoring checker with known answers: each reply's probability of unsafe is given; unsafe at ≥ 0.5.
    ``broken`` replies fail as a guard model that does not answer as one."""

    name = "scores"
    version = "1"

    def __init__(self, scores: dict[str, float], broken: Sequence[str] = ()) -> None:
        self.scores = scores
        self.broken = set(broken)

    def check(self, conversation: Sequence[ChatTurn], reply: str) -> SafetyVerdict:
        if reply in self.broken:
            raise SafetyCheckerError(f"model scores did not answer as a guard model (said: {reply!r})")
        score = self.scores[reply]
        return SafetyVerdict(self.name, self.version, score < 0.5, () if score < 0.5 else ("unsafe",), score)


def test_two_of_four_tuned_answers_flagged_is_a_rate_of_one_half_with_its_wilson_interval(store, wordlist):
    metrics = measure_safety(store, ROWS, [wordlist])
    assert metrics.n_prompts == 4 and not metrics.problems
    (checker,) = metrics.checkers
    assert (checker.checker, checker.version) == ("wordlist:mild", wordlist.version)
    assert checker.tuned.flagged == FlaggedRate(flagged=2, checked=4)
    assert checker.tuned.flagged.rate == 0.5
    assert checker.tuned.flagged.interval == pytest.approx((0.150039, 0.849961), abs=1e-6)  # Wilson, z = 1.96
    assert checker.base.flagged == FlaggedRate(flagged=1, checked=4)
    assert checker.base.flagged.interval == pytest.approx((0.045587, 0.699358), abs=1e-6)
    assert checker.base.score == MeanScore() and checker.base.score.interval is None  # a word list gives no score


def test_mean_score_with_a_student_t_interval_and_a_failing_answer_left_out_and_named(store):
    scores = {"Hello there.": 0.1, "Darn wet.": 0.2, "An apple.": 0.3, "Bye.": 0.4,
              "Hello, darn you.": 0.9, "Wet and grey.": 0.6, "A pear.": 0.1}
    metrics = measure_safety(store, ROWS, [ScoreByText(scores, broken=["Bye, DARN it."])])
    (checker,) = metrics.checkers
    assert checker.base.score.n == 4 and checker.base.score.mean == pytest.approx(0.25)
    # mean ± t(0.975, 3) · sd / √4 = 0.25 ± 3.1824 · 0.1291 / 2
    assert checker.base.score.interval == pytest.approx((0.044574, 0.455426), abs=1e-6)
    assert checker.tuned.flagged == FlaggedRate(flagged=2, checked=3)  # the broken answer is not counted
    assert metrics.problems == ("scores: answer 4 (tuned): model scores did not answer as a guard model "
                                "(said: 'Bye, DARN it.')",)
    one = MeanScore.of([0.7])
    assert one.mean == 0.7 and one.interval is None  # no interval from one score


def test_a_text_read_before_is_read_back_from_the_store_not_checked_again(store, wordlist):
    counting = CountingChecker(wordlist)
    first = measure_safety(store, ROWS, [counting])
    assert len(counting.read) == 8  # every base and tuned answer, once
    again = measure_safety(store, ROWS, [counting])
    assert len(counting.read) == 8 and again == first


def test_the_numbers_are_stored_with_the_comparison_and_shown_by_the_formatter_and_the_report(store, wordlist,
                                                                                             tmp_path):
    run = finished_run(store, tmp_path)
    store.save_evaluation(run.id, EVALUATION_KIND,
                          ComparisonResult(run_id=run.id, prompts_source="a file", rows=ROWS, seed=40).to_dict())
    counting = CountingChecker(wordlist)
    measured = comparison_with_safety(store, run.id, [counting])
    assert measured is not None and measured.safety is not None and len(counting.read) == 8
    # Stored with the run: the next look (the report, the compare screen) reads the numbers back.
    stored = stored_comparison(store, run.id)
    assert stored == measured and isinstance(stored.safety, SafetyMetrics)
    assert comparison_with_safety(store, run.id, [counting]) == measured and len(counting.read) == 8
    raw = json.loads(json.dumps(store.latest_evaluation(run.id, EVALUATION_KIND)))
    assert raw["safety"]["checkers"][0]["tuned"]["rate_interval_95"] == pytest.approx([0.150039, 0.849961], abs=1e-6)

    text = metrics_text(stored)
    assert "safety of the answers to 4 prompt(s), base → tuned" in text
    assert ("wordlist:mild: 1/4 flagged (25%, 95 % CI 5%–70%) → 2/4 flagged (50%, 95 % CI 15%–85%)"
            in text)
    md = write_report(tmp_path / "report", run, [], {}, None, ROWS, safety=stored.safety).read_text("utf-8")
    assert "## Safety checks, before and after" in md
    assert "| wordlist:mild | tuned | 2/4 | 0.5 | 0.150 – 0.850 | — | — |" in md
    assert "| wordlist:mild | base | 1/4 | 0.25 | 0.046 – 0.699 | — | — |" in md


def test_an_older_comparison_without_safety_reads_as_none_and_says_nothing_of_it():
    stored = ComparisonResult(run_id=1, prompts_source="a file", rows=ROWS, seed=40).to_dict()
    stored.pop("safety")
    result = ComparisonResult.from_dict(stored)
    assert result.safety is None and "safety" not in metrics_text(result)
    assert SafetyMetrics.from_dict({"n_prompts": "x"}) is None  # unreadable: no numbers rather than wrong ones


def test_problems_past_the_first_few_are_counted_not_listed(store):
    metrics = measure_safety(store, ROWS, [ScoreByText({}, broken=[text for row in ROWS
                                                                     for text in (row.base_text, row.tuned_text)])])
    lines = safety_lines(metrics)
    assert lines[1] == "  scores: none checked → none checked"
    assert sum(line.startswith("  not checked: scores: answer") for line in lines) == 3
    assert lines[-1] == "  … and 5 more answer(s) not checked"


def test_prefstudio_report_checks_the_stored_answers_with_the_configured_checkers(tmp_path, studio_home):
    from conftest import run_cli

    blocklist = tmp_path / "mild.txt"
    blocklist.write_text("# category: mild\ndarn\n", encoding="utf-8")
    db = tmp_path / "studio.db"
    with Store.open(db) as store:
        run = finished_run(store, tmp_path)
        store.save_evaluation(run.id, EVALUATION_KIND,
                              ComparisonResult(run_id=run.id, prompts_source="a file", rows=ROWS, seed=40).to_dict())
    out = tmp_path / "report"
    # The stored answers are read, not generated again: no model is loaded for this.
    proc = run_cli("--db", str(db), "--safety", f"wordlist:{blocklist}", "--safety",
                   f"wordlist:{tmp_path / 'gone.txt'}", "report", "--run", str(run.id), "--out", str(out),
                   home=studio_home, check=True)
    # A checker that cannot load is a note; the report goes on with the others.
    assert "note: safety checker wordlist:" in proc.stderr and "gone.txt: no such file" in proc.stderr
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| wordlist:mild | tuned | 2/4 | 0.5 | 0.150 – 0.850 | — | — |" in md
    with Store.open(db) as store:
        stored = stored_comparison(store, run.id)
    assert stored is not None and stored.safety is not None and stored.safety.checkers[0].tuned.flagged.flagged == 2


async def test_the_compare_screen_checks_a_stored_comparison_and_shows_the_rates_beside_the_votes(
        store, wordlist, tmp_path, default_model, studio_home):
    from conftest import wait_for

    from studio.safety.specs import parse_checker_specs
    from studio.settings import StudioSettings
    from studio.tui.app import PreferenceStudioApp
    from studio.tui.screens.compare import CompareScreen

    run = finished_run(store, tmp_path)
    store.save_evaluation(run.id, EVALUATION_KIND,
                          ComparisonResult(run_id=run.id, prompts_source="a file", rows=ROWS, seed=40).to_dict())
    settings = StudioSettings(model=default_model, safety=parse_checker_specs([f"wordlist:{wordlist.path}"], "test"))
    app = PreferenceStudioApp(settings=settings, store=store)
    async with app.run_test(size=(130, 40)) as pilot:
        await wait_for(pilot, lambda: app.engine is not None)
        app.action_compare(run.id)  # the stored comparison: its answers are checked in a worker, not generated
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.result is not None
                       and app.screen.result.safety is not None)
        screen = app.screen
        metrics = str(screen.query_one("#compare-metrics").render())
        assert "wordlist:mild: 1/4 flagged (25%, 95 % CI 5%–70%) → 2/4 flagged (50%, 95 % CI 15%–85%)" in metrics
    stored = stored_comparison(store, run.id)
    assert stored is not None and stored.safety == screen.result.safety  # kept for the next look
