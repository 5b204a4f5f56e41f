"""The real default model (Gemma 3 270M GGUF): converted once, then two DPO steps on it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tiny_model import SEPARABLE_PAIRS

from store.studio_store import Store
from trainers.model_source import CONVERSION_MARKER, resolve_model_source
from trainers.run.lifecycle import prepare_run
from trainers.run.process import execute_run
from trainers.run_config import RunConfig

DEFAULT_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


@pytest.mark.slow
def test_default_model_trains_two_steps(default_model: Path, session_home: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The converted weights go to the session-wide cache, so a whole test run converts at most once.
    monkeypatch.setenv("PREFSTUDIO_HOME", str(session_home))
    with Store.open(tmp_path / "studio.db") as store:
        session = store.create_session("You are a concise, friendly assistant.")
        for prompt, chosen, rejected in SEPARABLE_PAIRS[:4]:
            prompt_id = store.add_prompt(session, prompt, [])
            rendered = f"You are a concise, friendly assistant.\n\nUser: {prompt}\nAssistant:"
            ids = [store.add_candidate(prompt_id, slot, " " + text, rendered, default_model.name, DEFAULT_SHA256,
                                       {}, seed=slot) for slot, text in enumerate((chosen, rejected))]
            store.record_judgement(prompt_id, "a", chosen_candidate_id=ids[0], rejected_candidate_id=ids[1])
        config = RunConfig(max_steps=2, max_length=128, heldout_fraction=0.0)
        prepared = prepare_run(store, config, model_path=default_model, runs_root=tmp_path / "runs")
        outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
        assert outcome.status == "done", outcome.message

        run = store.get_run(prepared.run_id)
        metrics = store.run_metrics(prepared.run_id)
        assert [m["step"] for m in metrics] == [1, 2]
        assert metrics[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
        assert run.model_id == default_model.name
        assert run.summary["model"]["kind"] == "gguf" and run.summary["model"]["sha256"] == DEFAULT_SHA256
        assert (prepared.output_dir / "adapter_model.safetensors").stat().st_size > 1_000_000

    converted = session_home / "cache" / "models" / f"hf-{DEFAULT_SHA256[:16]}"
    assert (converted / CONVERSION_MARKER).exists() and (converted / "model.safetensors").exists()
    assert not list(converted.parent.glob(".hf-*partial"))
    started = time.monotonic()
    again = resolve_model_source(default_model, sha256=DEFAULT_SHA256)
    assert again.model_dir == converted and time.monotonic() - started < 1.0  # cached: no second conversion
