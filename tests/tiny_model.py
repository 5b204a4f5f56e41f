"""A tiny random causal LM and a tiny BPE tokenizer, built locally in seconds (no download).

``build_tiny_model(dir)`` writes an HF model directory (config, safetensors, tokenizer) that the
trainer accepts as ``--train-model``. With the real 262k vocabulary even a tiny model has 17M
parameters and takes seconds per step; this one has a few hundred tokens and ~100k parameters.
"""

from __future__ import annotations

from pathlib import Path

import trainers  # noqa: F401  (HF offline env before transformers)

SEPARABLE_PAIRS = [
    ("What colour is the sky?", "The sky is blue on a clear day.", "Potato potato potato."),
    ("Name a fruit.", "An apple is a fruit.", "Potato potato potato."),
    ("How many legs does a cat have?", "A cat has four legs.", "Potato potato potato."),
    ("Say hello.", "Hello, nice to meet you.", "Potato potato potato."),
    ("What is two plus two?", "Two plus two is four.", "Potato potato potato."),
    ("Where do fish live?", "Fish live in water.", "Potato potato potato."),
]

CORPUS = [
    f"User: {p}\nAssistant: {c}\nUser: {p}\nAssistant: {r}" for p, c, r in SEPARABLE_PAIRS
] + ["You are a helpful assistant.", "Potato is a vegetable. The sky, the fish, the cat and the apple."]


def build_tiny_tokenizer(vocab_size: int = 320):  # noqa: ANN201
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers import trainers as tok_trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = tok_trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def build_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Write a random 2-layer Llama (hidden 64) and its tokenizer into ``directory``; return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def rendered(prompt: str) -> str:
    """The transcript-format prompt the engine would have stored for a one-turn chat."""
    return f"User: {prompt}\nAssistant:"


def judge(store, session_id: int, prompt: str, first: str, second: str, verdict: str = "a",  # noqa: ANN001
          edited: str | None = None) -> int:
    """Store a prompt with two generated candidates (model spacing: a leading space) and a verdict."""
    prompt_id = store.add_prompt(session_id, prompt, [])
    ids = [
        store.add_candidate(prompt_id, slot, " " + text, rendered(prompt), "tiny", "0" * 64, {"temperature": 0.8},
                            seed=slot)
        for slot, text in enumerate((first, second))
    ]
    if verdict == "a":
        return store.record_judgement(prompt_id, "a", chosen_candidate_id=ids[0], rejected_candidate_id=ids[1])
    if verdict == "b":
        return store.record_judgement(prompt_id, "b", chosen_candidate_id=ids[1], rejected_candidate_id=ids[0])
    if verdict == "edited":
        return store.record_judgement(prompt_id, "edited", edited_text=edited)
    return store.record_judgement(prompt_id, verdict)


def fill_separable(store, repeat: int = 1) -> int:  # noqa: ANN001
    """A session holding SEPARABLE_PAIRS judged 'a' (chosen = the sensible reply); return its id."""
    session_id = store.create_session("")
    for _ in range(repeat):
        for prompt, chosen, rejected in SEPARABLE_PAIRS:
            judge(store, session_id, prompt, chosen, rejected)
    return session_id
