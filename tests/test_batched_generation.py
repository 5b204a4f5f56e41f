"""A round's candidates decoded side by side in one llama.cpp context, on the real bundled models: each one
against what its seed gives alone, stop strings and cancel per candidate, and the context left as the next
plain generation and scoring expect it."""

from __future__ import annotations

import llama_cpp
import pytest

from studio.inference.batched_generation import BatchUnavailable, StopText, batch_refusal, generate_batch
from studio.inference.engine import ChatEngine, EngineConfig, SamplingSettings
from studio.inference.parallel_context import PARALLEL_SEQUENCES, max_parallel_sequences
from studio.inference.scoring import reply_logprob
from studio.judging import candidate_rows, candidate_seeds, draft_round, generate_round
from trainers.prompt_format import ChatTurn

SHORT = SamplingSettings(max_tokens=12)


def prompt_for(engine: ChatEngine, question: str) -> str:
    return engine.prompt_format.render("", [ChatTurn("user", question)])


def fresh(engine: ChatEngine) -> None:
    """Empty the engine's prompt cache. llama.cpp's numbers for a prompt depend slightly on how much of it
    was cached (the rest is evaluated as one chunk), so candidates are compared from the same starting point."""
    with engine.exclusive() as llm:
        llm.reset()


def alone(engine: ChatEngine, prompt: str, seeds, sampling=SHORT, stop=None):  # noqa: ANN001
    """The seeds' candidates one after another from an empty cache, as a round is generated one by one."""
    fresh(engine)
    return [engine.generate(prompt, sampling, seed, stop=stop) for seed in seeds]


def batched(engine: ChatEngine, prompt: str, sampling: SamplingSettings, seeds, **options):  # noqa: ANN001,ANN003
    """The seeds' candidates side by side from an empty cache."""
    fresh(engine)
    return generate_batch(engine, prompt, sampling, seeds, **options)


def same_candidate(a, b) -> bool:  # noqa: ANN001 - two Generations
    return (a.text, a.finish_reason, a.n_tokens, a.seed) == (b.text, b.finish_reason, b.n_tokens, b.seed)


def test_the_engines_context_holds_several_sequences_and_one_sequence_is_as_before(engine, default_model):
    assert max_parallel_sequences(engine.llama) == PARALLEL_SEQUENCES
    plain = llama_cpp.Llama(model_path=str(default_model), n_ctx=engine.llama.context_params.n_ctx,
                            n_batch=engine.llama.n_batch, n_threads=engine.n_threads,
                            n_threads_batch=engine.n_threads_batch, verbose=False)
    try:
        assert max_parallel_sequences(plain) == 1
        prompt = prompt_for(engine, "Tell me about cats.")
        s = SHORT
        out = plain.create_completion(engine.tokenize(prompt), max_tokens=s.max_tokens, temperature=s.temperature,
                                      top_p=s.top_p, top_k=s.top_k, min_p=s.min_p, repeat_penalty=s.repeat_penalty,
                                      seed=4, stop=[])
    finally:
        plain.close()
    assert alone(engine, prompt, [4], stop=())[0].text == out["choices"][0]["text"]


# --- the text of one candidate as it streams -----------------------------------------------------------------


def test_stop_text_holds_back_a_possible_stop_and_cuts_at_the_earliest():
    text = StopText(["\nUser:", "###"])
    assert text.feed(b"Hello") == "Hello"
    assert text.feed(b"\nUs") == ""  # may be the start of "\nUser:": not shown yet
    assert text.feed(b"ually") == "\nUsually"  # it was not
    assert text.feed(b" ##") == " "  # "##" may begin "###"
    assert text.feed(b"# and \nUser: more") == ""  # "###" comes first
    assert text.stopped
    assert text.finish() == ""


def test_stop_text_waits_for_a_character_split_across_tokens():
    text = StopText(["☃!"])
    snowman = "☃".encode()
    assert text.feed(b"a" + snowman[:1]) == ""
    assert text.held_for_character  # neither stop strings nor max_tokens are checked on this token
    assert text.feed(snowman[1:2]) == ""
    assert text.feed(snowman[2:]) == "a"  # "☃" may begin the stop string
    assert not text.held_for_character
    assert text.feed(b"?") == "☃?"
    assert text.finish() == ""


# --- each candidate against its seed alone -------------------------------------------------------------------


@pytest.mark.parametrize("stop", [None, ()], ids=["format stops", "no stops"])
def test_one_candidate_is_token_for_token_the_engines_own(engine, stop):
    for question, seed in (("Name a colour.", 3), ("Tell me about cats.", 8)):
        prompt = prompt_for(engine, question)
        [together] = batched(engine, prompt, SHORT, [seed], stop=stop)
        assert same_candidate(together, alone(engine, prompt, [seed], stop=stop)[0])


@pytest.mark.parametrize("n", [2, 4])
def test_candidates_side_by_side_start_as_their_seed_alone_and_differ_by_seed(engine, n):
    # A row of a multi-row batch is computed slightly differently from a lone row by llama.cpp's kernels, so
    # after the first token (sampled from the prompt's logits, the same either way) a candidate drifts from
    # its seed alone (bench/candidates_speed.py measures how far they agree).
    prompt = prompt_for(engine, "Tell me about cats.")
    seeds = [21 + slot for slot in range(n)]
    streamed: dict[int, list[str]] = {slot: [] for slot in range(n)}
    together = batched(engine, prompt, SHORT, seeds, on_piece=lambda slot, piece: streamed[slot].append(piece),
                       stop=())
    singles = alone(engine, prompt, seeds, stop=())
    for b, s in zip(together, singles, strict=True):
        first = engine.llama.tokenize(s.text.encode("utf-8"), add_bos=False, special=True)[0]
        assert engine.llama.tokenize(b.text.encode("utf-8"), add_bos=False, special=True)[0] == first
        assert b.seed == s.seed and b.finish_reason == "length" and b.n_tokens >= SHORT.max_tokens - 2
    assert ["".join(streamed[slot]) for slot in range(n)] == [g.text for g in together]
    assert len({g.text for g in together}) == n  # different seeds, different candidates
    assert all(g.extra == {"batched_with": n} and not g.cancelled and g.adapter is None for g in together)
    again = batched(engine, prompt, SHORT, seeds, stop=())  # the same call from the same cache repeats itself
    assert [g.text for g in again] == [g.text for g in together]


def test_stop_strings_end_each_candidate_on_its_own(engine):
    prompt = prompt_for(engine, "List three fruits.")
    sampling = SamplingSettings(max_tokens=10)
    seeds = list(range(40, 46))
    whole = batched(engine, prompt, sampling, seeds, stop=())
    # A stop string some of these replies reach and some do not.
    stop = next(s for s in (".", ",", "!", "?", " the", " a", "e") if 0 < sum(s in g.text for g in whole) < len(whole))
    cut = batched(engine, prompt, sampling, seeds, stop=[stop])
    assert not any(stop in g.text for g in cut)
    ended = [g for g in cut if g.finish_reason == "stop"]
    went_on = [g for g in cut if g.finish_reason == "length"]
    assert ended and went_on, (stop, [g.finish_reason for g in cut])  # one candidate's stop ends only that one
    assert all(g.n_tokens >= sampling.max_tokens - 2 for g in went_on)
    assert all(w.text.startswith(c.text) for c, w in zip(cut, whole, strict=True) if c is ended[0])


def test_cancel_stops_every_candidate_and_the_round_is_dropped(engine):
    prompt = prompt_for(engine, "Tell me a long story.")
    steps = iter(range(100))
    batched = generate_batch(engine, prompt, SamplingSettings(max_tokens=40), [1, 2, 3],
                             should_stop=lambda: next(steps) >= 3, stop=())
    assert all(g.cancelled and g.finish_reason == "cancelled" for g in batched)
    assert all(g.n_tokens <= 6 for g in batched)
    round_ = draft_round(engine, "", [], "Tell me a long story.", SamplingSettings(max_tokens=40), 3, 5)
    assert generate_round(engine, round_, SamplingSettings(max_tokens=40), should_stop=lambda: True) is None
    assert round_.generations == []


# --- the context afterwards ----------------------------------------------------------------------------------


def test_after_a_batched_round_generation_and_scoring_are_as_before(engine):
    prompt = prompt_for(engine, "What is the sea like?")
    other = prompt_for(engine, "What is a forest like?")
    reply = " It is wide and blue."
    score = reply_logprob(engine, prompt, reply).total_logprob
    engine.generate(prompt, SHORT, 6)
    repeated = engine.generate(prompt, SHORT, 6)  # the prompt cached but its last token, as a round leaves it
    before = engine.generate(other, SHORT, 5)

    first = generate_batch(engine, prompt, SHORT, [1, 2, 3, 4])
    llm = engine.llama
    tokens = engine.tokenize(prompt)
    memory = llama_cpp.llama_get_memory(llm.ctx)
    # Only the prompt (less its last token) stays, in sequence 0, and the Llama's bookkeeping says so.
    assert llm.n_tokens == len(tokens) - 1 and llm.input_ids[: llm.n_tokens].tolist() == tokens[:-1]
    assert llama_cpp.llama_memory_seq_pos_max(memory, 0) == len(tokens) - 2
    assert [llama_cpp.llama_memory_seq_pos_max(memory, seq) for seq in (1, 2, 3)] == [-1, -1, -1]

    assert same_candidate(engine.generate(prompt, SHORT, 6), repeated)
    assert same_candidate(engine.generate(other, SHORT, 5), before)
    assert reply_logprob(engine, prompt, reply).total_logprob == pytest.approx(score, abs=1e-6)
    again = generate_batch(engine, prompt, SHORT, [1, 2, 3, 4])  # scoring emptied the cache meanwhile
    assert [g.text[:1] for g in again] == [g.text[:1] for g in first]


def test_a_round_is_generated_side_by_side_and_streams_each_candidates_text_so_far(engine):
    round_ = draft_round(engine, "Answer briefly.", [], "Name a colour.", SHORT, 3, 50)
    latest: dict[int, str] = {}
    results = generate_round(engine, round_, SHORT, on_token=lambda slot, text: latest.__setitem__(slot, text))
    assert results is not None and round_.generations == results
    assert [g.extra for g in results] == [{"batched_with": 3}] * 3 and [g.seed for g in results] == [50, 51, 52]
    assert latest == {slot: g.text for slot, g in enumerate(results) if g.text}
    # The stored candidates say they were decoded side by side (their seed alone would give another text).
    assert [row["sampling"]["batched_with"] for row in candidate_rows(engine, round_)] == [3, 3, 3]


def test_a_context_that_cannot_hold_every_candidate_falls_back_to_one_by_one(engine):
    sampling = SamplingSettings(max_tokens=8)
    long_question = "Please summarise: " + "the quick brown fox jumps over the lazy dog. " * 100
    round_ = draft_round(engine, "", [], long_question, sampling, 2, 70)
    n_prompt = len(engine.tokenize(round_.fitted.text))
    assert n_prompt + 2 * (sampling.max_tokens + 4) > engine.n_ctx >= n_prompt + sampling.max_tokens
    reason = batch_refusal(engine, n_prompt, 2, sampling.max_tokens)
    assert reason and f"{engine.n_ctx}-token context" in reason
    with pytest.raises(BatchUnavailable):
        generate_batch(engine, round_.fitted.text, sampling, round_.seeds)
    results = generate_round(engine, round_, sampling)
    assert results is not None and [g.extra for g in results] == [{}, {}]  # ChatEngine.generate's, one by one
    assert [g.seed for g in results] == round_.seeds and all(g.text and not g.cancelled for g in results)


# --- a model with a chat template and end-of-turn tokens -----------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_engine(smollm2_model):
    eng = ChatEngine(EngineConfig(model_path=smollm2_model, n_ctx=1024))
    yield eng
    eng.close()


def test_smollm2_candidates_end_at_its_end_of_turn_token(smollm2_engine):
    prompt = prompt_for(smollm2_engine, "What is the capital of France?")
    sampling = SamplingSettings(max_tokens=24)
    seeds = candidate_seeds(2, 9, 1)
    [one] = batched(smollm2_engine, prompt, sampling, seeds[:1])
    assert same_candidate(one, alone(smollm2_engine, prompt, seeds[:1], sampling)[0])
    two = batched(smollm2_engine, prompt, sampling, seeds)
    assert "stop" in {g.finish_reason for g in [one, *two]}
    assert two[0].text.split()[0] == one.text.split()[0]
    assert not any("<|im_end|>" in g.text or "<|im_start|>" in g.text for g in [one, *two])
