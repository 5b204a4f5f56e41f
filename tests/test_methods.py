"""The training-method seam: a run names its method, the run process looks it up in the registry, and a
method registered in one line trains through the same process path as DPO."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from tiny_model import fill_separable
from typer.testing import CliRunner

from store.studio_store import Store
from trainers.methods import METHODS, training_method
from trainers.methods.dpo import DPOMethod
from trainers.run.cli import app as train_app
from trainers.run.lifecycle import prepare_run
from trainers.run.process import execute_run
from trainers.run_config import RunConfig, RunConfigError

FAST = {"learning_rate": 5e-3, "lora_r": 8, "batch_size": 2, "dtype": "fp32", "heldout_fraction": 0.0}


class HingeDPO(DPOMethod):
    """A throwaway method: DPO's builder with the hinge loss, whatever the run config's loss_type says."""

    def trainer_args(self, config, work_dir, device, dtype, has_eval, max_length):  # noqa: ANN001, ANN201
        args = super().trainer_args(config, work_dir, device, dtype, has_eval, max_length)
        args.loss_type = ["hinge"]
        return args


METHOD = HingeDPO()  # what the registry line below points at: this module


@pytest.fixture
def store(tmp_path: Path, studio_home: Path):
    with Store.open(tmp_path / "studio.db") as opened:
        yield opened


@pytest.fixture
def hinge_registered(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(METHODS, "hinge-test", __name__)  # the one registry line a new method adds
    return "hinge-test"


def test_a_registered_method_trains_through_the_run_process(store: Store, tiny_model_dir: Path, tmp_path: Path,
                                                           hinge_registered: str) -> None:
    fill_separable(store)
    config = RunConfig(**FAST, method=hinge_registered, max_steps=2)
    prepared = prepare_run(store, config, model_path=tiny_model_dir, runs_root=tmp_path / "runs")
    assert store.get_run(prepared.run_id).config["method"] == "hinge-test"  # stored with the run

    outcome = execute_run(store, prepared.run_id, log=lambda _line: None)

    assert outcome.status == "done", outcome.message
    metrics = store.run_metrics(prepared.run_id)
    # Step 1 compares the policy with itself (margin 0): hinge gives max(0, 1 - 0) = 1, DPO's sigmoid ln 2.
    assert config.loss_type == "sigmoid"
    assert metrics[0]["loss"] == pytest.approx(1.0, abs=1e-4)
    recorded = json.loads((Path(outcome.output_dir) / "run_config.json").read_text())
    assert recorded["config"]["method"] == "hinge-test"


def test_the_default_method_is_dpo_and_old_runs_without_one_are_dpo() -> None:
    assert RunConfig().method == "dpo"
    assert RunConfig.from_dict({"epochs": 1}).method == "dpo"  # a run stored before the field existed
    assert isinstance(training_method("dpo"), DPOMethod)


def test_an_unknown_method_is_refused_naming_the_known_ones() -> None:
    known = ", ".join(sorted(METHODS))  # dpo, kto, sft, … (each method's module adds its name)
    assert {"dpo", "sft", "kto"} <= set(METHODS)
    with pytest.raises(RunConfigError, match=rf"--method must be one of the training methods: {known} \(got 'nope'\)"):
        RunConfig(method="nope")
    with pytest.raises(ValueError, match=f"known methods: {known}"):
        training_method("nope")


def test_a_stored_run_whose_method_is_gone_fails_with_the_known_methods(store: Store, tiny_model_dir: Path,
                                                                         tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fill_separable(store)
    monkeypatch.setitem(METHODS, "gone", __name__)
    prepared = prepare_run(store, RunConfig(**FAST, method="gone"), model_path=tiny_model_dir,
                           runs_root=tmp_path / "runs")
    monkeypatch.delitem(METHODS, "gone")

    outcome = execute_run(store, prepared.run_id, log=lambda _line: None)

    assert outcome.status == "failed"
    assert f"training methods: {', '.join(sorted(METHODS))}" in outcome.message and "'gone'" in outcome.message
    assert store.get_run(prepared.run_id).status == "failed"


def test_dry_run_names_the_method(store: Store, tiny_model_dir: Path) -> None:
    fill_separable(store)
    result = CliRunner().invoke(train_app, ["--db", str(store.path), "--train-model", str(tiny_model_dir),
                                            "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "method: dpo" in result.output.splitlines()
    assert store.list_runs() == []


def test_prefstudio_train_with_an_unknown_method_names_the_known_ones(studio_home: Path) -> None:
    proc = run_cli("train", "--method", "nope", home=studio_home)
    assert proc.returncode == 1, proc.stderr
    assert f"error: --method must be one of the training methods: {', '.join(sorted(METHODS))} (got 'nope')" \
        in proc.stderr
    assert "Traceback" not in proc.stderr
