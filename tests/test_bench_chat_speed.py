"""bench/chat_speed.py: which model it times (--model) and the shape of what it prints. Speed itself is
measured by hand, never asserted here."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "chat_speed.py"


@pytest.fixture(scope="module")
def chat_speed():
    spec = importlib.util.spec_from_file_location("bench_chat_speed", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_model_is_a_bundled_name_or_a_gguf_path(chat_speed, smollm2_model, tmp_path):
    assert chat_speed.model_path("smollm2") == smollm2_model
    assert chat_speed.model_path(str(smollm2_model)) == smollm2_model
    with pytest.raises(SystemExit, match=r"unknown model name 'gemma'.*gemma3-270m, smollm2.*\.gguf"):
        chat_speed.model_path("gemma")
    with pytest.raises(SystemExit, match=r"--model .*missing\.gguf: no such file"):
        chat_speed.model_path(str(tmp_path / "missing.gguf"))


def test_a_short_run_on_smollm2_ends_with_the_ratio_line(chat_speed, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["chat_speed.py", "--model", "smollm2", "--rounds", "2", "--max-tokens", "3"])
    chat_speed.main()
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("model SmolLM2-135M-Instruct.Q4_1.gguf") and "rounds 2 (+1 warm-up)" in lines[0]
    assert any(line.startswith("CPU time to first token") for line in lines)
    assert lines[-1].startswith("ratio studio/raw: decode ") and "time-to-first-token speed" in lines[-1]
