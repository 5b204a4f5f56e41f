"""GGUF LoRA adapters: export from PEFT, validation against the base, load and swap in llama.cpp.

The adapters here are synthetic PEFT directories (PEFT's file layout, random weights shaped from the real
default model's tensors), so these tests need no transformers model; the agreement with transformers + PEFT
on a trained adapter is in test_adapter_exactness.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import save_file

from studio.inference.adapter_checks import AdapterFileError, validate_adapter
from studio.inference.adapters import AdapterRuntimeError, AdapterSlots
from studio.inference.model_files import GGUFInfo, inspect_gguf
from trainers.gguf_adapter import AdapterExportError, export_gguf_adapter

# PEFT module → GGUF tensor of one Gemma 3 layer.
ATTENTION = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
PROMPT = "User: What is the capital of France?\nAssistant: The capital of France is"


# --- helpers (also used by test_adapter_exactness.py) ---------------------------------------------


def write_peft_adapter(directory: Path, base: GGUFInfo, *, r: int = 8, alpha: float = 16.0, b_std: float = 0.05,
                       seed: int = 0, layers: range | None = None, config: dict | None = None,
                       extra: dict[str, np.ndarray] | None = None) -> Path:
    """A PEFT LoRA adapter directory on q/k/v/o, shaped from the base GGUF (GGUF shapes are (in, out))."""
    shapes = {t.name: t.shape for t in base.tensors}
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for layer in layers if layers is not None else range(base.n_layers):
        for module, gguf_name in ATTENTION.items():
            in_dim, out_dim = shapes[f"blk.{layer}.{gguf_name}.weight"]
            key = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{key}.lora_A.weight"] = rng.normal(0, in_dim ** -0.5, (r, in_dim)).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = rng.normal(0, b_std, (out_dim, r)).astype(np.float32)
    tensors.update(extra or {})
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    settings = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha,
                "target_modules": sorted(ATTENTION), "use_rslora": False, "use_dora": False,
                "rank_pattern": {}, "alpha_pattern": {}}
    settings.update(config or {})
    (directory / "adapter_config.json").write_text(json.dumps(settings))
    return directory


def write_gguf_adapter(path: Path, arch: str, tensors: dict[str, np.ndarray], *, alpha: float = 16.0,
                       general_type: str = "adapter", adapter_type: str = "lora",
                       raw_dtype: gguf.GGMLQuantizationType | None = None) -> Path:
    """A hand-made GGUF adapter, for files the exporter would never write."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_string(gguf.Keys.General.TYPE, general_type)
    writer.add_string(gguf.Keys.Adapter.TYPE, adapter_type)
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name, array in tensors.items():
        if raw_dtype is None:
            writer.add_tensor(name, array)
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, raw_dtype), raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def all_logits(llm, tokens: list[int]) -> np.ndarray:  # noqa: ANN001 - llama_cpp.Llama
    """Logits at every position of ``tokens``, evaluated from scratch in one batch (n_tokens × vocab)."""
    import llama_cpp
    from llama_cpp._internals import LlamaBatch

    llm.reset()
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
    batch = LlamaBatch(n_tokens=len(tokens), embd=0, n_seq_max=1)
    batch.set_batch(tokens, n_past=0, logits_all=True)
    llm._ctx.decode(batch)
    n_vocab = llm.n_vocab()
    rows = [np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, i), shape=(n_vocab,)).copy()
            for i in range(len(tokens))]
    llm.reset()  # the KV memory no longer matches llm.input_ids: make the next call start over
    return np.stack(rows)


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(default_model) -> GGUFInfo:
    return inspect_gguf(default_model)


@pytest.fixture
def peft_dir(tmp_path, base) -> Path:
    return write_peft_adapter(tmp_path / "peft", base)


@pytest.fixture
def slots(engine):
    """Adapter slots on the shared engine's Llama; always back on the base model afterwards."""
    adapter_slots = AdapterSlots(engine.llama, engine.info)
    yield adapter_slots
    adapter_slots.close()
    assert adapter_slots.active is None


def _pair(base: GGUFInfo, name: str, r: int = 4, in_dim: int | None = None, out_dim: int | None = None,
          r_b: int | None = None) -> dict[str, np.ndarray]:
    shape = {t.name: t.shape for t in base.tensors}.get(name, (640, 640))
    i, o = in_dim or shape[0], out_dim or shape[1]
    return {f"{name}.lora_a": np.zeros((r, i), np.float32), f"{name}.lora_b": np.zeros((o, r_b or r), np.float32)}


# --- export ---------------------------------------------------------------------------------------


def test_export_round_trip(tmp_path, base, peft_dir):
    out = export_gguf_adapter(peft_dir, tmp_path / "out" / "adapter.gguf", base.architecture, base.n_layers)
    assert out == tmp_path / "out" / "adapter.gguf"
    assert [p.name for p in out.parent.iterdir()] == ["adapter.gguf"]  # no temporary left behind

    reader = gguf.GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == "gemma3"
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == pytest.approx(16.0)
    from safetensors.numpy import load_file

    peft = load_file(str(peft_dir / "adapter_model.safetensors"))
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 * 4 * base.n_layers
    a = tensors["blk.3.attn_q.weight.lora_a"]
    b = tensors["blk.3.attn_q.weight.lora_b"]
    assert tuple(int(d) for d in a.shape) == (640, 8)  # GGUF order: (in, r), as llama.cpp expects
    assert tuple(int(d) for d in b.shape) == (8, 1024)  # (r, out)
    assert a.tensor_type == gguf.GGMLQuantizationType.F32
    # Stored exactly as PEFT's lora_A (r × in) and lora_B (out × r): no transpose.
    np.testing.assert_array_equal(a.data, peft["base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"])
    np.testing.assert_array_equal(b.data, peft["base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight"])
    assert "blk.17.attn_output.weight.lora_b" in tensors

    info = validate_adapter(out, base)
    assert info.architecture == "gemma3" and info.alpha == 16.0 and info.ranks == (8,) and info.rank == 8
    assert info.tensor_types == ("F32",)
    assert len(info.adapted) == 4 * base.n_layers and "blk.0.attn_v.weight" in info.adapted


def test_export_f16(tmp_path, base, peft_dir):
    out = export_gguf_adapter(peft_dir, tmp_path / "a16.gguf", base.architecture, base.n_layers, dtype="f16")
    info = validate_adapter(out, base)
    assert info.tensor_types == ("F16",)
    f32 = export_gguf_adapter(peft_dir, tmp_path / "a32.gguf", base.architecture, base.n_layers)
    assert out.stat().st_size < 0.6 * f32.stat().st_size


def test_export_folds_rslora_and_alpha_pattern_into_lora_b(tmp_path, base):
    """llama.cpp scales by alpha / r with one alpha; PEFT's other scalings must arrive unchanged."""
    plain = write_peft_adapter(tmp_path / "plain", base, layers=range(2))
    special = write_peft_adapter(tmp_path / "special", base, layers=range(2),
                                 config={"use_rslora": True, "alpha_pattern": {"layers.1.self_attn.v_proj": 4.0}})
    read = {}
    for name, directory in (("plain", plain), ("special", special)):
        out = export_gguf_adapter(directory, tmp_path / f"{name}.gguf", base.architecture, base.n_layers)
        read[name] = {t.name: np.array(t.data) for t in gguf.GGUFReader(out).tensors}
    r, alpha = 8, 16.0
    # rslora: PEFT scale alpha / sqrt(r); llama.cpp applies alpha / r, so lora_b carries sqrt(r).
    np.testing.assert_allclose(read["special"]["blk.0.attn_q.weight.lora_b"], read["plain"]["blk.0.attn_q.weight.lora_b"] * r ** 0.5,
                               rtol=1e-6)
    # alpha_pattern: this module's alpha is 4, so its scale is 4 / sqrt(r) against llama.cpp's 16 / r.
    np.testing.assert_allclose(read["special"]["blk.1.attn_v.weight.lora_b"],
                               read["plain"]["blk.1.attn_v.weight.lora_b"] * (4.0 / r ** 0.5) / (alpha / r), rtol=1e-6)
    np.testing.assert_array_equal(read["special"]["blk.1.attn_v.weight.lora_a"], read["plain"]["blk.1.attn_v.weight.lora_a"])


def test_export_reads_bf16_weights(tmp_path, base):
    import torch
    from safetensors.torch import save_file as save_torch

    directory = write_peft_adapter(tmp_path / "bf16", base, layers=range(1))
    from safetensors.numpy import load_file

    f32 = load_file(str(directory / "adapter_model.safetensors"))
    save_torch({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in f32.items()},
               str(directory / "adapter_model.safetensors"))
    out = export_gguf_adapter(directory, tmp_path / "bf16.gguf", base.architecture, base.n_layers)
    tensors = {t.name: np.array(t.data) for t in gguf.GGUFReader(out).tensors}
    expected = torch.from_numpy(f32["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"])
    np.testing.assert_array_equal(tensors["blk.0.attn_k.weight.lora_b"], expected.to(torch.bfloat16).float().numpy())


def test_llama_q_and_k_rows_are_stored_as_llama_cpp_orders_them(tmp_path, smollm2_model):
    """A llama GGUF keeps q/k rows permuted for its rotary embedding and transformers un-permutes them when it
    reads the file; the exported lora_b, read back the way transformers reads a llama GGUF tensor, must be the
    trained one (v and o, and lora_a everywhere, are stored as they are)."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from trainers.gguf_adapter import AttentionHeads

    smollm2 = inspect_gguf(smollm2_model)
    heads = AttentionHeads.from_metadata(smollm2.metadata, smollm2.architecture)
    assert heads == AttentionHeads(n_head=9, n_head_kv=3)
    peft_dir = write_peft_adapter(tmp_path / "peft", smollm2, layers=range(2))
    out = export_gguf_adapter(peft_dir, tmp_path / "llama.gguf", smollm2.architecture, smollm2.n_layers, heads=heads)
    stored = {t.name: np.array(t.data) for t in gguf.GGUFReader(out).tensors}
    from safetensors.numpy import load_file

    peft = load_file(str(peft_dir / "adapter_model.safetensors"))
    hf_reader = LlamaTensorProcessor(config={"num_attention_heads": 9, "num_key_value_heads": 3})
    for module, tensor in ATTENTION.items():
        trained = peft[f"base_model.model.model.layers.1.self_attn.{module}.lora_B.weight"]
        name = f"blk.1.{tensor}.weight"
        as_read = hf_reader.process(stored[f"{name}.lora_b"], name).weights
        np.testing.assert_array_equal(as_read, trained)
        if module in ("q_proj", "k_proj"):
            assert not np.array_equal(stored[f"{name}.lora_b"], trained)
        np.testing.assert_array_equal(stored[f"{name}.lora_a"],
                                      peft[f"base_model.model.model.layers.1.self_attn.{module}.lora_A.weight"])
    assert validate_adapter(out, smollm2).architecture == "llama"

    with pytest.raises(AdapterExportError, match="attention head counts are needed"):
        export_gguf_adapter(peft_dir, tmp_path / "no-heads.gguf", smollm2.architecture, smollm2.n_layers)
    with pytest.raises(AdapterExportError, match="do not split into 5 heads"):  # 576 rows, not 5 × an even size
        export_gguf_adapter(peft_dir, tmp_path / "bad.gguf", smollm2.architecture, smollm2.n_layers,
                            heads=AttentionHeads(n_head=5, n_head_kv=3))
    assert not (tmp_path / "no-heads.gguf").exists() and not (tmp_path / "bad.gguf").exists()


def test_llama_mlp_modules_have_tensor_names(tmp_path, smollm2_model):
    """gate/up/down (and every attention projection) of a llama model map onto its GGUF tensors."""
    smollm2 = inspect_gguf(smollm2_model)
    shapes = {t.name: t.shape for t in smollm2.tensors}
    rng = np.random.default_rng(1)
    tensors = {}
    for module, tensor in {"gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}.items():
        in_dim, out_dim = shapes[f"blk.29.{tensor}.weight"]
        key = f"base_model.model.model.layers.29.mlp.{module}"
        tensors[f"{key}.lora_A.weight"] = rng.normal(0, 0.1, (4, in_dim)).astype(np.float32)
        tensors[f"{key}.lora_B.weight"] = rng.normal(0, 0.1, (out_dim, 4)).astype(np.float32)
    peft_dir = write_peft_adapter(tmp_path / "peft", smollm2, r=4, layers=range(0), extra=tensors,
                                  config={"target_modules": ["gate_proj", "up_proj", "down_proj"]})
    out = export_gguf_adapter(peft_dir, tmp_path / "mlp.gguf", smollm2.architecture, smollm2.n_layers)
    info = validate_adapter(out, smollm2)
    assert set(info.adapted) == {"blk.29.ffn_gate.weight", "blk.29.ffn_up.weight", "blk.29.ffn_down.weight"}


def _break(kind: str, directory: Path, base: GGUFInfo) -> tuple[Path, str, str]:
    """Damage a fresh adapter one way; return (directory, architecture, expected message fragment)."""
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    if kind == "missing dir":
        return directory / "nope", "gemma3", "adapter directory not found"
    write_peft_adapter(directory, base, layers=range(1))
    weights = directory / "adapter_model.safetensors"
    config_path = directory / "adapter_config.json"
    from safetensors.numpy import load_file

    tensors = load_file(str(weights))
    if kind == "missing config":
        config_path.unlink()
        return directory, "gemma3", "adapter_config.json is missing"
    if kind == "missing weights":
        weights.unlink()
        return directory, "gemma3", "adapter_model.safetensors is missing"
    if kind == "unknown architecture":
        return directory, "gemma99", "unknown base architecture 'gemma99'"
    if kind == "embedding lora":
        tensors["base_model.model.model.embed_tokens.lora_embedding_A"] = np.zeros((8, 16), np.float32)
        tensors["base_model.model.model.embed_tokens.lora_embedding_B"] = np.zeros((640, 8), np.float32)
        message = "token embeddings"
    elif kind == "rank mismatch":
        tensors[f"{q}.lora_B.weight"] = np.zeros((1024, 4), np.float32)
        message = "rank mismatch in model.layers.0.self_attn.q_proj"
    elif kind == "rank differs from config":
        tensors[f"{q}.lora_A.weight"] = np.zeros((4, 640), np.float32)
        tensors[f"{q}.lora_B.weight"] = np.zeros((1024, 4), np.float32)
        message = "config says r = 8"
    elif kind == "no gguf name":
        tensors["base_model.model.model.vision_tower.proj.lora_A.weight"] = np.zeros((8, 16), np.float32)
        tensors["base_model.model.model.vision_tower.proj.lora_B.weight"] = np.zeros((16, 8), np.float32)
        message = "model.vision_tower.proj has no tensor name in a gemma3 GGUF"
    elif kind == "full weight":
        tensors["base_model.model.lm_head.weight"] = np.zeros((16, 640), np.float32)
        message = "is not a LoRA A/B weight"
    elif kind == "half missing":
        del tensors[f"{q}.lora_B.weight"]
        message = "has no lora_B.weight"
    elif kind == "nan weights":
        tensors[f"{q}.lora_B.weight"][3, 1] = np.nan
        message = "NaN or infinite values"
    elif kind == "zero alpha":
        config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "lora_alpha": 0}))
        message = "lora_alpha is 0, not a positive number"
    elif kind == "dora":
        config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "use_dora": True}))
        message = "use_dora is set"
    elif kind == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:-100])
        return directory, "gemma3", "truncated or damaged"
    else:  # pragma: no cover
        raise AssertionError(kind)
    save_file(tensors, str(weights))
    return directory, "gemma3", message


@pytest.mark.parametrize("kind", [
    "missing dir", "missing config", "missing weights", "unknown architecture", "embedding lora", "rank mismatch",
    "rank differs from config", "no gguf name", "full weight", "half missing", "nan weights", "zero alpha", "dora",
    "truncated weights",
])
def test_export_refuses_bad_adapters_clearly(tmp_path, base, kind):
    directory, arch, fragment = _break(kind, tmp_path / "peft", base)
    out_dir = tmp_path / "out"
    with pytest.raises(AdapterExportError) as caught:
        export_gguf_adapter(directory, out_dir / "a.gguf", arch, base.n_layers)
    assert fragment in str(caught.value)
    if kind not in ("unknown architecture",):
        assert str(directory) in str(caught.value) or directory.name in str(caught.value)
    assert not out_dir.exists() or not list(out_dir.iterdir())  # nothing written halfway


def test_export_leaves_no_file_when_writing_fails(tmp_path, base, peft_dir, monkeypatch):
    def explode(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", explode)
    with pytest.raises(AdapterExportError, match="No space left"):
        export_gguf_adapter(peft_dir, tmp_path / "out" / "a.gguf", base.architecture, base.n_layers)
    assert list((tmp_path / "out").iterdir()) == []


# --- validation against the base ------------------------------------------------------------------


@pytest.mark.parametrize("kind, fragment", [
    ("wrong architecture", "made for architecture 'llama' but the base model"),
    ("in-dim mismatch", "another model size"),
    ("out-dim mismatch", "another model size"),
    ("rank mismatch", "lora_a has rank 4 but lora_b has rank 2"),
    ("missing half", "has no .lora_b tensor"),
    ("no such base tensor", "adapts blk.40.attn_q.weight, which the base model"),
    ("tied output head", "ties to its token embeddings"),
    ("not an adapter", "general.type is 'model'"),
    ("not lora", "adapter.type is 'control_vector'"),
    ("quantised", "type Q8_0; LoRA tensors must be F32 or F16"),
    ("stray tensor", "is not a .lora_a/.lora_b half"),
])
def test_validate_refuses_adapters_that_do_not_fit(tmp_path, base, kind, fragment):
    path = tmp_path / "bad.gguf"
    q = "blk.0.attn_q.weight"
    arch, kwargs = "gemma3", {}
    tensors = _pair(base, q)
    if kind == "wrong architecture":
        arch = "llama"
    elif kind == "in-dim mismatch":
        tensors = _pair(base, q, in_dim=512)
    elif kind == "out-dim mismatch":
        tensors = _pair(base, q, out_dim=512)
    elif kind == "rank mismatch":
        tensors = _pair(base, q, r=4, r_b=2)
    elif kind == "missing half":
        del tensors[f"{q}.lora_b"]
    elif kind == "no such base tensor":
        tensors = _pair(base, "blk.40.attn_q.weight", in_dim=640, out_dim=1024)
    elif kind == "tied output head":
        tensors = _pair(base, "output.weight", in_dim=640, out_dim=1024)
    elif kind == "not an adapter":
        kwargs["general_type"] = "model"
    elif kind == "not lora":
        kwargs["adapter_type"] = "control_vector"
    elif kind == "quantised":
        tensors = _pair(base, q, r=32)
        kwargs["raw_dtype"] = gguf.GGMLQuantizationType.Q8_0
    elif kind == "stray tensor":
        tensors["blk.0.attn_norm.weight"] = np.ones(640, np.float32)
    write_gguf_adapter(path, arch, tensors, **kwargs)
    with pytest.raises(AdapterFileError) as caught:
        validate_adapter(path, base)
    assert fragment in str(caught.value) and "bad.gguf" in str(caught.value)


def test_validate_refuses_missing_truncated_and_foreign_files(tmp_path, base, peft_dir):
    with pytest.raises(AdapterFileError, match="file not found"):
        validate_adapter(tmp_path / "none.gguf", base)
    with pytest.raises(AdapterFileError, match="is a directory"):
        validate_adapter(tmp_path, base)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04 not a gguf at all")
    with pytest.raises(AdapterFileError, match="not a readable GGUF"):
        validate_adapter(junk, base)
    good = export_gguf_adapter(peft_dir, tmp_path / "good.gguf", base.architecture, base.n_layers)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(AdapterFileError, match="truncated"):
        validate_adapter(cut, base)
    # The base model itself is not an adapter.
    with pytest.raises(AdapterFileError, match="not 'adapter'"):
        validate_adapter(base.path, base)


# --- llama.cpp: load, swap, refuse ----------------------------------------------------------------


def test_wrong_architecture_adapter_is_refused_before_llama_cpp(tmp_path, base, engine, slots):
    """llama.cpp would load this and segfault at the first decode; it must never reach it."""
    tensors = {}
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight"):
        tensors.update(_pair(base, name))
    path = write_gguf_adapter(tmp_path / "llama-arch.gguf", "llama", tensors)
    with pytest.raises(AdapterFileError, match="made for architecture 'llama'"):
        slots.load("foreign", path)
    assert "foreign" not in slots and slots.active is None
    # The model still runs.
    tokens = engine.tokenize(PROMPT)
    assert np.isfinite(all_logits(engine.llama, tokens)[-1]).all()


def test_failed_llama_load_raises_instead_of_returning_null(tmp_path, engine):
    """Without a base to validate against, a file llama.cpp refuses still raises (NULL is not None)."""
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\xff" * 64)
    unchecked = AdapterSlots(engine.llama)
    with pytest.raises(AdapterRuntimeError, match="could not load adapter junk.gguf"):
        unchecked.load("junk", junk)
    assert unchecked.names == ()


def test_swap_base_adapter_base_returns_exact_base_logits(tmp_path, base, engine, slots, peft_dir):
    adapter = export_gguf_adapter(peft_dir, tmp_path / "a.gguf", base.architecture, base.n_layers)
    slots.load("tuned", adapter)
    assert slots.last_load_s is not None and slots.last_load_s > 0  # timed (its speed is bench's, not a test's)
    tokens = engine.tokenize(PROMPT)
    llm = engine.llama

    base_logits = all_logits(llm, tokens)
    slots.activate("tuned")
    assert slots.active == "tuned" and slots.active_scale == 1.0
    tuned = all_logits(llm, tokens)
    assert np.abs(tuned - base_logits).max() > 1.0  # the adapter does change the model
    slots.activate("tuned", scale=0.5)
    half = all_logits(llm, tokens)
    assert not np.array_equal(half, tuned)
    slots.activate(None)
    assert slots.active is None
    assert np.array_equal(all_logits(llm, tokens), base_logits)  # bit for bit
    slots.activate("tuned")
    assert np.array_equal(all_logits(llm, tokens), tuned)
    assert slots.last_switch_s is not None and slots.last_switch_s > 0

    slots.unload("tuned")  # unloading the active adapter falls back to the base
    assert slots.active is None and slots.names == ()
    assert np.array_equal(all_logits(llm, tokens), base_logits)


def test_switch_does_not_reuse_the_prompt_evaluated_under_the_other_adapter(tmp_path, base, engine, slots,
                                                                            peft_dir):
    """llama-cpp-python reuses an evaluated prompt prefix; after a switch that prefix is stale."""
    import llama_cpp

    adapter = export_gguf_adapter(peft_dir, tmp_path / "a.gguf", base.architecture, base.n_layers)
    slots.load("tuned", adapter)
    llm = engine.llama

    def greedy() -> str:
        out = llm.create_completion(PROMPT, max_tokens=12, temperature=0.0, seed=1)
        return out["choices"][0]["text"]

    slots.activate("tuned")
    tuned_cold = greedy()
    slots.activate(None)
    base_text = greedy()
    assert base_text != tuned_cold
    slots.activate("tuned")
    assert greedy() == tuned_cold  # not base_text's cached prompt under the new adapter
    # The trap this guards against: switching without dropping the evaluated prompt mixes both models.
    adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(slots.get("tuned").handle)
    slots.activate(None)
    greedy()
    llama_cpp.llama_set_adapters_lora(llm.ctx, adapters, 1, (llama_cpp.ctypes.c_float * 1)(1.0))
    stale = greedy()
    llama_cpp.llama_set_adapters_lora(llm.ctx, None, 0, None)
    llm.reset()
    assert stale != tuned_cold


def test_slots_bookkeeping(tmp_path, base, slots, peft_dir):
    adapter = export_gguf_adapter(peft_dir, tmp_path / "a.gguf", base.architecture, base.n_layers)
    slots.load("one", adapter)
    slots.load("two", adapter)
    assert slots.names == ("one", "two") and "one" in slots
    with pytest.raises(ValueError, match="already loaded"):
        slots.load("one", adapter)
    with pytest.raises(KeyError, match="no adapter named 'three'"):
        slots.activate("three")
    slots.activate("two")
    slots.unload("one")  # not the active one: the active adapter stays
    assert slots.active == "two" and slots.names == ("two",)
    assert slots.get("two").info.rank == 8


def test_loading_a_name_again_from_another_file_serves_the_new_file(tmp_path, base, engine):
    """Run 1 of another database has the same adapter name, run-1: the engine must not keep serving the first."""
    first = export_gguf_adapter(write_peft_adapter(tmp_path / "p1", base), tmp_path / "one.gguf",
                                base.architecture, base.n_layers)
    second = export_gguf_adapter(write_peft_adapter(tmp_path / "p2", base, b_std=0.2), tmp_path / "two.gguf",
                                 base.architecture, base.n_layers)
    tokens = engine.tokenize(PROMPT)
    try:
        engine.load_adapter("run-1", first)
        engine.activate_adapter("run-1")
        with_first = all_logits(engine.llama, tokens)
        engine.activate_adapter(None)
        engine.load_adapter("run-1", second)
        assert engine.adapters.get("run-1").path == second
        engine.activate_adapter("run-1")
        assert not np.array_equal(all_logits(engine.llama, tokens), with_first)
    finally:
        engine.activate_adapter(None)
        if "run-1" in engine.adapters:
            engine.adapters.unload("run-1")
