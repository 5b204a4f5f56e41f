"""A llama.cpp context that can hold several sequences: the candidates of one prompt decoded side by side.

llama-cpp-python's ``Llama`` builds its context with llama.cpp's defaults, one sequence (``n_seq_max`` 1) and
a KV cache split per sequence (``kv_unified`` false); a batch naming sequence 1 is then refused
(``llama_decode`` returns -1), and ``Llama`` has no option for either. So the engine swaps the context once,
right after loading, for one with the same parameters plus room for ``PARALLEL_SEQUENCES`` sequences in one
unified cache: every sequence may use the whole ``n_ctx``, and the prompt's cells are shared by all the
candidates (``llama_memory_seq_cp`` adds sequence ids to cells, it copies no data). llama-cpp-python's own
calls keep using sequence 0, as before. Measured here: ~20 ms at load and ~6 MB for 8 sequences, and the same
tokens from ``create_completion`` for a given seed before and after the swap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llama_cpp import Llama

# The studio asks for 1–4 candidates; 8 leaves room (benchmarks, a larger N) at ~0.5 MB a sequence.
PARALLEL_SEQUENCES = 8


def allow_parallel_sequences(llm: Llama, n_seq_max: int = PARALLEL_SEQUENCES) -> None:
    """Replace ``llm``'s context by one with the same parameters, ``n_seq_max`` sequences and a unified KV
    cache. Call it before anything is evaluated or any adapter is applied (both belong to the context)."""
    import llama_cpp
    from llama_cpp import _internals as internals

    params = llm.context_params
    if params.n_seq_max >= n_seq_max and params.kv_unified:
        return
    params.n_seq_max = n_seq_max
    params.kv_unified = True
    # The new context registers its own release with the model (freed before the model, as the old one was);
    # the old one is freed now, and closing it again when the Llama closes does nothing.
    replacement = internals.LlamaContext(model=llm._model, params=params, verbose=False)
    previous, llm._ctx = llm._ctx, replacement
    previous.close()
    llm.reset()
    if llama_cpp.llama_n_seq_max(llm.ctx) < n_seq_max:  # pragma: no cover - a llama.cpp that ignores the field
        raise RuntimeError(f"llama.cpp kept {llama_cpp.llama_n_seq_max(llm.ctx)} sequences for {n_seq_max} asked")


def max_parallel_sequences(llm: Llama) -> int:
    """How many sequences the context can decode side by side (1 for a context ``allow_parallel_sequences``
    did not prepare, and for recurrent or hybrid models, whose per-sequence states are not shared cells)."""
    import llama_cpp

    if llama_cpp.llama_model_is_recurrent(llm.model) or llama_cpp.llama_model_is_hybrid(llm.model):
        return 1
    if not llm.context_params.kv_unified:  # split caches: each sequence would get n_ctx / n_seq_max cells
        return 1
    return int(llama_cpp.llama_n_seq_max(llm.ctx))
