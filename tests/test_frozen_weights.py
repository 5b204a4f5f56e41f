"""A CPU bf16 run's frozen weights stored in bf16 (and the LM head as its own bf16 copy) compute exactly what the
fp32 weights under autocast computed: the same reference log-probabilities, loss and LoRA gradients of a DPO step,
on a tiny model and on the default model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import prefstudio_home

import trainers  # noqa: F401  (HF offline env)
from tests.tiny_model import SEPARABLE_PAIRS
from trainers.frozen_weights import release_file_pages, store_frozen_weights_for_autocast


def dpo_trainer(model_dir: Path, work: Path, rows: list[dict[str, str]]):  # noqa: ANN201 - TRL's DPOTrainer
    from datasets import Dataset

    from trainers.compact_logprobs import enable_compact_logprobs_on_cpu
    from trainers.cpu_logprob_head import enable_cpu_logprob_head
    from trainers.methods.dpo import METHOD, lora_config
    from trainers.model_source import load_model, load_tokenizer
    from trainers.run_config import RunConfig

    enable_compact_logprobs_on_cpu()
    enable_cpu_logprob_head()
    config = RunConfig(batch_size=2, max_steps=1, dtype="bf16", lora_r=4, heldout_fraction=0.0)
    args = METHOD.trainer_args(config, work, "cpu", "bf16", False, 256)
    return METHOD.trainer_class()(model=load_model(model_dir, device="cpu"), args=args,
                                  train_dataset=Dataset.from_list(rows), processing_class=load_tokenizer(model_dir),
                                  peft_config=lora_config(config))


def dpo_step(trainer, batch: dict) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """Reference log-probs, loss and every LoRA gradient of one DPO step on ``batch`` (the optimizer not run)."""
    model = trainer.model
    model.zero_grad(set_to_none=True)
    with trainer.accelerator.autocast():
        ref_chosen, ref_rejected = trainer.compute_ref_log_probs(model, batch)
        loss = trainer.compute_loss(model, {**batch, "ref_chosen_logps": ref_chosen,
                                            "ref_rejected_logps": ref_rejected})
    loss.backward()
    out = {"ref_chosen": ref_chosen, "ref_rejected": ref_rejected, "loss": loss.detach()}
    out.update({name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad})
    return out


def same_step_before_and_after(trainer) -> tuple[dict, dict, object]:  # noqa: ANN001
    """The step on one batch with the fp32 weights, then again after storing them for autocast."""
    trainer.precompute_ref_logps = True  # the reference pass is run by hand in dpo_step
    trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    torch.manual_seed(0)
    before = dpo_step(trainer, batch)
    report = store_frozen_weights_for_autocast(trainer.model, "cpu", "bf16")
    torch.manual_seed(0)
    after = dpo_step(trainer, batch)
    return before, after, report


@pytest.fixture()
def one_thread():  # noqa: ANN201
    """bf16 products on two threads are not bit-reproducible run to run; one thread is."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_rows() -> list[dict[str, str]]:
    return [{"prompt": f"User: {p}\nAssistant:", "chosen": " " + c, "rejected": " " + r}
            for p, c, r in SEPARABLE_PAIRS[:2]]


def test_a_tiny_dpo_step_is_the_same_to_the_bit_with_bf16_frozen_weights(tiny_model_dir, tmp_path,
                                                                          one_thread) -> None:  # noqa: ANN001
    trainer = dpo_trainer(tiny_model_dir, tmp_path / "work", tiny_rows())
    before, after, report = same_step_before_and_after(trainer)

    assert report is not None and report.linear_layers == 2 * 7 and report.head_rows == trainer.model.config.vocab_size
    assert before.keys() == after.keys() and len(before) > 3
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_frozen_weights_are_bf16_the_lora_fp32_the_embedding_kept_and_the_head_untied(tiny_model_dir,
                                                                                     tmp_path) -> None:  # noqa: ANN001
    trainer = dpo_trainer(tiny_model_dir, tmp_path / "work", tiny_rows())
    base = trainer.model.get_base_model()
    embedding = base.get_input_embeddings().weight
    expected_head = embedding.detach().to(torch.bfloat16)

    store_frozen_weights_for_autocast(trainer.model, "cpu", "bf16")

    dtypes = {name: p.dtype for name, p in trainer.model.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if n.endswith("base_layer.weight") or "mlp" in n and "lora_" not in n} == {
        torch.bfloat16}
    assert {d for n, d in dtypes.items() if "norm" in n} == {torch.float32}
    assert base.get_input_embeddings().weight is embedding and embedding.dtype == torch.float32
    head = base.get_output_embeddings().weight
    assert head is not embedding and torch.equal(head, expected_head)
    # Outside autocast a bf16 layer still answers a float32 input (casting in and out).
    out = base.model.layers[0].mlp.down_proj(torch.ones(1, base.config.intermediate_size))
    assert out.dtype == torch.float32


def test_other_devices_and_dtypes_are_left_alone(tiny_model_dir) -> None:  # noqa: ANN001
    from trainers.model_source import load_model

    model = load_model(tiny_model_dir, device="cpu")
    assert store_frozen_weights_for_autocast(model, "cpu", "fp32") is None
    assert store_frozen_weights_for_autocast(model, "cuda", "bf16") is None
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_pages_of_anonymous_memory_are_never_released() -> None:
    assert release_file_pages(torch.zeros(1 << 20)) == 0


@pytest.mark.slow
def test_a_default_model_dpo_step_is_the_same_with_bf16_frozen_weights(default_model, session_home, tmp_path,
                                                                       one_thread) -> None:  # noqa: ANN001
    from trainers.model_prompt_format import prompt_format_for_model
    from trainers.model_source import resolve_model_source
    from trainers.prompt_format import ChatTurn

    fmt = prompt_format_for_model(default_model)
    rows = [{"prompt": fmt.render("", [ChatTurn("user", p)]), "chosen": fmt.as_completion(c),
             "rejected": fmt.as_completion(r)} for p, c, r in SEPARABLE_PAIRS[:2]]
    with prefstudio_home(session_home):
        model_dir = resolve_model_source(default_model).model_dir
    trainer = dpo_trainer(model_dir, tmp_path / "work", rows)
    before, after, report = same_step_before_and_after(trainer)

    assert report is not None and report.linear_layers == 18 * 7 and report.head_rows == 262_144
    assert report.released_mb > 600  # the layers' and the embedding's fp32 pages read so far
    for name in before:
        assert torch.equal(before[name], after[name]), name


@pytest.mark.parametrize("method", ["sft", "kto"])
def test_example_methods_train_with_the_frozen_weights_stored_for_autocast(method: str, tiny_model_dir, tmp_path,
                                                                           studio_home) -> None:  # noqa: ANN001
    from store.studio_store import Store
    from tests.test_methods_sft_kto import fill_demonstrations, fill_labels
    from trainers.run.lifecycle import prepare_run
    from trainers.run.process import execute_run
    from trainers.run_config import RunConfig

    lines: list[str] = []
    with Store.open(tmp_path / "studio.db") as store:
        fill_demonstrations(store, times=2) if method == "sft" else fill_labels(store, repeat=1)
        config = RunConfig(method=method, dtype="bf16", max_steps=2, lora_r=4, batch_size=2, heldout_fraction=0.0)
        prepared = prepare_run(store, config, model_path=tiny_model_dir, runs_root=tmp_path / "runs")
        outcome = execute_run(store, prepared.run_id, log=lines.append)

    assert outcome.status == "done", outcome.message
    assert any(line.startswith("frozen weights in bf16: 14 linear layers, the LM head") for line in lines), lines
