"""A round's N candidates decoded side by side in the engine's one llama.cpp context.

Decoding is memory-bound: every step reads all the weights for however many tokens it computes, so N
sequences in one batch cost far less than N runs one after another. The prompt is evaluated once, as
sequence 0, and shared with sequences 1…N−1 (``llama_memory_seq_cp``: the cells gain sequence ids, no data
moves); each step then decodes one token per unfinished candidate, and each candidate samples from its own
row of logits with its own sampler chain and seed.

The chain is the one llama-cpp-python's ``create_completion`` builds for the same ``SamplingSettings`` (see
``Llama._init_sampler``): the engine's banned tokens, repetition penalties over the last 64 tokens, top-k,
typical (1.0), top-p, min-p, temperature, then a draw seeded with the candidate's seed. The ban is a native
logit bias of −inf here rather than llama-cpp-python's Python callback that writes −inf: the same numbers
without a Python call per token. Stop strings, end-of-generation tokens, the hold-back of text that may be the
start of a stop string or an unfinished UTF-8 character, and ``max_tokens`` follow ``create_completion`` too.

So one candidate (N = 1) is token for token what ``ChatEngine.generate`` gives for its seed. With N > 1 the
first token still is (it comes from the prompt's logits), but llama.cpp's CPU kernels compute a row of a
multi-row batch slightly differently from a lone row, and differently by its place in the batch (measured on
both bundled models: up to ~0.3 nats on the top tokens' log-probabilities, the same size as the gap between
its one-token decode and its batched prompt evaluation), so after a few tokens a candidate drifts from the
one its seed gives alone: another sample of the same distribution. ``bench/candidates_speed.py`` prints how
far they agree. (Flash attention makes rows of up to 3 exact, but then a prompt's logits depend on how much
of it was cached, and the same seed alone no longer repeats itself: measured, 2 of 4 chat prompts changed.)

Afterwards the context holds only the prompt (less its last token) in sequence 0, and the ``Llama``'s token
bookkeeping says so: the next ``create_completion`` or scoring call finds the cache as it expects.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from studio.inference.engine import ChatEngine, EngineError, Generation, SamplingSettings
from studio.inference.parallel_context import max_parallel_sequences
from trainers.llama_batch import DecodeRow, decode_rows

if TYPE_CHECKING:
    from llama_cpp import Llama

# on_piece(slot, piece): each newly streamed piece of text of candidate ``slot``, from the generating thread.
PieceCallback = Callable[[int, str], None]
# on_finished(slot, text): candidate ``slot`` ended (stop or length) with ``text``, while others may still decode;
# from the generating thread, so whatever it starts (a reward model's scoring) must not wait there.
FinishedCallback = Callable[[int, str], None]

# create_completion keeps sampling past max_tokens while a character's UTF-8 bytes are unfinished (a character
# split over byte tokens): at most 3 more tokens. The context is planned with this slack.
UTF8_SLACK_TOKENS = 4


class BatchUnavailable(EngineError):
    """These candidates cannot be decoded side by side here (the reason says why); generate them one by one."""


def batch_refusal(engine: ChatEngine, n_prompt_tokens: int, n_candidates: int, max_tokens: int) -> str | None:
    """Why ``n_candidates`` candidates of a ``n_prompt_tokens`` prompt cannot share the context, or None.

    The prompt's cells are shared; each candidate needs its own cells for up to ``max_tokens`` (+ slack)."""
    n_seq = max_parallel_sequences(engine.llama)
    if n_candidates > n_seq:
        return f"the model's context holds {n_seq} sequence(s) at once, not {n_candidates}"
    needed = n_prompt_tokens + n_candidates * (max_tokens + UTF8_SLACK_TOKENS)
    if needed > engine.n_ctx:
        return (f"the prompt ({n_prompt_tokens} tokens) and {n_candidates} candidates of up to {max_tokens} tokens "
                f"need {needed} of the {engine.n_ctx}-token context")
    return None


class _SamplerChains:
    """One llama.cpp sampler chain per candidate, freed together."""

    def __init__(self, llm: Llama, banned_ids: Sequence[int], sampling: SamplingSettings,
                 seeds: Sequence[int]) -> None:
        import llama_cpp

        self._lib = llama_cpp
        n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llm.model))
        bias = (llama_cpp.llama_logit_bias * max(1, len(banned_ids)))()
        for i, token in enumerate(banned_ids):
            bias[i].token = int(token)
            bias[i].bias = -float("inf")
        self.chains = []
        try:
            for seed in seeds:
                chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
                self.chains.append(chain)
                for sampler in self._stages(llama_cpp, n_vocab, len(banned_ids), bias, llm.last_n_tokens_size,
                                            sampling, seed):
                    llama_cpp.llama_sampler_chain_add(chain, sampler)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _stages(lib, n_vocab, n_banned, bias, last_n, sampling, seed):  # noqa: ANN001,ANN205 - ctypes handles
        # Llama._init_sampler's order and arguments (min_keep 1; the penalties binding takes n_vocab first).
        yield lib.llama_sampler_init_logit_bias(n_vocab, n_banned, bias)
        yield lib.llama_sampler_init_penalties(n_vocab, last_n, sampling.repeat_penalty, 0.0, 0.0)
        if sampling.temperature == 0:
            yield lib.llama_sampler_init_greedy()
            return
        yield lib.llama_sampler_init_top_k(sampling.top_k)
        yield lib.llama_sampler_init_typical(1.0, 1)
        yield lib.llama_sampler_init_top_p(sampling.top_p, 1)
        yield lib.llama_sampler_init_min_p(sampling.min_p, 1)
        yield lib.llama_sampler_init_temp(sampling.temperature)
        yield lib.llama_sampler_init_dist(seed)

    def sample(self, slot: int, ctx, row: int) -> int:  # noqa: ANN001 - llama_context_p
        """Sample candidate ``slot``'s next token from logits row ``row`` (−1: the last), and accept it."""
        return int(self._lib.llama_sampler_sample(self.chains[slot], ctx, row))

    def close(self) -> None:
        for chain in self.chains:
            self._lib.llama_sampler_free(chain)
        self.chains = []


class StopText:
    """One candidate's text as it streams, cut at its first stop string.

    Bytes of each sampled token go in; out comes the text that can be shown now: never the bytes that may be
    the start of a stop string, or of an unfinished UTF-8 character (both held back until the next token
    decides). ``create_completion``'s streaming rules, kept so that the text matches it."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s.encode("utf-8") for s in stops if s]
        self._bytes = bytearray()
        self._shown = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("ignore")
        self._multibyte_wait = 0
        self.stopped = False
        self.held_for_character = False

    def feed(self, piece: bytes) -> str:
        """Add a token's bytes; the text now safe to show (sets ``stopped`` at a stop string, and
        ``held_for_character`` when this token leaves a character unfinished)."""
        self._bytes += piece
        self.held_for_character = self._unfinished_character()
        if self.held_for_character:
            return ""
        found = [i for i in (self._bytes.find(stop) for stop in self._stops) if i >= 0]
        if found:  # the earliest stop string wins, as in create_completion's stream
            self.stopped = True
            del self._bytes[min(found):]
            return self._release(len(self._bytes), final=True)
        return self._release(len(self._bytes) - self._hold_back())

    def finish(self) -> str:
        """The rest of the text (the reply ended by length, end of generation, or cancel)."""
        return self._release(len(self._bytes), final=True)

    def _unfinished_character(self) -> bool:
        # create_completion's own rule, kept as it is (it counts positions as if three bytes were always
        # there): a lead byte among the last three bytes sets how many tokens to wait, each token counts one
        # down, and while it waits neither stop strings nor max_tokens are checked.
        for k, char in enumerate(self._bytes[-3:]):
            k = 3 - k
            for num, pattern in ((2, 192), (3, 224), (4, 240)):
                if num > k and pattern & char == pattern:
                    self._multibyte_wait = num - k
        if self._multibyte_wait > 0:
            self._multibyte_wait -= 1
            return True
        return False

    def _hold_back(self) -> int:
        """Length of the longest end of the text that begins some stop string."""
        longest = 0
        for stop in self._stops:
            for i in range(min(len(stop) - 1, len(self._bytes)), longest, -1):
                if self._bytes.endswith(stop[:i]):
                    longest = i
                    break
        return longest

    def _release(self, upto: int, final: bool = False) -> str:
        if upto <= self._shown and not final:
            return ""
        chunk = bytes(self._bytes[self._shown:upto])
        self._shown = max(self._shown, upto)
        return self._decoder.decode(chunk, final=final)


@dataclass
class _Candidate:
    """One sequence being decoded: its slot (= sequence id), the token to decode next, and its text."""

    slot: int
    seed: int
    text: StopText
    pieces: list[str] = field(default_factory=list)
    n_sampled: int = 0
    next_token: int = -1
    finish_reason: str | None = None
    first_piece_s: float | None = None
    done_s: float | None = None


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two token lists share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class _Decoder:
    """The low-level calls on the context: prompt and step batches on chosen sequences, memory housekeeping."""

    def __init__(self, llm: Llama, capacity: int) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.llm = llm
        self.ctx = llm.ctx
        self.memory = llama_cpp.llama_get_memory(llm.ctx)
        self.batch = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.capacity = capacity

    def close(self) -> None:
        self._lib.llama_batch_free(self.batch)

    def decode(self, rows: Sequence[DecodeRow]) -> None:
        """Decode (token, position, sequence, wants logits) rows in one llama_decode call."""
        status = decode_rows(self.ctx, self.batch, rows)
        if status != 0:
            raise EngineError(f"llama.cpp could not decode the candidates (llama_decode returned {status})")

    def reuse_prefix(self, tokens: Sequence[int]) -> int:
        """Keep the cached start of ``tokens`` in sequence 0 (never all of it: the last token is decoded again
        for its logits), drop every other sequence; return how many tokens are kept."""
        lib, llm = self._lib, self.llm
        lib.llama_memory_seq_keep(self.memory, 0)
        keep = min(common_prefix(llm.input_ids[: llm.n_tokens].tolist(), tokens), len(tokens) - 1)
        if keep <= 0 or not lib.llama_memory_seq_rm(self.memory, 0, keep, -1):
            lib.llama_memory_clear(self.memory, True)
            keep = 0
        llm.n_tokens = keep  # the bookkeeping never claims more than the cache holds, even on an error
        return keep

    def evaluate_prompt(self, tokens: Sequence[int], start: int) -> None:
        """Decode ``tokens[start:]`` as sequence 0 in chunks, logits only for the last token."""
        for begin in range(start, len(tokens), self.capacity):
            end = min(len(tokens), begin + self.capacity)
            self.decode([(tokens[p], p, 0, p == len(tokens) - 1) for p in range(begin, end)])
            self.llm.input_ids[begin:end] = tokens[begin:end]
            self.llm.n_tokens = end

    def share_prompt(self, n_sequences: int) -> None:
        for seq in range(1, n_sequences):
            self._lib.llama_memory_seq_cp(self.memory, 0, seq, -1, -1)

    def leave_prompt_only(self, tokens: Sequence[int]) -> None:
        """Drop the candidates' cells; sequence 0 keeps the prompt but its last token, and the Llama's
        bookkeeping says the same, so its next call decodes that token again (fresh logits) and goes on."""
        lib, llm = self._lib, self.llm
        lib.llama_memory_seq_keep(self.memory, 0)
        keep = min(llm.n_tokens, len(tokens) - 1)
        if keep > 0 and lib.llama_memory_seq_rm(self.memory, 0, keep, -1):
            llm.n_tokens = keep
        else:
            lib.llama_memory_clear(self.memory, True)
            llm.reset()


def generate_batch(
    engine: ChatEngine,
    prompt_text: str,
    sampling: SamplingSettings,
    seeds: Sequence[int],
    on_piece: PieceCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    stop: Sequence[str] | None = None,
    on_finished: FinishedCallback | None = None,
) -> list[Generation]:
    """One candidate per seed for ``prompt_text``, decoded side by side; one ``Generation`` per slot, in order.

    ``on_piece(slot, piece)`` gets each streamed piece, ``on_finished(slot, text)`` each candidate as it ends
    (a cancelled one never ends); ``should_stop`` is asked after every step and cancels
    every candidate (each comes back ``cancelled`` with its text so far); ``stop`` replaces the prompt format's
    stop strings. Holds the engine's lock throughout; the active adapter applies to every candidate.
    BatchUnavailable (before anything is decoded) when the context cannot hold them all."""
    if not seeds:
        return []
    tokens = engine.tokenize(prompt_text)
    max_tokens = min(sampling.max_tokens, engine.n_ctx - len(tokens))  # as create_completion caps it
    stops = list(engine.prompt_format.stop if stop is None else stop)
    with engine.exclusive() as llm, ExitStack() as cleanup:
        reason = batch_refusal(engine, len(tokens), len(seeds), max_tokens)
        if reason is not None:
            raise BatchUnavailable(reason)
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        chains = _SamplerChains(llm, engine.banned_token_ids, sampling, seeds)
        cleanup.callback(chains.close)
        decoder = _Decoder(llm, max(int(llm.n_batch), len(seeds)))
        cleanup.callback(decoder.close)
        cleanup.callback(decoder.leave_prompt_only, tokens)
        adapter = engine.adapters.active
        start = time.perf_counter()
        decoder.evaluate_prompt(tokens, decoder.reuse_prefix(tokens))
        decoder.share_prompt(len(seeds))
        candidates = [_Candidate(slot, seed, StopText(stops)) for slot, seed in enumerate(seeds)]
        rows = {c.slot: -1 for c in candidates}  # every candidate's first token comes from the prompt's logits
        cancelled = False
        while True:
            for c in candidates:
                if c.finish_reason is None:
                    _take(c, chains.sample(c.slot, decoder.ctx, rows[c.slot]), llm, vocab, max_tokens, on_piece,
                          start)
                    if c.finish_reason is not None and on_finished is not None:
                        on_finished(c.slot, "".join(c.pieces))
            active = [c for c in candidates if c.finish_reason is None]
            if not active:
                break
            if should_stop is not None and should_stop():
                cancelled = True
                break
            position = len(tokens) - 1
            decoder.decode([(c.next_token, position + c.n_sampled, c.slot, True) for c in active])
            rows = {c.slot: i for i, c in enumerate(active)}
        end = time.perf_counter()
    results = []
    for c in candidates:  # a cancelled candidate keeps what was shown, as ChatEngine.generate's does
        text = "".join(c.pieces)
        results.append(Generation(
            text=text,
            seed=c.seed,
            sampling=sampling,
            finish_reason="cancelled" if cancelled else c.finish_reason,
            n_tokens=len(engine.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)) if text else 0,
            duration_s=(c.done_s or end) - start,
            ttft_s=c.first_piece_s,
            cancelled=cancelled,
            adapter=adapter,
            extra={"batched_with": len(seeds)},
        ))
    return results


def _take(c: _Candidate, token: int, llm: Llama, vocab, max_tokens: int,  # noqa: ANN001 - llama_vocab_p
          on_piece: PieceCallback | None, start: float) -> None:
    """Candidate ``c`` sampled ``token``: end it, or add its text, as create_completion's loop does."""
    import llama_cpp

    if llama_cpp.llama_vocab_is_eog(vocab, token):
        _finish(c, "stop", on_piece, start)
        return
    c.n_sampled += 1
    c.next_token = token
    _emit(c, c.text.feed(llm.detokenize([token])), on_piece, start)
    if c.text.stopped:
        c.finish_reason, c.done_s = "stop", time.perf_counter()
    elif c.text.held_for_character and c.n_sampled < max_tokens + UTF8_SLACK_TOKENS:
        return
    elif c.n_sampled >= max_tokens:
        _finish(c, "length", on_piece, start)


def _finish(c: _Candidate, reason: str, on_piece: PieceCallback | None, start: float) -> None:
    _emit(c, c.text.finish(), on_piece, start)
    c.finish_reason, c.done_s = reason, time.perf_counter()


def _emit(c: _Candidate, piece: str, on_piece: PieceCallback | None, start: float) -> None:
    if not piece:
        return
    if c.first_piece_s is None:
        c.first_piece_s = time.perf_counter() - start
    c.pieces.append(piece)
    if on_piece is not None:
        on_piece(c.slot, piece)


__all__ = ["BatchUnavailable", "FinishedCallback", "PieceCallback", "StopText", "batch_refusal",
           "generate_batch"]
