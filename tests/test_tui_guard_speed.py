"""A guard model's speed in the chat: once per round a guard read the candidates, its tokens/s is a notice; the
judging keys never wait for it. The guard is SmolLM2 carrying ShieldGemma's template (real prompts, real logits)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import wait_for
from test_tui_safety import PROMPT, ask, badges_in, make_app, smollm2_engine  # noqa: F401 - a fixture

from store.studio_store import Store
from studio.safety.candidate_checks import speed_mark, speeds_since
from studio.safety.shieldgemma import SHIELDGEMMA_TEMPLATE
from studio.safety.wordlist import WordListChecker

SPEED = re.compile(r"^Safety check speed: guard:fake-shield: ([\d,]+) tok/s$")


@pytest.fixture(scope="module")
def fake_shield_path(smollm2_model, tmp_path_factory) -> Path:
    from tests.test_bad_inputs import with_chat_template

    return with_chat_template(smollm2_model, tmp_path_factory.mktemp("shield") / "fake-shield.gguf",
                              SHIELDGEMMA_TEMPLATE)


async def test_a_guard_models_speed_is_shown_once_per_round_it_read_the_candidates(
        tmp_path, smollm2_engine, smollm2_model, fake_shield_path, studio_home):  # noqa: F811
    with Store.open(tmp_path / "studio.db") as store:
        app = make_app(store, smollm2_engine, smollm2_model, [f"guard:{fake_shield_path}"])
        async with app.run_test(size=(140, 36)) as pilot:
            await ask(pilot, app, PROMPT)  # judging is offered before the guard has read anything
            await wait_for(pilot, lambda: badges_in(app))
            await wait_for(pilot, lambda: any(SPEED.match(notice) for notice in app.notices))
            speeds = [notice for notice in app.notices if notice.startswith("Safety check speed")]
            assert len(speeds) == 1, speeds
            assert int(SPEED.match(speeds[0]).group(1).replace(",", "")) > 0
            assert all(panel.safety_badge in ("safe", ) or panel.safety_badge.startswith("flagged: ")
                       for panel in app.chat.panels)


def test_only_a_checker_that_measures_itself_and_read_something_has_a_speed(tmp_path, fake_shield_path):
    from studio.safety.guard import GuardChecker
    from trainers.prompt_format import ChatTurn

    listed = tmp_path / "list.txt"
    listed.write_text("potato\n", encoding="utf-8")
    words, guard = WordListChecker(listed), GuardChecker(fake_shield_path, threads=2)
    try:
        checkers = [words, guard]
        mark = speed_mark(checkers)
        assert list(mark) == ["guard:fake-shield"] and speeds_since(checkers, mark) == []  # nothing read yet
        guard.check([ChatTurn("user", "Hi.")], "Hello!")
        (speed,) = speeds_since(checkers, mark)
        assert speed.checker == "guard:fake-shield" and speed.tokens == guard.tokens_processed > 0
        assert speed.tokens_per_s == pytest.approx(guard.tokens_processed / guard.seconds_checking)
    finally:
        guard.close()
