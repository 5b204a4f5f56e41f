"""TRL's dataset maps fingerprint the tokenizer; the studio's tokenizers are fingerprinted by identity."""

from __future__ import annotations

import copy
from pathlib import Path

from datasets import Dataset
from datasets.fingerprint import Hasher
from datasets.utils._dill import dumps

from trainers.model_source import load_tokenizer_for
from trainers.tokenizer_fingerprint import tokenizer_identity


def test_the_default_models_tokenizer_hashes_by_identity_and_still_tells_settings_apart(default_model: Path):
    tokenizer = load_tokenizer_for(default_model)
    # Pickled whole, Gemma's tokenizer is its 33 MB tokenizer.json; by identity, a few hundred bytes.
    assert len(dumps(tokenizer)) < 4096
    assert str(len(tokenizer)) in tokenizer_identity(tokenizer)
    assert Hasher.hash(tokenizer) == Hasher.hash(load_tokenizer_for(default_model))
    left = copy.copy(tokenizer)
    left.padding_side = "left" if tokenizer.padding_side == "right" else "right"
    assert Hasher.hash(left) != Hasher.hash(tokenizer)


def test_a_map_with_the_tokenizer_in_its_arguments_gets_a_fingerprint_that_follows_it(default_model: Path):
    tokenizer = load_tokenizer_for(default_model)
    data = Dataset.from_list([{"text": "Hello there."}, {"text": "Name a river."}])

    def tokenize(row: dict, processing_class) -> dict:  # noqa: ANN001  (TRL's own map signature)
        return {"ids": processing_class(row["text"])["input_ids"]}

    first = data.map(tokenize, fn_kwargs={"processing_class": tokenizer})
    again = data.map(tokenize, fn_kwargs={"processing_class": tokenizer})
    assert first["ids"] == [tokenizer("Hello there.")["input_ids"], tokenizer("Name a river.")["input_ids"]]
    assert first._fingerprint == again._fingerprint
    other = copy.copy(tokenizer)
    other.truncation_side = "left" if tokenizer.truncation_side == "right" else "right"
    assert data.map(tokenize, fn_kwargs={"processing_class": other})._fingerprint != first._fingerprint
