from pathlib import Path

import pytest

from studio.inference.model_files import ModelFileError, file_sha256, inspect_gguf

EXPECTED_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def test_default_model_is_assembled_and_verified(default_model, studio_home):
    assert default_model.stat().st_size == 253_113_024
    assert file_sha256(default_model) == EXPECTED_SHA256


def test_default_model_metadata(default_model):
    info = inspect_gguf(default_model)
    assert info.architecture == "gemma3"
    assert info.n_layers == 18
    assert info.chat_template is None  # the reason the transcript format exists
    assert info.file_type == "model"
    assert max(t.offset + t.n_bytes for t in info.tensors) == info.size_bytes


@pytest.fixture
def broken_files(tmp_path, default_model) -> dict[str, Path]:
    data = default_model.read_bytes()
    files = {
        "truncated": data[: len(data) // 2],
        "header_only": data[:4096],
        "not_gguf": b"PK\x03\x04 this is a zip, not a model" * 10,
        "empty": b"",
    }
    out = {}
    for name, content in files.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(content)
        out[name] = path
    return out


@pytest.mark.parametrize(
    ("name", "reason"),
    [("truncated", "truncated"), ("header_only", "damaged or truncated"), ("not_gguf", "not a GGUF"),
     ("empty", "not a GGUF")],
)
def test_broken_gguf_is_refused_with_the_file_named(broken_files, name, reason):
    with pytest.raises(ModelFileError) as err:
        inspect_gguf(broken_files[name])
    assert reason in str(err.value)
    assert str(broken_files[name]) in str(err.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        inspect_gguf(tmp_path / "nope.gguf")
    with pytest.raises(ModelFileError, match="is a directory"):
        inspect_gguf(tmp_path)
