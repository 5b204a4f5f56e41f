"""The installed ``prefstudio`` command, run as a user would (subprocesses, real files)."""

import json
import sqlite3

from conftest import run_cli

from store.studio_store import Store


def test_generate_json_prints_seeded_candidates_reproducibly(default_model, studio_home):
    args = ("--model", str(default_model), "generate", "Name a fruit.", "-n", "2", "--seed", "5",
            "--max-tokens", "12", "--json")
    first = json.loads(run_cli(*args, home=studio_home, check=True).stdout)
    second = json.loads(run_cli(*args, home=studio_home, check=True).stdout)
    assert [c["seed"] for c in first["candidates"]] == [5, 6]
    assert [c["raw_text"] for c in first["candidates"]] == [c["raw_text"] for c in second["candidates"]]
    assert first["rendered_prompt"].endswith("User: Name a fruit.\nAssistant:")
    assert first["candidates"][0]["sampling"]["max_tokens"] == 12
    assert first["model_sha256"].startswith("a5fd3b62")


def test_default_model_is_assembled_on_first_use(studio_home):
    proc = run_cli("generate", "Hi", "-n", "1", "--seed", "1", "--max-tokens", "4", home=studio_home, check=True)
    assert "candidate A (seed 1)" in proc.stdout
    assert (studio_home / "cache" / "models" / "gemma-3-270m-q4_k_m.gguf").stat().st_size == 253_113_024


def test_bad_input_gets_one_clear_line_and_exit_1(tmp_path, default_model, studio_home):
    junk = tmp_path / "model.gguf"
    junk.write_bytes(b"not a model at all")
    cases = [
        (("--model", str(default_model), "generate", "   "), "the prompt is empty"),
        (("--model", str(junk), "generate", "hi"), f"{junk} is not a GGUF file"),
        (("--model", str(tmp_path / "missing.gguf"), "generate", "hi"), "model file not found"),
        (("--db", str(junk / "x.db"), "pairs", "list"), str(junk)),
        (("pairs", "export", "--out", str(tmp_path / "p.jsonl")), "no preference pairs"),
        (("pairs", "export", "--format", "csv", "--out", str(tmp_path / "p.csv")), "unknown format 'csv'"),
    ]
    for args, expected in cases:
        proc = run_cli(*args, home=studio_home)
        assert proc.returncode == 1, (args, proc.stderr)
        assert expected in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_newer_schema_and_malformed_config_are_refused(tmp_path, studio_home):
    db = tmp_path / "future.db"
    with Store.open(db):
        pass
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    proc = run_cli("--db", str(db), "pairs", "list", home=studio_home)
    assert proc.returncode == 1 and "newer Preference Studio" in proc.stderr and str(db) in proc.stderr

    config = tmp_path / "config.toml"
    config.write_text('model = "x.gguf"\ncolour = "blue"\n')
    proc = run_cli("--config", str(config), "pairs", "list", home=studio_home)
    assert proc.returncode == 1 and "unknown setting(s) colour" in proc.stderr and str(config) in proc.stderr
    config.write_text("n_ctx = [unclosed\n")
    proc = run_cli("--config", str(config), "pairs", "list", home=studio_home)
    assert proc.returncode == 1 and str(config) in proc.stderr and "Traceback" not in proc.stderr


def test_pairs_list_and_export_write_trl_standard_format(tmp_path, studio_home):
    db = tmp_path / "studio.db"
    with Store.open(db) as store:
        session = store.create_session("sys")
        prompt = store.add_prompt(session, "Q?", [])
        a = store.add_candidate(prompt, 0, " yes", "sys\n\nUser: Q?\nAssistant:", "m.gguf", "h", {}, 1)
        b = store.add_candidate(prompt, 1, " no", "sys\n\nUser: Q?\nAssistant:", "m.gguf", "h", {}, 2)
        store.record_judgement(prompt, "b", b, a)
    listed = run_cli("--db", str(db), "pairs", "list", home=studio_home, check=True)
    assert "1 pair(s)" in listed.stderr and "Q?" in listed.stdout
    out = tmp_path / "pairs.jsonl"
    proc = run_cli("--db", str(db), "pairs", "export", "--format", "jsonl", "--out", str(out), home=studio_home,
                   check=True)
    assert "wrote 1 pair(s)" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [{"prompt": "sys\n\nUser: Q?\nAssistant:", "chosen": " no", "rejected": " yes"}]


def test_doctor_reports_model_engine_and_database(default_model, tmp_path, studio_home):
    db = tmp_path / "d.db"
    proc = run_cli("--model", str(default_model), "--db", str(db), "doctor", home=studio_home, check=True)
    out = proc.stdout
    assert "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818" in out
    assert "portable build (GGML_NATIVE=OFF)" in out
    assert str(db) in out and "schema version" in out
    assert "transcript (no chat template)" in out
    assert "llama-cpp-python" in out and "0.3.36" in out
