"""Runs that build on runs (``--init-from RUN``): a chained run trains on the base with the earlier adapter merged
in, publishes one adapter that is the whole chain's effect on the base (exact in transformers + PEFT, and in
llama.cpp through the GGUF export), refuses an earlier run it cannot start from before anything is written, and
shows its chain in ``prefstudio runs``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_run_folder, prefstudio_home, run_cli
from test_adapter_exactness import (  # noqa: F401  (module fixtures, reused: the trained parent run)
    N_TOKENS,
    TEXT,
    TOP_K,
    served,
    trained_adapter,
)
from test_adapter_export import all_logits
from tiny_model import SEPARABLE_PAIRS, build_tiny_model, fill_separable, rendered

from store.studio_store import Store
from trainers.adapter_sum import sum_adapters
from trainers.chain import LINK_ADAPTER_DIR, ChainError, check_init_from
from trainers.run.lifecycle import prepare_run
from trainers.run.process import execute_run
from trainers.run_config import RunConfig, RunConfigError

FAST = {"learning_rate": 5e-3, "batch_size": 2, "heldout_fraction": 0.0, "dtype": "fp32", "save_steps": 50}
FIRST = {**FAST, "max_steps": 6, "lora_r": 8}
# The second link adapts other modules at another rank and scale (alpha / r = 2): the sum pads and scales.
SECOND = {**FAST, "max_steps": 3, "lora_r": 4, "lora_alpha": 8.0,
          "target_modules": ["q_proj", "v_proj", "gate_proj", "down_proj"]}
THIRD = {**FAST, "max_steps": 2, "lora_r": 2}


@dataclass(frozen=True)
class Chain:
    db: Path
    home: Path
    tiny: Path
    merged: Path  # the tiny base with run 1's adapter merged in, saved as a model directory
    first: int  # run 1: on the base
    second: int  # run 2: --init-from run 1
    control: int  # run 2's settings, no --init-from, trained on `merged`
    third: int  # run 4: --init-from run 2 (a chain of three)


def _train(store: Store, config: RunConfig, model: Path, runs: Path) -> int:
    prepared = prepare_run(store, config, model_path=model, runs_root=runs)
    outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
    assert outcome.status == "done", outcome.message
    return prepared.run_id


def _logits(model, tokens: list[int]) -> np.ndarray:  # noqa: ANN001 - a transformers or PEFT model
    import torch

    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokens])).logits[0].float().numpy()


def _tokens(model_dir: Path) -> list[int]:
    from trainers.model_source import load_tokenizer

    prompt, chosen, _ = SEPARABLE_PAIRS[0]
    return load_tokenizer(model_dir)(f"User: {prompt}\nAssistant: {chosen}")["input_ids"]


@pytest.fixture(scope="module")
def chain(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """Four tiny DPO runs on the separable pairs: 1 on the base, 2 from 1, a control of 2 on 1's merged model,
    and 4 from 2."""
    from trainers.model_source import load_model, load_tokenizer

    work = tmp_path_factory.mktemp("chain")
    home = work / "home"
    with prefstudio_home(home), Store.open(work / "studio.db") as store:
        fill_separable(store)
        runs = work / "runs"
        first = _train(store, RunConfig(**FIRST), tiny_model_dir, runs)
        second = _train(store, RunConfig(**SECOND, init_from=first), tiny_model_dir, runs)
        merged = work / "merged-model"
        load_model(tiny_model_dir, device="cpu",
                   merge_adapter=Path(store.get_run(first).output_dir)).save_pretrained(merged)
        load_tokenizer(tiny_model_dir).save_pretrained(merged)
        control = _train(store, RunConfig(**SECOND), merged, runs)
        third = _train(store, RunConfig(**THIRD, init_from=second), tiny_model_dir, runs)
        yield Chain(work / "studio.db", home, tiny_model_dir, merged, first, second, control, third)


def _run_dir(chain: Chain, run_id: int) -> Path:
    with Store.open(chain.db) as store:
        return Path(store.get_run(run_id).output_dir)


def _summary(chain: Chain, run_id: int) -> dict:
    with Store.open(chain.db) as store:
        return store.get_run(run_id).summary or {}


def test_merged_base_is_the_earlier_runs_tuned_model(chain: Chain) -> None:
    """What the chained run loads (the base with run 1's adapter merged) computes what run 1's tuned model does."""
    from peft import PeftModel

    from trainers.model_source import load_model

    tokens = _tokens(chain.tiny)
    base = _logits(load_model(chain.tiny, device="cpu"), tokens)
    tuned = _logits(PeftModel.from_pretrained(load_model(chain.tiny, device="cpu"),
                                              str(_run_dir(chain, chain.first))), tokens)
    merged = _logits(load_model(chain.tiny, device="cpu", merge_adapter=_run_dir(chain, chain.first)), tokens)
    assert np.abs(tuned - base).max() > 0.05, "run 1 must have moved the model for this to show anything"
    np.testing.assert_allclose(merged, tuned, atol=1e-5)


def test_chained_run_starts_from_the_earlier_adapters_weights(chain: Chain) -> None:
    """Run 2 (--init-from 1) trains exactly as a run on run 1's merged model does: same first-step log-probs (the
    policy before its first update), same LoRA learnt; and not as a run on the base would (run 1's first step)."""
    from trainers.gguf_adapter import read_lora_modules

    second, control, first = (_summary(chain, r)["first"] for r in (chain.second, chain.control, chain.first))
    for key in ("logps/chosen", "logps/rejected"):
        assert second[key] == pytest.approx(control[key], rel=1e-5, abs=1e-5), key
    assert abs(second["logps/chosen"] - first["logps/chosen"]) > 0.1  # the base's log-probs are not where it began
    assert second["loss"] == pytest.approx(0.6931, abs=1e-3)  # the reference is run 1's model: no gap at step 1

    learnt = {m.module: m for m in read_lora_modules(_run_dir(chain, chain.second) / LINK_ADAPTER_DIR)}
    expected = {m.module: m for m in read_lora_modules(_run_dir(chain, chain.control))}
    assert set(learnt) == set(expected)
    for name, module in expected.items():
        np.testing.assert_allclose(learnt[name].lora_b, module.lora_b, atol=1e-6)
        np.testing.assert_allclose(learnt[name].lora_a, module.lora_a, atol=1e-6)


def test_published_adapter_is_the_whole_chain_on_the_base(chain: Chain) -> None:
    """Run 2's adapter on the plain base = run 1 merged + run 2's own LoRA; run 4's (a chain of three) likewise,
    as one LoRA whose rank is the ranks summed."""
    from peft import PeftConfig, PeftModel

    from trainers.model_source import load_model

    tokens = _tokens(chain.tiny)
    for run_id, parent, ranks in ((chain.second, chain.first, 8 + 4), (chain.third, chain.second, 8 + 4 + 2)):
        folder = _run_dir(chain, run_id)
        config = PeftConfig.from_pretrained(str(folder))
        assert config.r == ranks and config.lora_alpha == ranks
        whole = _logits(PeftModel.from_pretrained(load_model(chain.tiny, device="cpu"), str(folder)), tokens)
        step_by_step = PeftModel.from_pretrained(
            load_model(chain.tiny, device="cpu", merge_adapter=_run_dir(chain, parent)), str(folder / LINK_ADAPTER_DIR))
        parent_only = _logits(load_model(chain.tiny, device="cpu", merge_adapter=_run_dir(chain, parent)), tokens)
        sequential = _logits(step_by_step, tokens)
        assert np.abs(sequential - parent_only).max() > 1e-3, "the link must have moved the model"
        np.testing.assert_allclose(whole, sequential, atol=2e-5)


def test_chain_is_recorded_with_the_run(chain: Chain) -> None:
    third = _summary(chain, chain.third)
    assert third["chain"]["init_from"] == chain.second and third["chain"]["runs"] == [chain.first, chain.second]
    assert _summary(chain, chain.first)["chain"] == {"init_from": None, "runs": [], "parent_adapter": None}
    recorded = json.loads((_run_dir(chain, chain.third) / "run_config.json").read_text())
    assert recorded["config"]["init_from"] == chain.second and recorded["chain"]["runs"] == [chain.first, chain.second]


def test_sum_of_adapters_keeps_each_ones_scale(tiny_model_dir: Path, tmp_path: Path) -> None:
    """An rslora adapter (scale alpha / sqrt r) and a plain one, both with random B: their sum on the base equals
    the first merged, then the second."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from trainers.model_source import load_model

    folders = []
    for name, lora in (("rs", LoraConfig(r=4, lora_alpha=6, use_rslora=True, target_modules=["q_proj", "o_proj"],
                                         init_lora_weights=False)),
                       ("plain", LoraConfig(r=2, lora_alpha=3, target_modules=["k_proj", "o_proj", "up_proj"],
                                            init_lora_weights=False))):
        get_peft_model(load_model(tiny_model_dir, device="cpu"), lora).save_pretrained(tmp_path / name)
        folders.append(tmp_path / name)
    summed = sum_adapters(folders[0], folders[1], tmp_path / "sum")
    tokens = _tokens(tiny_model_dir)
    whole = _logits(PeftModel.from_pretrained(load_model(tiny_model_dir, device="cpu"), str(summed)), tokens)
    sequential = _logits(PeftModel.from_pretrained(
        load_model(tiny_model_dir, device="cpu", merge_adapter=folders[0]), str(folders[1])), tokens)
    base = _logits(load_model(tiny_model_dir, device="cpu"), tokens)
    assert np.abs(sequential - base).max() > 0.01
    np.testing.assert_allclose(whole, sequential, atol=2e-5)


def test_sft_then_dpo_then_sft(tiny_model_dir: Path, tmp_path: Path, studio_home: Path) -> None:
    """The pipeline the issue names, through both training bodies (DPO's and the example methods'): SFT on
    demonstrations, DPO from it, SFT again from that; each adapter on the base is its whole chain."""
    from peft import PeftModel

    from trainers.model_source import load_model

    with Store.open(tmp_path / "studio.db") as store:
        session = store.create_session("")
        for prompt, sensible, potato in SEPARABLE_PAIRS:  # a judged pair and a demonstration per prompt
            prompt_id = store.add_prompt(session, prompt, [])
            ids = [store.add_candidate(prompt_id, slot, " " + text, rendered(prompt), "tiny", "0" * 64, {}, seed=slot)
                   for slot, text in enumerate((sensible, potato))]
            store.record_judgement(prompt_id, "a", chosen_candidate_id=ids[0], rejected_candidate_id=ids[1])
            store.add_demonstration(prompt_id, sensible)
        runs = tmp_path / "runs"
        sft = _train(store, RunConfig(**{**FIRST, "method": "sft", "max_steps": 3}), tiny_model_dir, runs)
        dpo = _train(store, RunConfig(**{**THIRD, "init_from": sft}), tiny_model_dir, runs)
        again = _train(store, RunConfig(**{**THIRD, "method": "sft", "init_from": dpo}), tiny_model_dir, runs)
        folders = {r: Path(store.get_run(r).output_dir) for r in (sft, dpo, again)}
        assert store.get_run(again).summary["chain"]["runs"] == [sft, dpo]
    tokens = _tokens(tiny_model_dir)
    for run_id, parent in ((dpo, sft), (again, dpo)):
        whole = _logits(PeftModel.from_pretrained(load_model(tiny_model_dir, device="cpu"), str(folders[run_id])),
                        tokens)
        sequential = _logits(PeftModel.from_pretrained(
            load_model(tiny_model_dir, device="cpu", merge_adapter=folders[parent]),
            str(folders[run_id] / LINK_ADAPTER_DIR)), tokens)
        np.testing.assert_allclose(whole, sequential, atol=2e-5)


# --- bad input: refused before anything is written -------------------------------------------------------------


def _done_run(store: Store, runs: Path, adapter_from: Path | None, *, model: str, summary_model: dict,
              method: str = "dpo", status: str = "done", message: str | None = None) -> int:
    folder = runs / f"run-{len(store.list_runs()) + 1}"
    if adapter_from is not None:
        shutil.copytree(adapter_from, folder)
    run_id = store.create_run({"method": method, "train_model": model}, model_id=Path(model).name,
                              output_dir=str(folder), pair_ids=[], heldout_ids=[])
    store.set_run_summary(run_id, {"model": summary_model})
    store.set_run_status(run_id, status, message)
    return run_id


def test_bad_init_from_is_refused_before_anything_is_written(chain: Chain, tmp_path: Path, smollm2_model: Path,
                                                            studio_home: Path) -> None:
    adapter = _run_dir(chain, chain.first)
    tiny = {"origin": str(chain.tiny), "sha256": None, "model_id": chain.tiny.name}
    other = build_tiny_model(tmp_path / "other-tiny", seed=1)
    runs = tmp_path / "runs"
    runs.mkdir()
    with Store.open(tmp_path / "studio.db") as store:
        fill_separable(store)
        failed = _done_run(store, runs, adapter, model=str(chain.tiny), summary_model=tiny, status="failed",
                           message="out of memory while training on cpu")
        cancelled = _done_run(store, runs, adapter, model=str(chain.tiny), summary_model=tiny, status="cancelled")
        reward = _done_run(store, runs, adapter, model=str(chain.tiny), summary_model=tiny, method="reward")
        gone = _done_run(store, runs, None, model=str(chain.tiny), summary_model=tiny)
        good = _done_run(store, runs, adapter, model=str(chain.tiny), summary_model=tiny)
        on_gguf = _done_run(store, runs, adapter, model="/elsewhere/gemma.gguf",
                            summary_model={"origin": "/elsewhere/gemma.gguf", "sha256": "0" * 64})
        cases = [
            (999, chain.tiny, "--init-from 999: there is no run 999"),
            (failed, chain.tiny, f"run {failed} is failed (out of memory while training on cpu); only a run that "
                                 "finished (done)"),
            (cancelled, chain.tiny, f"run {cancelled} is cancelled"),
            (reward, chain.tiny, f"run {reward} trained a reward model, not a language-model adapter"),
            (gone, chain.tiny, f"run {gone} has no adapter in"),
            (good, other, f"run {good} was trained on {chain.tiny}, not on {other.resolve()}"),
            (on_gguf, smollm2_model, f"run {on_gguf} was trained on gemma.gguf (sha256 000000000000…), not on "
                                     f"{smollm2_model.name}"),
        ]
        before = (store.list_runs(), sorted(p.name for p in runs.iterdir()))
        for run_id, model, message in cases:
            with pytest.raises(ChainError) as caught:
                prepare_run(store, RunConfig(**FAST, init_from=run_id), model_path=model, runs_root=runs)
            assert message in str(caught.value), (message, str(caught.value))
            assert str(caught.value).startswith(f"--init-from {run_id}: ")
        assert (store.list_runs(), sorted(p.name for p in runs.iterdir())) == before  # nothing written
        assert check_init_from(store, RunConfig(init_from=good), chain.tiny).run_ids == [good]  # the control


def test_init_from_settings_that_cannot_chain() -> None:
    with pytest.raises(RunConfigError, match="--init-from cannot be combined with --four-bit"):
        RunConfig(init_from=1, four_bit=True, device="cuda")
    with pytest.raises(RunConfigError, match=r"--init-from must be a run id \(1 or more\) \(got 0\)"):
        RunConfig(init_from=0)


def test_cli_refuses_an_unknown_run_and_shows_the_chain(chain: Chain, tmp_path: Path) -> None:
    refused = run_cli("--db", str(tmp_path / "empty.db"), "train", "--train-model", str(chain.tiny),
                      "--init-from", "7", home=tmp_path / "home")
    assert refused.returncode == 1
    assert "error: --init-from 7: there is no run 7" in refused.stderr
    with Store.open(tmp_path / "empty.db") as store:
        assert store.list_runs() == []

    listed = run_cli("--db", str(chain.db), "runs", home=chain.home, check=True)
    rows = {line.split("\t")[0]: line.split("\t") for line in listed.stdout.splitlines()}
    assert rows[str(chain.third)][1:3] == ["done", "dpo"] and rows[str(chain.third)][-1] == f"from run {chain.second}"
    assert rows[str(chain.second)][-1] == f"from run {chain.first}" and rows[str(chain.first)][-1] == ""

    shown = run_cli("--db", str(chain.db), "runs", "show", str(chain.third), home=chain.home, check=True).stdout
    assert (f"chain: run {chain.first} (dpo, done) → run {chain.second} (dpo, done) → run {chain.third} (dpo, done)"
            in shown)
    assert f"started from run {chain.second}" in shown and "--lora-r 2" in shown


# --- llama.cpp: the chained adapter exported to GGUF is the chain ---------------------------------------------


@pytest.fixture
def parent_adapter(trained_adapter: Path, tmp_path: Path) -> Path:  # noqa: F811
    """The exactness test's trained run (shared by the whole test run) in this test's own copy of its folder,
    which the chained run is added to."""
    folder = copy_run_folder(trained_adapter.parent.parent, tmp_path / "parent")
    return folder / trained_adapter.relative_to(trained_adapter.parent.parent)


@pytest.mark.slow
def test_llama_cpp_serves_the_chain_exactly(served, parent_adapter: Path, session_home: Path,  # noqa: F811
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real DPO run from the exactness test's trained run (--init-from it, 3 steps), exported to GGUF: llama.cpp
    (quantised base + the one summed adapter) changes the logits as transformers does with the earlier adapter
    merged and the new LoRA on top — the same bar as the single-run exactness test."""
    from peft import PeftModel

    from studio.inference.adapter_checks import validate_adapter
    from studio.inference.adapters import AdapterSlots
    from trainers.gguf_adapter import AttentionHeads, export_gguf_adapter
    from trainers.model_source import load_model, resolve_model_source

    engine = served.engine
    db = parent_adapter.parent.parent / "studio.db"
    with prefstudio_home(session_home), Store.open(db) as store:
        parent = next(r.id for r in store.list_runs() if Path(r.output_dir) == parent_adapter)
        config = RunConfig(init_from=parent, max_steps=3, max_length=128, heldout_fraction=0.0,
                           learning_rate=served.trial.learning_rate, target_modules=served.trial.target_modules)
        chained = Path(store.get_run(_train(store, config, served.model, parent_adapter.parent)).output_dir)
    gguf_path = export_gguf_adapter(chained, tmp_path / "chained.gguf", engine.info.architecture,
                                    engine.info.n_layers,
                                    heads=AttentionHeads.from_metadata(engine.info.metadata, engine.info.architecture))
    info = validate_adapter(gguf_path, engine.info)
    assert info.ranks == (32,) and info.alpha == 32.0

    tokens = engine.tokenize(TEXT)[:N_TOKENS]
    slots = AdapterSlots(engine.llama, engine.info)
    try:
        slots.load("chained", gguf_path)
        cpp_base = all_logits(engine.llama, tokens)
        slots.activate("chained")
        cpp_tuned = all_logits(engine.llama, tokens)
        slots.activate(None)
    finally:
        slots.close()

    monkeypatch.setenv("PREFSTUDIO_HOME", str(session_home))
    model_dir = resolve_model_source(served.model, sha256=engine.identity.sha256).model_dir
    hf_base = _logits(load_model(model_dir, device="cpu"), tokens)
    # What the chained run trained: the base with the parent merged, its own LoRA on top.
    hf_tuned = _logits(PeftModel.from_pretrained(load_model(model_dir, device="cpu", merge_adapter=parent_adapter),
                                                 str(chained / LINK_ADAPTER_DIR)), tokens)
    hf_parent = _logits(load_model(model_dir, device="cpu", merge_adapter=parent_adapter), tokens)

    top = np.argsort(-cpp_base, axis=1)[:, :TOP_K]
    cpp_delta = np.take_along_axis(cpp_tuned - cpp_base, top, axis=1).ravel()
    hf_delta = np.take_along_axis(hf_tuned - hf_base, top, axis=1).ravel()
    link_delta = np.take_along_axis(hf_tuned - hf_parent, top, axis=1).ravel()
    correlation = float(np.corrcoef(cpp_delta, hf_delta)[0, 1])
    engine_noise = float(np.take_along_axis(cpp_base - hf_base, top, axis=1).std())
    agree_base = float((cpp_base.argmax(1) == hf_base.argmax(1)).mean())
    agree_tuned = float((cpp_tuned.argmax(1) == hf_tuned.argmax(1)).mean())
    print(f"\n{served.trial.name}: chained adapter (rank 16 + 16) over {N_TOKENS} tokens: Pearson r of the logit "
          f"change = {correlation:.4f}; change std {hf_delta.std():.3f} (the second run's own {link_delta.std():.3f})"
          f" vs engine noise {engine_noise:.3f}; greedy agreement base {agree_base:.1%}, tuned {agree_tuned:.1%}")
    assert hf_delta.std() > 3 * engine_noise
    assert correlation >= 0.95
    assert agree_tuned >= agree_base - 0.02


# --- the train screen -----------------------------------------------------------------------------------------


async def test_train_screen_sets_and_checks_init_from(chain: Chain, default_model: Path, monkeypatch) -> None:
    """The form's "init from" field: the plan line says which run the new one starts from, or why it cannot."""
    from dataclasses import replace

    from conftest import wait_for

    from studio.settings import load_settings
    from studio.tui.app import PreferenceStudioApp
    from studio.tui.screens.train import TrainScreen

    monkeypatch.setenv("PREFSTUDIO_HOME", str(chain.home))
    with Store.open(chain.db) as store:
        runs_before = len(store.list_runs())
        app = PreferenceStudioApp(settings=replace(load_settings(), model=default_model, train_model=chain.tiny),
                                  store=store)
        async with app.run_test(size=(140, 44)) as pilot:
            await pilot.press("f5")
            await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen))
            screen = app.screen
            field = screen.query_one("#cfg-init_from")
            assert field.value == str(chain.second)  # prefilled from the last run, as every setting is
            await wait_for(pilot, lambda: screen.plan_text.startswith("Will train:"))
            assert f"starting from run {chain.second}'s model" in screen.plan_text
            field.value = "999"
            await wait_for(pilot, lambda: screen.plan_text.startswith("Cannot start:"))
            assert "--init-from 999: there is no run 999" in screen.plan_text
            field.value = ""
            await wait_for(pilot, lambda: screen.plan_text.startswith("Will train:") and "starting" not in
                           screen.plan_text)
        assert len(store.list_runs()) == runs_before
