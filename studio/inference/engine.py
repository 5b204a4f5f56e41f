"""The chat engine: llama-cpp-python behind a small, explicit API.

One ``Llama`` instance serves every candidate in turn (llama.cpp contexts are not thread-safe). Candidates
of the same prompt share its evaluated prefix through llama-cpp-python's prefix reuse, so the second
candidate starts decoding almost at once.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from studio.inference import runtime_env  # noqa: F401  (OMP_WAIT_POLICY before llama_cpp is imported)
from studio.inference.adapters import AdapterSlots
from studio.inference.llama_log import load_quietly, recent_llama_log
from studio.inference.model_files import GGUFInfo, ModelFileError, file_sha256, inspect_gguf
from studio.inference.parallel_context import allow_parallel_sequences
from trainers.prompt_format import (
    ChatTurn,
    PromptFormat,
    PromptFormatError,
    PromptFormatName,
    TranscriptFormat,
    format_for_metadata,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from llama_cpp import Llama


class EngineError(Exception):
    """The model could not be loaded or run. The message says what and how to fix it."""


class EngineBusy(EngineError):
    """Another owner holds the engine for a job (candidates of one prompt, a comparison): switching the
    adapter now would change the model in the middle of it. Try again when that job is done."""

    def __init__(self, owner: str) -> None:
        super().__init__(f"the model is busy ({owner}): the adapter cannot change until that is done")
        self.owner = owner


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling settings recorded with every candidate. Defaults suit a small base model."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 64
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    max_tokens: int = 96

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be ≥ 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be ≥ 1")

    def to_dict(self) -> dict:
        return asdict(self)


def default_threads() -> tuple[int, int]:
    """Threads for decode and for prompt evaluation.

    Decode is memory-bound and small: on a 2-core box 2 threads gave ~40 tok/s against ~25 with one,
    *if* nothing else runs; with OMP_WAIT_POLICY=PASSIVE (set in runtime_env) a busy neighbour no
    longer collapses it. We leave one core to the UI and the OS on bigger machines, and cap at 8
    where a small model stops scaling.
    """
    cores = os.cpu_count() or 1
    decode = cores if cores <= 2 else min(8, cores - 1)
    return decode, min(cores, 8)


@dataclass
class EngineConfig:
    model_path: Path
    n_ctx: int = 2048
    n_threads: int | None = None
    n_threads_batch: int | None = None
    n_batch: int = 512
    # "auto": the model's own chat template when it has one, else the transcript; "transcript": the transcript
    # even for a model with a template (the user's way past a template that cannot render).
    prompt_format: PromptFormatName = "auto"


@dataclass(frozen=True)
class ModelIdentity:
    """How a candidate names the model that wrote it."""

    model_id: str  # file name, human-readable
    sha256: str
    path: Path


@dataclass(frozen=True)
class FittedPrompt:
    """A rendered prompt that fits the context, and how many old turns were dropped to make it fit."""

    text: str
    n_tokens: int
    dropped_turns: int


@dataclass
class Generation:
    """One finished candidate with everything needed to reproduce it."""

    text: str
    seed: int
    sampling: SamplingSettings
    finish_reason: str | None
    n_tokens: int
    duration_s: float
    ttft_s: float | None
    cancelled: bool = False
    adapter: str | None = None  # the LoRA adapter active while it was generated (None: the base model)
    extra: dict = field(default_factory=dict)


TokenCallback = Callable[[str], None]


def new_seed() -> int:
    """A fresh random seed. Without one, llama.cpp repeats the same sequence at every process start."""
    return secrets.randbits(31)


_MODALITY_MARKUP = re.compile(r"<[a-z_]*(image|audio|video)[a-z_]*>|\[multimodal\]")


class ChatEngine:
    """A loaded GGUF model that renders prompts, fits them to the context and streams candidates."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        try:
            self.info: GGUFInfo = inspect_gguf(config.model_path)
        except ModelFileError as exc:
            raise EngineError(str(exc)) from exc
        if self.info.file_type == "adapter":
            raise EngineError(f"{self.info.path} is a LoRA adapter, not a model; pass it as an adapter")
        self.identity = ModelIdentity(
            model_id=self.info.path.name, sha256=file_sha256(self.info.path), path=self.info.path
        )
        # A broken chat template is refused before the (slower) load, and never at the first prompt.
        self._prompt_format_for({})
        decode, batch = default_threads()
        self.n_threads = config.n_threads or decode
        self.n_threads_batch = config.n_threads_batch or batch
        # One llama.cpp context, not thread-safe: every call into it holds this lock. Re-entrant, so an
        # owner holding the engine for a whole job (``session``) can call generate and switch adapters.
        self._lock = threading.RLock()
        self._owner: str | None = None
        self._llm = self._load()
        self._banned = self._unprintable_token_mask()
        # The ~6k banned ids, indexed once: setting them costs a quarter of what the 262k-long boolean mask
        # does, and the processor runs for every sampled token, the first one included.
        self._banned_ids = self._banned.nonzero()[0]
        self.adapters = AdapterSlots(self._llm, self.info)
        import llama_cpp

        self._logits_processors = llama_cpp.LogitsProcessorList([self._ban_unprintable])
        vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        # What llama.cpp itself does with this vocabulary: whether tokenize(add_bos=True) puts BOS in front,
        # and which tokens end a reply, so the rendered prompt has BOS once and the stops match the model's.
        self.prompt_format: PromptFormat = self._prompt_format_for(
            {
                "bos": self._token_text(self._llm.token_bos()),
                "eos": self._token_text(self._llm.token_eos()),
            },
            adds_bos=bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
            end_of_turn=[self._token_text(int(t)) for t in self._eog_ids],
        )

    def _prompt_format_for(self, token_texts: dict[str, str], adds_bos: bool | None = None,
                           end_of_turn: Sequence[str] = ()) -> PromptFormat:
        """The model's prompt format, tried on a probe conversation; EngineError naming the file if it fails."""
        if self.config.prompt_format == "transcript":
            return TranscriptFormat()
        try:
            return format_for_metadata(self.info.metadata, token_texts, adds_bos=adds_bos, end_of_turn=end_of_turn)
        except PromptFormatError as exc:
            raise EngineError(
                f"{self.info.path}: the model's chat template (GGUF key tokenizer.chat_template) cannot be used: "
                f"{str(exc).removeprefix('chat template: ').rstrip('.')}. Use another model file, fix the "
                "template in it, or chat in the plain transcript format instead (--prompt-format transcript, or "
                'prompt_format = "transcript" in the config file).'
            ) from None

    # --- loading ---

    def _load(self) -> Llama:
        import llama_cpp

        n_ctx = self.config.n_ctx
        if self.info.context_length:
            n_ctx = min(n_ctx, self.info.context_length)
        try:
            llm = load_quietly(
                llama_cpp,
                model_path=str(self.info.path),
                n_ctx=n_ctx,
                n_batch=min(self.config.n_batch, n_ctx),
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads_batch,
            )
            # Room for a round's candidates as parallel sequences (inference/batched_generation.py).
            allow_parallel_sequences(llm)
            return llm
        except (ValueError, RuntimeError, OSError) as exc:
            detail = recent_llama_log() or str(exc)
            raise EngineError(f"llama.cpp could not load {self.info.path}: {detail}") from exc

    def _unprintable_token_mask(self) -> npt.NDArray[np.bool_]:
        """Tokens a reply must never contain: control tokens other than end-of-generation, and the
        placeholders of other modalities (``<start_of_image>``). Small base models do sample them
        now and then, and they would show up as raw markup in a candidate. ~0.1 s for 262k tokens."""
        import llama_cpp
        import numpy as np

        vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        mask = np.zeros(n_vocab, dtype=bool)
        eog: list[int] = []
        for token in range(n_vocab):
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                eog.append(token)
                continue
            attr = llama_cpp.llama_vocab_get_attr(vocab, token)
            if attr & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL:
                mask[token] = True
            elif attr & llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED and _MODALITY_MARKUP.fullmatch(
                self._token_text(token)
            ):
                mask[token] = True
        # The end-of-generation tokens come out of the same walk over the vocabulary: their texts are stops.
        self._eog_ids: tuple[int, ...] = tuple(eog)
        return mask

    def _ban_unprintable(self, input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]) -> npt.NDArray[np.single]:
        scores[self._banned_ids] = -float("inf")
        return scores

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._llm.detokenize([token], special=True).decode("utf-8", "replace")

    @property
    def banned_token_ids(self) -> npt.NDArray[np.intp]:
        """The token ids a reply never contains (control and other-modality tokens); every sampler bans them."""
        return self._banned_ids

    @property
    def llama(self) -> Llama:
        """The raw llama_cpp.Llama, for benchmarks and scoring."""
        return self._llm

    @property
    def n_ctx(self) -> int:
        # llama.cpp pads the context (to 256 here) and reports the padded size, but llama-cpp-python's
        # token buffer keeps the requested size; going past it fails with a numpy broadcast error.
        return min(self._llm.n_ctx(), self._llm.context_params.n_ctx)

    # --- ownership: one job at a time ---

    @contextmanager
    def session(self, owner: str) -> Iterator[ChatEngine]:
        """Hold the engine for a whole job, e.g. every candidate of one prompt, so that nothing changes the
        model between them: while held, ``load_adapter`` / ``activate_adapter`` from any other thread raise
        ``EngineBusy`` naming ``owner``; generation and scoring from other threads wait. Re-entrant in the
        owner's own thread (the outermost owner is the one named)."""
        with self._lock:
            outermost = self._owner is None
            if outermost:
                self._owner = owner
            try:
                yield self
            finally:
                if outermost:
                    self._owner = None

    @property
    def owner(self) -> str | None:
        """Who holds the engine for a job (``session``) right now; None when nobody does."""
        return self._owner

    @contextmanager
    def exclusive(self) -> Iterator[Llama]:
        """The raw ``llama_cpp.Llama`` for a sequence of low-level calls (scoring builds its own batches),
        under the engine's lock so that nothing else runs on the context meanwhile."""
        with self._lock:
            yield self._llm

    @contextmanager
    def _switching(self) -> Iterator[None]:
        """The lock for an adapter change: waits for a single call in progress, refuses a job's owner."""
        while not self._lock.acquire(timeout=0.05):
            owner = self._owner
            if owner is not None:
                raise EngineBusy(owner)
        try:
            yield
        finally:
            self._lock.release()

    # --- prompts ---

    def tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def fit_prompt(self, system: str, turns: Sequence[ChatTurn], max_tokens: int) -> FittedPrompt:
        """Render the conversation; drop the oldest turns (a user turn and its reply at a time) until
        the prompt plus ``max_tokens`` fits the context. The last user turn is never dropped."""
        turns = list(turns)
        dropped = 0
        while True:
            try:
                text = self.prompt_format.render(system, turns)
            except PromptFormatError as exc:
                raise EngineError(f"{self.identity.model_id}: this conversation cannot be rendered. {exc}") from None
            n_tokens = len(self.tokenize(text))
            if n_tokens + max_tokens <= self.n_ctx:
                return FittedPrompt(text=text, n_tokens=n_tokens, dropped_turns=dropped)
            if len(turns) <= 1:
                raise EngineError(
                    f"the prompt alone is {n_tokens} tokens; with {max_tokens} new tokens it does not fit "
                    f"the {self.n_ctx}-token context. Shorten it, lower max tokens, or raise --n-ctx."
                )
            # Drop the oldest exchange: its user turn and the assistant reply that followed it.
            cut = 2 if len(turns) > 2 and turns[1].role == "assistant" else 1
            turns = turns[cut:]
            dropped += cut

    # --- generation ---

    def generate(
        self,
        prompt_text: str,
        sampling: SamplingSettings,
        seed: int,
        on_token: TokenCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        stop: Sequence[str] | None = None,
    ) -> Generation:
        """Stream one candidate. ``on_token`` gets each piece of text; ``should_stop`` cancels;
        ``stop`` replaces the prompt format's stop strings (benchmarks use ``()`` for full-length replies)."""
        tokens = self.tokenize(prompt_text)
        with self._lock:
            start = time.perf_counter()
            first: float | None = None
            pieces: list[str] = []
            finish: str | None = None
            cancelled = False
            stream = self._llm.create_completion(
                tokens,
                max_tokens=sampling.max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                min_p=sampling.min_p,
                repeat_penalty=sampling.repeat_penalty,
                seed=seed,
                stop=list(self.prompt_format.stop if stop is None else stop),
                logits_processor=self._logits_processors,
                stream=True,
            )
            try:
                for chunk in stream:
                    choice = chunk["choices"][0]
                    piece = choice["text"]
                    if piece:
                        if first is None:
                            first = time.perf_counter() - start
                        pieces.append(piece)
                        if on_token:
                            on_token(piece)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                    if should_stop and should_stop():
                        cancelled = True
                        break
            finally:
                stream.close()
            duration = time.perf_counter() - start
            adapter = self.adapters.active
        text = "".join(pieces)
        n_generated = len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)) if text else 0
        return Generation(
            text=text,
            seed=seed,
            sampling=sampling,
            finish_reason="cancelled" if cancelled else finish,
            n_tokens=n_generated,
            duration_s=duration,
            ttft_s=first,
            cancelled=cancelled,
            adapter=adapter,
        )

    # --- adapters (LoRA in GGUF, swapped at run time without reloading the base) ---

    def load_adapter(self, name: str, path: Path) -> None:
        """Validate a GGUF LoRA against this model and load it (not yet active); a name already loaded from
        another file is replaced. EngineBusy while another thread holds the engine for a job."""
        with self._switching():
            path = Path(path).expanduser()
            if name in self.adapters and self.adapters.get(name).path != path:
                # The same name for another file (run 1 of another database): the loaded one would be served.
                self.adapters.unload(name)
            if name not in self.adapters:
                self.adapters.load(name, path)

    def activate_adapter(self, name: str | None) -> None:
        """Make ``name`` the active adapter (None: the base model). Resets the prompt cache, which was
        computed under the previous weights. EngineBusy while another thread holds the engine for a job
        (``session``): the candidates of one prompt are never split across two adapters."""
        with self._switching():
            self.adapters.activate(name)

    @property
    def active_adapter(self) -> str | None:
        return self.adapters.active

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            # Adapters first: llama.cpp frees them with the model, so later would be a double free.
            self.adapters.close()
            llm.close()
