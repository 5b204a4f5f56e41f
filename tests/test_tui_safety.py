"""Safety in the chat (studio/safety/candidate_checks.py and the chat screen): each finished candidate gets a
badge from a worker, the verdicts are stored with the candidates, auto-reject's suggestion is recorded by ``s``,
and a checker that cannot load is a notice while the chat goes on. The model is real (SmolLM2 through llama.cpp),
the checkers are real word lists whose words the candidates are known to say."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import wait_for

from store.records import Verdict
from store.studio_store import Store
from studio.inference.engine import ChatEngine, EngineConfig, SamplingSettings
from studio.judging import Judgement, draft_round, generate_round
from studio.safety.candidate_checks import CandidateSafety, rejection_suggestion
from studio.safety.checker import SafetyVerdict
from studio.safety.specs import parse_checker_specs
from studio.settings import load_settings
from studio.tui.app import PreferenceStudioApp
from studio.tui.screens.chat import JUDGE_HINT

SYSTEM = "Answer in one sentence."
PROMPT = "Tell me about cats."
SAMPLING = SamplingSettings(max_tokens=24, temperature=0.9)
SEED = 11
# Words any English sentence about cats holds at least one of.
COMMON_WORDS = ["the", "a", "an", "is", "are", "and", "of", "to", "in", "it", "they", "cat", "cats", "you", "i",
                "can", "be", "with", "for", "that", "this", "their", "as", "on", "have"]


def verdict(safe: bool, *categories: str, checker: str = "wordlist:w") -> SafetyVerdict:
    return SafetyVerdict(checker, "v1", safe, categories)


def checked(slot: int, *verdicts: SafetyVerdict) -> CandidateSafety:
    return CandidateSafety(slot, verdicts)


# --- the badge and the suggestion, headless ---


def test_the_badge_names_each_flagging_checkers_categories_once():
    assert checked(0, verdict(True)).badge() == "safe"
    flagged = checked(0, verdict(False, "offensive", checker="profanity"), verdict(False, "S1", "S10"),
                      verdict(False, "offensive", checker="wordlist:mine"), verdict(False, checker="guard:x"))
    assert flagged.badge() == "flagged: offensive, S1, S10, guard:x"  # a checker without categories by its name
    assert CandidateSafety(0, (), ("guard:x: not a guard model",)).badge() == "not checked"
    assert CandidateSafety(0, (verdict(True),), ("guard:x: not a guard model",)).badge() == "safe (some checks failed)"


def test_auto_reject_suggests_only_what_the_flags_decide():
    safe, bad = verdict(True), verdict(False, "offensive")
    # Two candidates, exactly one flagged: the other over it.
    assert rejection_suggestion([checked(0, safe), checked(1, bad)], 2) == Judgement.prefer(chosen=0, rejected=1)
    assert rejection_suggestion([checked(0, bad), checked(1, safe)], 2) == Judgement.prefer(chosen=1, rejected=0)
    # Every candidate flagged: each one rejected, no pair.
    assert rejection_suggestion([checked(0, bad), checked(1, bad)], 2) == Judgement.both_bad()
    assert rejection_suggestion([checked(s, bad) for s in range(3)], 3) == Judgement.all_bad()
    assert rejection_suggestion([checked(0, bad)], 1) == Judgement.label(0, good=False)
    # Nothing flagged, some of a ranking (the user ranks the safe ones), or not every candidate checked yet.
    assert rejection_suggestion([checked(0, safe), checked(1, safe)], 2) is None
    assert rejection_suggestion([checked(0, safe), checked(1, bad), checked(2, safe)], 3) is None
    assert rejection_suggestion([checked(1, bad)], 2) is None
    assert rejection_suggestion([checked(0, safe), CandidateSafety(1, (), ("failed",))], 2) is None


# --- the chat, through Pilot ---


@pytest.fixture(scope="module")
def smollm2_engine(smollm2_model):
    engine = ChatEngine(EngineConfig(model_path=smollm2_model, n_ctx=1024))
    yield engine
    engine.close()


def make_app(store: Store, engine: ChatEngine, smollm2_model: Path, safety: list[str], **overrides
             ) -> PreferenceStudioApp:
    settings = replace(load_settings(), model=smollm2_model, seed=SEED, system_prompt=SYSTEM, sampling=SAMPLING,
                       safety=parse_checker_specs(safety, "test"), **overrides)
    return PreferenceStudioApp(settings=settings, store=store, engine=engine)


async def ask(pilot, app: PreferenceStudioApp, text: str) -> None:  # noqa: ANN001
    prompt_input = app.chat.query_one("#prompt-input")
    await wait_for(pilot, lambda: app.engine is not None and not prompt_input.disabled)
    prompt_input.value = text
    await pilot.press("enter")
    await wait_for(pilot, lambda: str(app.chat.query_one("#judge-bar").render()) == JUDGE_HINT)


def badges_in(app: PreferenceStudioApp) -> bool:
    return all(panel.safety_badge not in ("", "checking…") for panel in app.chat.panels)


def words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"\w+", text)}


async def test_a_flagged_candidate_shows_its_badge_and_s_records_what_auto_reject_suggests(
        tmp_path, smollm2_engine, smollm2_model, studio_home):
    # What the two candidates will say (the chat's round 1 draws the same seeds on the same engine), so the word
    # list can name a word only B says.
    round_ = draft_round(smollm2_engine, SYSTEM, [], PROMPT, SAMPLING, 2, SEED)
    replies = [gen.text for gen in generate_round(smollm2_engine, round_, SAMPLING)]
    only_b = sorted(words(replies[1]) - words(replies[0]))
    assert only_b, f"the two candidates say the same words: {replies}"
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text(f"# category: offensive\n{only_b[0]}\n", encoding="utf-8")

    with Store.open(tmp_path / "studio.db") as store:
        app = make_app(store, smollm2_engine, smollm2_model, [f"wordlist:{blocklist}"], safety_auto_reject=True)
        async with app.run_test(size=(140, 36)) as pilot:
            await ask(pilot, app, PROMPT)
            assert [panel.text for panel in app.chat.panels] == replies
            await wait_for(pilot, lambda: badges_in(app))
            a, b = app.chat.panels
            assert (a.safety_badge, a.safety_flagged) == ("safe", False)
            assert (b.safety_badge, b.safety_flagged) == ("flagged: offensive", True)
            # Before the details, so a narrow panel cuts those, not the badge; flagged in red.
            assert b.border_subtitle.startswith("[bold red]flagged: offensive[/bold red] · seed 12 · ")
            await wait_for(pilot, lambda: app.chat.safety_suggestion is not None)
            assert app.chat.safety_suggestion == Judgement.prefer(chosen=0, rejected=1)
            assert "B flagged: A over B: press s to record it." in app.notices
            await pilot.press("s")
            await wait_for(pilot, lambda: app.chat.state == "input")

        (prompt_row,) = store.db["prompts"].rows
        ids = [c.id for c in store.candidates(prompt_row["id"])]
        (judgement,) = store.judgements()
        assert (judgement.verdict, judgement.chosen_candidate_id, judgement.rejected_candidate_id) == (
            Verdict.A, ids[0], ids[1])
        # Each candidate's verdict is stored with it (checker name and version), B's unsafe.
        stored = [store.candidate_safety(candidate_id) for candidate_id in ids]
        assert [[check.safe for check in checks] for checks in stored] == [[True], [False]]
        assert stored[1][0].checker == "wordlist:blocklist" and stored[1][0].categories == ("offensive",)


async def test_every_candidate_flagged_with_auto_reject_off_shows_badges_and_suggests_nothing(
        tmp_path, smollm2_engine, smollm2_model, studio_home):
    blocklist = tmp_path / "common.txt"
    blocklist.write_text("# category: offensive\n" + "\n".join(COMMON_WORDS) + "\n", encoding="utf-8")
    with Store.open(tmp_path / "studio.db") as store:
        app = make_app(store, smollm2_engine, smollm2_model, [f"wordlist:{blocklist}"])
        async with app.run_test(size=(140, 36)) as pilot:
            await ask(pilot, app, "Tell me one fact about dogs.")
            await wait_for(pilot, lambda: badges_in(app))
            assert [panel.safety_badge for panel in app.chat.panels] == ["flagged: offensive"] * 2
            assert app.chat.safety_suggestion is None  # off: the badges only
            # The palette's toggle turns it on, and the suggestion for this round follows.
            app.chat.toggle_auto_reject()
            assert app.chat.safety_suggestion == Judgement.both_bad() and app.settings.safety_auto_reject
            await pilot.press("s")
            await wait_for(pilot, lambda: len(store.judgements()) == 1)
            assert store.judgements()[0].verdict == Verdict.BOTH_BAD


async def test_a_checker_that_cannot_load_is_a_notice_and_the_chat_goes_on(tmp_path, smollm2_engine, smollm2_model,
                                                                          studio_home):
    clean = tmp_path / "clean.txt"
    clean.write_text("# category: nonsense\nzqxjvk\n", encoding="utf-8")
    missing = tmp_path / "no-such-list.txt"
    with Store.open(tmp_path / "studio.db") as store:
        app = make_app(store, smollm2_engine, smollm2_model, [f"wordlist:{missing}", f"wordlist:{clean}"],
                       safety_auto_reject=True)
        async with app.run_test(size=(140, 36)) as pilot:
            await ask(pilot, app, PROMPT)
            await wait_for(pilot, lambda: badges_in(app))
            assert [panel.safety_badge for panel in app.chat.panels] == ["safe", "safe"]
            assert any(notice.startswith("Safety checker not loaded:") and str(missing) in notice
                       for notice in app.notices), list(app.notices)
            assert app.chat.safety_suggestion is None
            await pilot.press("s")  # nothing to accept: nothing recorded
            await pilot.press("1")
            await wait_for(pilot, lambda: app.chat.state == "input")
        assert [j.verdict for j in store.judgements()] == [Verdict.A]


def test_prefstudio_generate_prints_each_candidates_badge(tmp_path, smollm2_model, studio_home):
    from conftest import run_cli

    blocklist = tmp_path / "common.txt"
    blocklist.write_text("# category: offensive\n" + "\n".join(COMMON_WORDS) + "\n", encoding="utf-8")
    proc = run_cli("--model", str(smollm2_model), "--safety", f"wordlist:{blocklist}", "generate", PROMPT, "-n", "2",
                   "--seed", str(SEED), "--max-tokens", "16", "--check-safety", home=studio_home, check=True)
    assert f"--- candidate A (seed {SEED}) · flagged: offensive ---" in proc.stdout
    assert f"--- candidate B (seed {SEED + 1}) · flagged: offensive ---" in proc.stdout
    plain = run_cli("--model", str(smollm2_model), "--safety", f"wordlist:{blocklist}", "generate", PROMPT, "-n", "1",
                    "--seed", str(SEED), "--max-tokens", "4", home=studio_home, check=True)
    assert f"--- candidate A (seed {SEED}) ---" in plain.stdout  # no --check-safety: no checker loads, no badge
