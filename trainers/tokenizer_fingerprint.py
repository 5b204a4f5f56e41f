"""A tokenizer's dataset fingerprint taken from what identifies it, not from all of its vocabulary.

``datasets`` fingerprints every ``Dataset.map`` by hashing the function's arguments, and TRL's trainers pass the
tokenizer there (``fn_kwargs={"processing_class": ...}``). Hashing a tokenizer pickles it whole: for Gemma's
262k-token vocabulary that is the 33 MB tokenizer.json as JSON, 2.8 s per map on 2 cores, two maps (train and
held-out) in every DPO run; about half of the time from the key press to a small run's first step. The studio's
datasets live in memory (no cache files), so a fingerprint is only an identity: the tokenizer's source, size,
special tokens, template and sides say as much as its pickle.

The hook is ``datasets``' pickler dispatch table (``datasets.utils._dill``, not public API). That table is the
pickler's own copy and ``datasets`` pickles with it only to hash; a map with ``num_proc`` > 1 sends its arguments
to the workers with ``multiprocess``' dill, which still gets the whole tokenizer. Where the table is missing the
tokenizer is hashed the slow way, which is still correct.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> tuple[str, ...]:
    """What a tokenizer's fingerprint is made of: everything a map's output could depend on short of the vocabulary
    itself, which ``name_or_path`` (the converted model folder, named by the GGUF's sha256) and ``len`` stand for."""
    return (
        f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
        str(tokenizer.name_or_path),
        str(len(tokenizer)),
        repr(sorted(tokenizer.special_tokens_map.items())),
        str(tokenizer.chat_template),
        tokenizer.padding_side,
        tokenizer.truncation_side,
        str(tokenizer.model_max_length),
        str(getattr(tokenizer, "add_bos_token", None)),
    )


def _identity_of(identity: tuple[str, ...]) -> tuple[str, ...]:
    return identity


def _save_by_identity(pickler, tokenizer) -> None:  # noqa: ANN001  (datasets' dill pickler calls this)
    pickler.save_reduce(_identity_of, (tokenizer_identity(tokenizer),), obj=tokenizer)


def fingerprint_by_identity(tokenizer: PreTrainedTokenizerBase) -> None:
    """Make ``datasets`` hash tokenizers of this one's class by :func:`tokenizer_identity` (nothing where this
    ``datasets`` has no such table: hashing stays slow and correct)."""
    try:
        from datasets.utils._dill import Pickler
    except ImportError:
        return
    dispatch = getattr(Pickler, "dispatch", None)
    if isinstance(dispatch, dict):
        dispatch[type(tokenizer)] = _save_by_identity
