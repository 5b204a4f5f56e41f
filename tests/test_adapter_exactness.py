"""Proof that the exported adapter is the trained adapter: llama.cpp (quantised GGUF base + GGUF LoRA) against
transformers + PEFT (the same GGUF dequantised), on both bundled models and an adapter trained by the studio's own
DPO trainer: Gemma 3 270M base (``gemma3``, Q5_0/Q8_0, transcript prompts) and SmolLM2-135M-Instruct (``llama``,
Q4_1, ChatML prompts, q/k rows stored permuted in the GGUF, every linear projection adapted).

llama.cpp quantises activations inside its matmuls, so the two engines differ slightly even without an
adapter; what must agree is the *change* the adapter causes, and greedy agreement must not get worse.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import BuiltOnce, prefstudio_home
from test_adapter_export import all_logits
from tiny_model import SEPARABLE_PAIRS

from studio.inference.adapter_checks import validate_adapter
from studio.inference.adapters import AdapterSlots
from studio.inference.engine import ChatEngine
from trainers.gguf_adapter import AttentionHeads, export_gguf_adapter
from trainers.prompt_format import ChatTurn

SYSTEM = "You are a concise, friendly assistant."
TEXT = (
    "The old lighthouse keeper climbed the spiral stairs every evening at dusk. He trimmed the wick, polished "
    "the great lens, and watched the ships pass far out on the grey water. One night a storm came in from the "
    "west, and the wind howled around the tower until morning. By dawn the sea was calm again, and the keeper "
    "wrote a long entry in his logbook about the night."
)
N_TOKENS = 64
TOP_K = 20
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL_LINEAR = [*ATTENTION, "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Trial:
    """One bundled model's exactness run: how it is trained (a visible effect, few steps)."""

    name: str
    max_steps: int
    learning_rate: float
    target_modules: list[str]


# Gemma: six steps at lr 1e-3 on q/k/v/o move the logits (std ~1.2 over the top tokens) well above the engines'
# noise (~0.2); at the trainer's default learning rate two steps would not. SmolLM2 (half the size): four steps
# on every linear projection, so the llama name map of gate/up/down and the permuted q/k rows are both exercised.
# (Gemma's run is conftest's trained_dpo_run, trained with these settings; two of its six pairs are held out.)
TRIALS = {"gemma3-270m": Trial("gemma3-270m", 6, 1e-3, ATTENTION), "smollm2": Trial("smollm2", 6, 2e-3, ALL_LINEAR)}


@dataclass(frozen=True)
class Served:
    trial: Trial
    model: Path
    engine: ChatEngine


@pytest.fixture(scope="module", params=sorted(TRIALS))
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    """The model llama.cpp serves: the session's Gemma engine, or a SmolLM2 engine for this module."""
    trial = TRIALS[request.param]
    if trial.name == "gemma3-270m":
        yield Served(trial, request.getfixturevalue("default_model"), request.getfixturevalue("engine"))
        return
    from studio.inference.engine import EngineConfig

    model = request.getfixturevalue("smollm2_model")
    engine = ChatEngine(EngineConfig(model_path=model, n_ctx=1024))
    try:
        yield Served(trial, model, engine)
    finally:
        engine.close()


@pytest.fixture(scope="module")
def trained_adapter(served: Served, session_home: Path, tmp_path_factory, built_once: BuiltOnce,
                    request: pytest.FixtureRequest) -> Path:
    """A few real DPO steps (lr 1e-3, r 16, alpha 32) on the served model, from candidates stored with the
    prompt the engine renders (the transcript for Gemma, ChatML for SmolLM2), as the chat screen stores them.
    Trained once per model and test run: for Gemma the session's DPO run (conftest ``trained_dpo_run``, the
    Gemma trial's settings), and test_run_chain imports this fixture and chains from the same run (on a copy of
    its folder)."""
    if served.trial.name == "gemma3-270m":
        from store.studio_store import Store

        folder, run_id = request.getfixturevalue("trained_dpo_run")
        with Store.open(folder / "studio.db") as store:
            return Path(store.get_run(run_id).output_dir)
    return built_once.get(f"exactness-adapter-{served.trial.name}",
                          lambda: _train_adapter(served, session_home, tmp_path_factory))


def _train_adapter(served: Served, session_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from store.studio_store import Store
    from trainers.run.lifecycle import prepare_run
    from trainers.run.process import execute_run
    from trainers.run_config import RunConfig

    engine = served.engine
    work = tmp_path_factory.mktemp(f"exactness-{served.trial.name}")
    with prefstudio_home(session_home):  # shares the converted weights with other tests
        with Store.open(work / "studio.db") as store:
            session = store.create_session(SYSTEM)
            for prompt, chosen, rejected in SEPARABLE_PAIRS:
                prompt_id = store.add_prompt(session, prompt, [])
                rendered = engine.fit_prompt(SYSTEM, [ChatTurn("user", prompt)], 64).text
                ids = [store.add_candidate(prompt_id, slot, engine.prompt_format.as_completion(text), rendered,
                                           engine.identity.model_id, engine.identity.sha256, {}, seed=slot)
                       for slot, text in enumerate((chosen, rejected))]
                store.record_judgement(prompt_id, "a", chosen_candidate_id=ids[0], rejected_candidate_id=ids[1])
            config = RunConfig(max_steps=served.trial.max_steps, max_length=128, heldout_fraction=0.0,
                               learning_rate=served.trial.learning_rate,
                               target_modules=served.trial.target_modules)
            prepared = prepare_run(store, config, model_path=served.model, runs_root=work / "runs")
            outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
            assert outcome.status == "done", outcome.message
            return prepared.output_dir


def _transformers_logits(model_dir: Path, adapter_dir: Path, tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(base, adapted) logits from transformers + PEFT on the dequantised GGUF weights."""
    import torch
    from peft import PeftModel

    from trainers.model_source import load_model

    model = PeftModel.from_pretrained(load_model(model_dir, device="cpu"), str(adapter_dir))
    model.eval()
    ids = torch.tensor([tokens])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits[0].float().numpy()
        with model.disable_adapter():
            base = model(input_ids=ids).logits[0].float().numpy()
    return base, adapted


@pytest.mark.slow
def test_llama_cpp_adapter_matches_transformers_peft(served, trained_adapter, session_home, tmp_path, monkeypatch):
    from trainers.model_source import resolve_model_source

    engine = served.engine
    gguf_path = export_gguf_adapter(trained_adapter, tmp_path / "tuned.gguf", engine.info.architecture,
                                    engine.info.n_layers,
                                    heads=AttentionHeads.from_metadata(engine.info.metadata, engine.info.architecture))
    info = validate_adapter(gguf_path, engine.info)
    n_modules = len(served.trial.target_modules)
    assert info.ranks == (16,) and info.alpha == 32.0 and len(info.adapted) == n_modules * engine.info.n_layers

    tokens = engine.tokenize(TEXT)[:N_TOKENS]
    assert len(tokens) == N_TOKENS
    slots = AdapterSlots(engine.llama, engine.info)
    try:
        slots.load("tuned", gguf_path)
        cpp_base = all_logits(engine.llama, tokens)
        slots.activate("tuned")
        switch_on = slots.last_switch_s
        cpp_tuned = all_logits(engine.llama, tokens)
        slots.activate(None)
        switch_off = slots.last_switch_s
        assert np.array_equal(all_logits(engine.llama, tokens), cpp_base)
        load_s = slots.last_load_s
    finally:
        slots.close()

    monkeypatch.setenv("PREFSTUDIO_HOME", str(session_home))
    model_dir = resolve_model_source(served.model, sha256=engine.identity.sha256).model_dir
    hf_base, hf_tuned = _transformers_logits(model_dir, trained_adapter, tokens)

    # (a) The change the adapter causes, over each position's top tokens of the base, pooled.
    top = np.argsort(-cpp_base, axis=1)[:, :TOP_K]
    cpp_delta = np.take_along_axis(cpp_tuned - cpp_base, top, axis=1).ravel()
    hf_delta = np.take_along_axis(hf_tuned - hf_base, top, axis=1).ravel()
    correlation = float(np.corrcoef(cpp_delta, hf_delta)[0, 1])
    engine_noise = float(np.take_along_axis(cpp_base - hf_base, top, axis=1).std())
    # (b) Greedy next-token agreement between the engines, without and with the adapter.
    agree_base = float((cpp_base.argmax(1) == hf_base.argmax(1)).mean())
    agree_tuned = float((cpp_tuned.argmax(1) == hf_tuned.argmax(1)).mean())
    print(
        f"\n{served.trial.name}: adapter exactness over {N_TOKENS} tokens (top-{TOP_K} of the base per position): "
        f"Pearson r of the logit change = {correlation:.4f}; change std {hf_delta.std():.3f} vs engine noise "
        f"{engine_noise:.3f}; greedy agreement base {agree_base:.1%}, tuned {agree_tuned:.1%}; "
        f"load {load_s * 1000:.1f} ms, switch on {switch_on * 1e6:.0f} µs, off {switch_off * 1e6:.0f} µs"
    )
    assert hf_delta.std() > 3 * engine_noise, "the adapter's effect must stand clear of the engines' difference"
    assert correlation >= 0.95
    assert agree_tuned >= agree_base - 0.02
