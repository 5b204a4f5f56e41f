"""Scoring fixed replies on the real default model: exact against llama.cpp's own full-logits path."""

import threading
import time

import numpy as np
import pytest

from studio.inference.engine import ChatEngine, EngineConfig, SamplingSettings
from studio.inference.scoring import MAX_OUTPUTS_PER_DECODE, ScoringError, preference_metrics, reply_logprob
from trainers.prompt_format import ChatTurn

pytestmark = pytest.mark.slow

SENSIBLE = " The capital of France is Paris."
GARBAGE = " zq Xv blorf 93 kk!! wub"
# Longer than MAX_OUTPUTS_PER_DECODE tokens, so scoring takes several decodes.
LONG_REPLY = (
    " The capital of France is Paris. It is a large city on the river Seine, known for the Eiffel Tower, "
    "its museums and cafes, and a long history as the centre of French art, science and politics."
)


@pytest.fixture(scope="module")
def prompt(engine) -> str:
    return engine.fit_prompt("Answer briefly.", [ChatTurn("user", "What is the capital of France?")], 64).text


def slow_logprobs(model_path, prompt: str, reply: str) -> list[float]:
    """Per-token log-probs through llama-cpp-python's logits_all path (small n_ctx keeps it ~70 MB)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=96, n_batch=96, logits_all=True, verbose=False)
    try:
        p = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        tokens = llm.tokenize((prompt + reply).encode(), add_bos=True, special=True)
        assert tokens[: len(p)] == p
        llm.eval(tokens)
        scores = np.asarray(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()
    top = scores.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(scores - top).sum(axis=1)) + top[:, 0]
    return [scores[i, tokens[i + 1]] - log_z[i] for i in range(len(p) - 1, len(tokens) - 1)]


def test_batch_scoring_equals_the_full_logits_path(engine, default_model, prompt):
    expected = slow_logprobs(default_model, prompt, LONG_REPLY)
    score = reply_logprob(engine, prompt, LONG_REPLY)
    assert score.n_tokens == len(expected) > MAX_OUTPUTS_PER_DECODE
    assert np.max(np.abs(np.array(score.token_logprobs) - np.array(expected))) < 1e-3
    assert score.total_logprob == pytest.approx(sum(expected), abs=1e-3 * len(expected))
    assert score.mean_logprob == pytest.approx(score.total_logprob / score.n_tokens)


def test_prompt_longer_than_a_batch_is_split(default_model, engine, prompt):
    small = ChatEngine(EngineConfig(model_path=default_model, n_ctx=256, n_batch=8))
    try:
        assert small.llama.n_batch == 8 < len(small.tokenize(prompt))
        split = reply_logprob(small, prompt, LONG_REPLY)
    finally:
        small.close()
    whole = reply_logprob(engine, prompt, LONG_REPLY)
    assert split.n_tokens == whole.n_tokens
    assert np.allclose(split.token_logprobs, whole.token_logprobs, atol=1e-3)


def test_reply_tokens_are_those_generation_would_append(engine, prompt):
    score = reply_logprob(engine, prompt, SENSIBLE)
    assert score.n_tokens == len(engine.tokenize(prompt + SENSIBLE)) - len(engine.tokenize(prompt))
    assert reply_logprob(engine, prompt, "").n_tokens == 0


def test_a_likely_reply_scores_higher_than_garbage(engine, prompt):
    sensible = reply_logprob(engine, prompt, SENSIBLE)
    garbage = reply_logprob(engine, prompt, GARBAGE)
    assert sensible.mean_logprob > garbage.mean_logprob + 2.0
    assert all(lp <= 0 for lp in sensible.token_logprobs)


def test_generation_is_unchanged_after_scoring(engine, prompt):
    sampling = SamplingSettings(max_tokens=16, temperature=0.8)
    before = engine.generate(prompt, sampling, seed=123).text
    reply_logprob(engine, prompt, GARBAGE)  # leaves other tokens in the KV cache under the same prefix
    after = engine.generate(prompt, sampling, seed=123).text
    assert after == before
    # And the other way round: scoring after a generation sees a clean cache.
    assert reply_logprob(engine, prompt, SENSIBLE) == reply_logprob(engine, prompt, SENSIBLE)


def test_scoring_waits_while_another_owner_holds_the_engine(engine, prompt):
    done = threading.Event()

    def score():
        reply_logprob(engine, prompt, SENSIBLE)
        done.set()

    with engine.session("generating candidates"):
        worker = threading.Thread(target=score)
        worker.start()
        time.sleep(0.3)
        assert not done.is_set()  # a generation holding the lock is never interleaved with
    worker.join(timeout=30)
    assert done.is_set()


def test_a_reply_beyond_the_context_is_a_clear_error(engine, prompt):
    with pytest.raises(ScoringError, match="more than the 1024-token context"):
        reply_logprob(engine, prompt, " word" * 1100)


def test_preference_metrics_raw_and_implicit(engine, prompt):
    class Pair:
        def __init__(self, chosen, rejected):
            self.prompt, self.chosen, self.rejected = prompt, chosen, rejected

    pairs = [Pair(SENSIBLE, GARBAGE), Pair(GARBAGE, SENSIBLE), Pair(SENSIBLE, " Paris.")]
    progress = []
    base = preference_metrics(engine, pairs, on_progress=lambda done, total: progress.append((done, total)))
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert base.n == 3 and base.implicit_reward_accuracy is None and base.accuracy == base.raw_accuracy
    assert base.per_pair[0].logp_chosen == pytest.approx(reply_logprob(engine, prompt, SENSIBLE).total_logprob)
    assert base.per_pair[0].margin > 0 > base.per_pair[1].margin
    assert base.mean_margin == pytest.approx(sum(p.margin for p in base.per_pair) / 3)

    # Against itself every implicit margin is 0, and 0 counts as not preferring the chosen reply.
    same = preference_metrics(engine, pairs, reference=base.as_reference(), beta=0.1)
    assert same.implicit_reward_accuracy == 0.0 and same.mean_implicit_margin == pytest.approx(0.0)
    assert same.raw_accuracy == base.raw_accuracy

    # A reference that liked the rejected replies more than this model does: positive implicit margins.
    reference = [(c - 1.0, r + 2.0) for c, r in base.as_reference()]
    moved = preference_metrics(engine, pairs, reference=reference, beta=0.5)
    assert moved.implicit_reward_accuracy == moved.accuracy == 1.0
    assert moved.mean_implicit_margin == pytest.approx(0.5 * 3.0, abs=1e-6)
    assert moved.to_dict()["beta"] == 0.5 and "per_pair" not in moved.to_dict()

    with pytest.raises(ValueError, match="reference has 1 score pairs for 3 pairs"):
        preference_metrics(engine, pairs, reference=[(0.0, 0.0)])
    with pytest.raises(ValueError, match="no pairs"):
        preference_metrics(engine, [])
