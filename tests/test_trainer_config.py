"""RunConfig: defaults, validation messages, JSON round trip, and the generated kebab-case flags."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
from typer.testing import CliRunner

from trainers.run.cli import app, config_from_flags
from trainers.run_config import RunConfig, RunConfigError, field_defaults


def test_defaults_suit_a_small_cpu() -> None:
    config = RunConfig()
    assert (config.loss_type, config.beta, config.batch_size) == ("sigmoid", 0.1, 2)
    assert config.max_length is None  # auto: chosen from the data when the run is prepared (trainers.run.plan)
    assert config.learning_rate > 1e-6  # TRL's 1e-6 barely moves a LoRA adapter
    assert config.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert config.device == "auto" and config.dtype == "auto" and not config.four_bit
    assert all(f.metadata.get("help") for f in fields(RunConfig))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"loss_type": "nope"}, "--loss-type must be one of sigmoid"),
        ({"beta": 0}, "--beta must be greater than 0"),
        ({"learning_rate": 2.0}, "--learning-rate must be between 0 and 1"),
        ({"epochs": 0}, "--epochs must be 1 or more"),
        ({"max_length": 8}, "--max-length must be at least 16"),
        ({"heldout_fraction": 0.6}, "--heldout-fraction must be in"),
        ({"target_modules": " , "}, "--target-modules must name at least one module"),
        ({"target_modules": "q_proj,lm_head"}, "cannot include lm_head"),
        ({"device": "tpu"}, "--device must be one of auto, cpu, cuda"),
        ({"four_bit": True, "device": "cpu"}, "--four-bit needs a CUDA GPU"),
        ({"session_id": 1, "dataset": "x.jsonl"}, "cannot be combined with --session-id"),
    ],
)
def test_validation_names_the_flag(changes: dict, message: str) -> None:
    with pytest.raises(RunConfigError, match=message):
        RunConfig(**changes)


def test_json_round_trip_and_coercion() -> None:
    config = RunConfig(target_modules="q_proj, v_proj", dtype="bfloat16", loss_type="IPO", epochs=3)
    assert config.target_modules == ["q_proj", "v_proj"] and config.dtype == "bf16" and config.loss_type == "ipo"
    again = RunConfig.from_json(config.to_json())
    assert again == config
    assert json.loads(config.to_json())["epochs"] == 3
    with pytest.raises(RunConfigError, match="unknown run setting"):
        RunConfig.from_dict({"epochs": 1, "warp_speed": 9})
    assert field_defaults()["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_every_field_is_a_kebab_case_flag() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for f in fields(RunConfig):
        assert "--" + f.name.replace("_", "-") in result.output
    assert "--run-id" in result.output and "--resume" in result.output and "--session" in result.output


def test_flags_become_a_config() -> None:
    config = config_from_flags({"epochs": 4, "lora_r": 8, "target_modules": "q_proj", "beta": None})
    assert (config.epochs, config.lora_r, config.target_modules, config.beta) == (4, 8, ["q_proj"], 0.1)


def test_cli_rejects_bad_flags_and_flags_on_a_prepared_run(tmp_path, studio_home) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["--db", str(tmp_path / "s.db"), "--beta", "-1", "--train-model", str(tmp_path)])
    assert result.exit_code == 1 and "error: --beta must be greater than 0" in result.output
    result = runner.invoke(app, ["--db", str(tmp_path / "s.db"), "--run-id", "1", "--epochs", "3"])
    assert result.exit_code == 1 and "--epochs cannot change prepared run 1" in result.output
    result = runner.invoke(app, ["--db", str(tmp_path / "s.db"), "--resume"])
    assert result.exit_code == 1 and "--resume needs --run-id" in result.output


def test_dtype_and_device_choice() -> None:
    from trainers.run.device import cpu_has_native_bf16, resolve_device, resolve_dtype

    cpu = RunConfig(device="cpu")
    assert resolve_device(cpu) == "cpu"
    assert resolve_dtype(cpu, "cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_dtype(RunConfig(dtype="fp32"), "cpu") == "fp32"
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(RunConfigError, match="no CUDA GPU is visible"):
            resolve_device(RunConfig(device="cuda"))
        with pytest.raises(RunConfigError, match="--four-bit needs a CUDA GPU"):
            resolve_device(RunConfig(four_bit=True))


def test_allocator_tuning_applies_on_linux() -> None:
    import sys

    from trainers.run.allocator import keep_freed_memory

    assert keep_freed_memory() is sys.platform.startswith("linux")


def test_prepare_only_records_a_queued_run_for_accelerate(tmp_path):
    from conftest import run_cli
    from tiny_model import build_tiny_model, fill_separable

    from store.studio_store import Store

    db = tmp_path / "s.db"
    with Store.open(db) as store:
        fill_separable(store)
    tiny = build_tiny_model(tmp_path / "tiny")
    proc = run_cli("--db", str(db), "train", "--prepare-only", "--train-model", str(tiny), "--heldout-fraction", "0",
                   home=tmp_path / "home", check=True)
    assert "accelerate launch -m trainers.train_cli" in proc.stdout and "--run-id 1" in proc.stdout
    with Store.open(db) as store:
        run = store.get_run(1)
        assert run.status == "queued" and len(run.pair_ids) == 6
        assert store.run_metrics(1) == []
