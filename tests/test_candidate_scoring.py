"""The reward model at work, headless (studio/reward/candidate_scoring.py): each candidate scored on its own thread as
it finishes, stored with its candidate, the model's pick, best-of-N; the real default model and a real reward run."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from store.studio_store import Store
from studio.inference.engine import SamplingSettings
from studio.judging import Judgement, JudgingSession
from studio.reward.candidate_scoring import CandidateScoring, RoundScores, round_conversation
from studio.reward.scorer import open_reward_scorer
from trainers.prompt_format import ChatTurn

SYSTEM = "You are a concise, friendly assistant."


@pytest.fixture
def store(reward_data):
    db_path, _run_id = reward_data
    with Store.open(db_path) as store:
        yield store


@pytest.fixture
def scoring(store, reward_data, engine):
    scored: list[RoundScores] = []
    failures: list[str] = []
    # The llama.cpp backend opens in a fraction of a second (the chat's default may start a process): what is
    # tested here is the orchestration around any RewardScorer.
    scorer = open_reward_scorer(store, reward_data[1], engine, backend="llama")
    scoring = CandidateScoring(scorer, store, on_scored=scored.append, on_failed=failures.append)
    scoring.heard = scored, failures  # what the callbacks were told, for the tests to read
    yield scoring
    scoring.close()


def session_for(store, engine, n: int) -> JudgingSession:
    return JudgingSession(store, SYSTEM, engine.identity.model_id, sampling=SamplingSettings(max_tokens=12),
                          n_candidates=n, base_seed=40, engine=engine)


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_each_candidate_is_scored_as_it_finishes_and_stored_with_it(store, scoring, engine):
    session = session_for(store, engine, 3)
    round_ = session.prepare("Name a fruit.")
    scoring.watch(round_, session.system_prompt)
    finished: list[tuple[int, str]] = []

    def on_finished(slot: int, text: str) -> None:
        finished.append((slot, text))
        scoring.finished(round_.number, slot, text)

    generations = session.generate(round_, on_finished=on_finished)
    assert sorted(finished) == [(slot, gen.text) for slot, gen in enumerate(generations)]
    session.store_candidates(round_)
    scoring.stored(round_)
    wait_until(lambda: scoring.scores(round_.number).complete)
    scores = scoring.scores(round_.number).scores

    # The same numbers as the reward model gives each reply directly, each stored with its candidate.
    conversation = round_conversation(SYSTEM, [], "Name a fruit.")
    direct = [scoring.scorer.score(conversation, [g.text])[0] for g in generations]
    # (llama.cpp's scores move in the third decimal when the prompt comes from its cache: the approximate backend)
    assert list(scores) == pytest.approx(direct, abs=0.02)
    wait_until(lambda: len(store.reward_scores(scoring.run_id, round_.candidate_ids)) == 3)
    assert store.reward_scores(scoring.run_id, round_.candidate_ids) == dict(zip(round_.candidate_ids, scores,
                                                                                 strict=True))
    heard, failures = scoring.heard
    assert not failures and heard[-1].scores == scores and len(heard) == 3
    assert scoring.scores(round_.number).pick == max(range(3), key=lambda slot: scores[slot])


def test_the_candidates_never_wait_for_the_scorer(store, scoring, engine):
    session = session_for(store, engine, 2)
    round_ = session.prepare("Say hello.")
    scoring.watch(round_, session.system_prompt)
    # The scorer is busy the whole time (another caller holds it): generation still runs to its end.
    with scoring._score_lock:  # noqa: SLF001 - the one way to make the real scorer busy on demand
        generations = session.generate(round_, on_finished=lambda slot, text: scoring.finished(round_.number, slot,
                                                                                                 text))
        assert generations is not None and len(generations) == 2
        assert scoring.scores(round_.number).scores == (None, None)
    wait_until(lambda: scoring.scores(round_.number).complete)


def test_best_of_n_puts_the_best_first_before_storing(store, scoring, engine):
    session = session_for(store, engine, 4)
    round_ = session.prepare("Where do fish live?")
    scoring.watch(round_, session.system_prompt)
    generations = session.generate(round_, on_finished=lambda slot, text: scoring.finished(round_.number, slot, text))
    seeds = list(round_.seeds)
    order = scoring.best_first(round_, timeout_s=60)
    assert order is not None and sorted(order) == [0, 1, 2, 3]
    assert round_.generations == [generations[slot] for slot in order]
    assert round_.seeds == [seeds[slot] for slot in order]
    scores = scoring.scores(round_.number)
    assert list(scores.scores) == sorted(scores.scores, reverse=True) and scores.pick == 0
    session.store_candidates(round_)
    scoring.stored(round_)
    stored = store.candidates(round_.prompt_id)
    assert [c.text for c in stored] == [g.text for g in round_.generations]  # A is the best, in the store too
    wait_until(lambda: len(store.reward_scores(scoring.run_id, round_.candidate_ids)) == 4)
    best = store.reward_scores(scoring.run_id, [round_.candidate_ids[0]])[round_.candidate_ids[0]]
    assert best == max(store.reward_scores(scoring.run_id, round_.candidate_ids).values())
    with pytest.raises(ValueError, match="stored already"):
        round_.reorder([1, 0, 2, 3])


def test_agreement_counts_judging_with_and_against_the_pick(store, scoring, engine):
    session = session_for(store, engine, 2)
    for agree in (True, False):
        round_ = session.prepare("What colour is the sky?")
        scoring.watch(round_, session.system_prompt)
        session.generate(round_, on_finished=lambda slot, text, r=round_: scoring.finished(r.number, slot, text))
        session.store_candidates(round_)
        scoring.stored(round_)
        wait_until(lambda r=round_: len(store.reward_scores(scoring.run_id, r.candidate_ids)) == 2)
        pick = scoring.scores(round_.number).pick
        chosen = pick if agree else 1 - pick
        session.record(round_, Judgement.prefer(chosen, 1 - chosen))
        agreement = store.reward_agreement(scoring.run_id, session_id=session.session_id)
        assert (agreement.agreed, agreement.judged) == ((1, 1) if agree else (1, 2))


def test_a_scorer_that_stops_turns_scoring_off_and_frees_waiters(store, scoring, engine):
    session = session_for(store, engine, 2)
    round_ = session.prepare("Say hello.")
    scoring.watch(round_, session.system_prompt)
    scoring._scorer.close()  # noqa: SLF001 - the real scorer stopped underneath (as when its model goes away)
    scoring.finished(round_.number, 0, " Hello!")
    wait_until(lambda: scoring.failed is not None)
    assert "closed" in scoring.failed and scoring.heard[1] == [scoring.failed]
    started = time.monotonic()
    assert scoring.best_first(round_, timeout_s=30) is None  # best-of-N does not wait for scores that never come
    assert time.monotonic() - started < 5
    scoring.finished(round_.number, 1, " Hi!")  # ignored from now on: one notice, not one per candidate
    time.sleep(0.2)
    assert scoring.heard[1] == [scoring.failed]


def test_round_scores_pick_and_order():
    assert RoundScores(1, (0.5, None)).pick is None  # not every candidate scored yet
    assert RoundScores(1, (0.5,)).pick is None  # a single candidate: nothing to choose between
    assert RoundScores(1, (0.1, 0.7, 0.7)).pick == 1  # a tie at the top: the first of them
    assert RoundScores(1, (0.1, 0.7, -0.2)).best_first() == [1, 0, 2]
    assert RoundScores(1, (None, 0.3)).best_first() == [1, 0]



# --- the prompt shared, the replies batched: the same scores as each reply alone ---

FRUIT_REPLIES = [" A pear.", " Potato potato potato.", " A banana is a long yellow fruit that grows in bunches."]


def test_the_torch_scorer_computes_the_prompt_once_and_batches_yet_scores_each_reply_as_alone(store, reward_data,
                                                                                               engine):
    from studio.reward.torch_scoring import SharedPromptScorer
    from trainers.methods.reward import load_trained_reward_model, transformers_reward_scores

    run = store.get_run(reward_data[1])
    model, tokenizer = load_trained_reward_model(Path(run.output_dir), Path(run.summary["model"]["model_dir"]))
    first = engine.prompt_format.render(SYSTEM, [ChatTurn("user", "Name a fruit.")])
    longer = engine.prompt_format.render(SYSTEM, [ChatTurn("user", "Name a fruit."), ChatTurn("assistant", " An apple."),
                                                  ChatTurn("user", "Another one?")])
    # The reference: each reply alone through the PEFT model, nothing shared (what the trainer computes).
    reference = {prompt: transformers_reward_scores(model, tokenizer, prompt, FRUIT_REPLIES) for prompt in (first, longer)}
    scorer = SharedPromptScorer(model, tokenizer)  # merges the LoRA into ``model``
    together = scorer.score(first, FRUIT_REPLIES)  # the prompt computed once, the replies in one batch
    extended = scorer.score(longer, FRUIT_REPLIES)  # the cached prompt extended by the next turns
    alone = [scorer.score(first, [reply])[0] for reply in FRUIT_REPLIES]  # the cache cut back to the first prompt
    assert together == pytest.approx(reference[first], abs=1e-4)
    assert extended == pytest.approx(reference[longer], abs=1e-4)
    assert alone == pytest.approx(together, abs=1e-4)
    assert len(set(np.round(together, 3))) == 3  # told apart, not one score for all


def test_the_llama_cpp_scorer_batches_replies_as_if_each_were_alone(store, reward_data, engine):
    scorer = open_reward_scorer(store, reward_data[1], engine, backend="llama")
    try:
        conversation = round_conversation(SYSTEM, [], "Name a fruit.")
        together = scorer.score(conversation, FRUIT_REPLIES)
        alone = [scorer.score(conversation, [reply])[0] for reply in FRUIT_REPLIES]
    finally:
        scorer.close()
    # Approximate: llama.cpp's numbers move in the third decimal with the batch a reply is decoded in.
    assert alone == pytest.approx(together, abs=0.02)


def test_a_prompt_longer_than_the_sliding_window_is_packed_exactly(store, reward_data, engine):
    """Gemma 3's sliding-window layers see only the last 512 positions: the packed pass's masks must apply the
    window to the cached prompt as well as to the replies (each reply's positions restart after the prompt)."""
    from studio.reward.torch_scoring import SharedPromptScorer
    from trainers.methods.reward import load_trained_reward_model, transformers_reward_scores

    run = store.get_run(reward_data[1])
    model, tokenizer = load_trained_reward_model(Path(run.output_dir), Path(run.summary["model"]["model_dir"]))
    window = model.config.sliding_window
    question = " ".join(f"Fact {i}: the number {i} comes after {i - 1}." for i in range(1, 70))
    prompt = engine.prompt_format.render(SYSTEM, [ChatTurn("user", question + " Name a fruit.")])
    assert len(tokenizer(prompt).input_ids) > window + 20  # the window really masks something
    reference = transformers_reward_scores(model, tokenizer, prompt, FRUIT_REPLIES)
    scorer = SharedPromptScorer(model, tokenizer)
    assert scorer.score(prompt, FRUIT_REPLIES) == pytest.approx(reference, abs=1e-4)
    assert scorer.score(prompt, FRUIT_REPLIES[1:]) == pytest.approx(reference[1:], abs=1e-4)  # the prompt cached


def test_bf16_matmuls_score_as_float32_does_within_bf16_rounding(store, reward_data, engine):
    from torch import nn

    from studio.reward.bf16_matmuls import Bf16Linear
    from studio.reward.torch_scoring import SharedPromptScorer
    from trainers.methods.reward import load_trained_reward_model

    run = store.get_run(reward_data[1])
    model_dir = Path(run.summary["model"]["model_dir"])
    prompt = engine.prompt_format.render(SYSTEM, [ChatTurn("user", "Name a fruit.")])
    exact = SharedPromptScorer(*load_trained_reward_model(Path(run.output_dir), model_dir))
    fast = SharedPromptScorer(*load_trained_reward_model(Path(run.output_dir), model_dir), precision="bf16")
    body = fast._body  # noqa: SLF001 - what was converted
    assert not any(isinstance(m, nn.Linear) for m in body.modules())
    assert sum(isinstance(m, Bf16Linear) for m in body.modules()) == 7 * body.config.num_hidden_layers
    reference, scores = exact.score(prompt, FRUIT_REPLIES), fast.score(prompt, FRUIT_REPLIES)
    spread = max(reference) - min(reference)
    print(f"bf16 matmuls vs float32: {np.subtract(scores, reference)} against a spread of {spread:.4f}")
    assert scores != pytest.approx(reference, abs=1e-6)  # bf16 arithmetic really ran
    assert np.max(np.abs(np.subtract(scores, reference))) < 0.1 * spread
    assert np.argsort(scores).tolist() == np.argsort(reference).tolist()


def test_a_bf16_linear_packed_or_not_rounds_like_autocast():
    import torch
    from torch import nn

    from studio.reward.bf16_matmuls import Bf16Linear

    torch.manual_seed(0)
    linear = nn.Linear(96, 40, bias=True)
    x = torch.randn(7, 96)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = linear(x).float()
    with torch.inference_mode():
        unpacked = Bf16Linear(linear, packed=False)(x)
        packed = Bf16Linear(linear, packed=True)(x)
    assert unpacked.dtype == packed.dtype == torch.float32
    exact = linear(x).detach()
    for got in (unpacked, packed):
        assert torch.allclose(got, autocast, atol=0.03)  # bf16 rounding of the result apart (autocast adds the bias in bf16)
        assert not torch.allclose(got, exact, atol=1e-5)  # not float32


def test_watching_a_round_computes_its_prompt_before_any_candidate_finishes(store, scoring, engine):
    session = session_for(store, engine, 2)
    round_ = session.prepare("Name a vegetable.")
    scorer = scoring._scorer  # noqa: SLF001 - the llama.cpp scorer: what its prompt cache holds
    before = list(scorer._cached)  # noqa: SLF001
    scoring.watch(round_, session.system_prompt)
    prompt = engine.prompt_format.render(SYSTEM, [ChatTurn("user", "Name a vegetable.")])
    expected = scorer._tokenize(prompt)[:-1]  # noqa: SLF001 - all but the token a reply may merge with
    wait_until(lambda: scorer._cached == expected)  # noqa: SLF001 - no candidate was generated or scored
    assert before != expected
    heard, failures = scoring.heard
    assert not heard and not failures  # preparing reports nothing


def test_a_prepared_prompt_gives_the_same_scores_and_is_not_computed_again(store, reward_data, engine):
    from studio.reward.torch_scoring import SharedPromptScorer
    from trainers.methods.reward import load_trained_reward_model, transformers_reward_scores

    run = store.get_run(reward_data[1])
    model, tokenizer = load_trained_reward_model(Path(run.output_dir), Path(run.summary["model"]["model_dir"]))
    prompt = engine.prompt_format.render(SYSTEM, [ChatTurn("user", "Name a fruit.")])
    reference = transformers_reward_scores(model, tokenizer, prompt, FRUIT_REPLIES)
    scorer = SharedPromptScorer(model, tokenizer)
    scorer.prepare(prompt)
    prepared = list(scorer._cached_ids)  # noqa: SLF001 - what the prompt left in the cache
    assert len(prepared) == len(tokenizer(prompt).input_ids) - 1
    assert scorer._cached_agreement(scorer.token_ids(prompt, FRUIT_REPLIES[0])) == len(prepared)  # noqa: SLF001
    assert scorer.score(prompt, FRUIT_REPLIES) == pytest.approx(reference, abs=1e-4)
