"""SteerLM part 2 (issue 17): the attribute string's one rule, attribute-conditioned SFT (``steerlm``)."""

from __future__ import annotations

import pytest

from trainers.prompt_format import ChatTemplateFormat, ChatTurn, TranscriptFormat
from trainers.steer_format import (
    SteerValueError,
    attribute_string,
    check_values,
    parse_attribute_string,
    parse_settings,
    split_steered_prompt,
    steered_prompt,
)

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_attribute_string_has_one_fixed_order():
    assert attribute_string({"humor": 0, "quality": 4}) == "quality:4,humor:0"
    assert attribute_string({"verbosity": 2, "zeal": 1, "toxicity": 0}) == "toxicity:0,verbosity:2,zeal:1"
    assert parse_attribute_string("quality:4,humor:0") == {"quality": 4, "humor": 0}


def test_transcript_rule_renders_and_parses_back():
    fmt = TranscriptFormat()
    base = fmt.render("Be brief.", [ChatTurn("user", "Hi")])
    steered = steered_prompt(base, {"humor": 0, "quality": 4}, fmt.name)
    assert steered == "Be brief.\n\nUser: Hi\nAssistant: [quality:4,humor:0]"
    # The reply keeps the transcript's leading space after the steering.
    assert split_steered_prompt(steered) == (base, {"quality": 4, "humor": 0})
    assert split_steered_prompt(base) == (base, None)
    assert steered_prompt(base, None, fmt.name) == base


def test_chat_template_rule_renders_and_parses_back():
    fmt = ChatTemplateFormat(CHATML, stop=("<|im_end|>",))
    base = fmt.render("Be brief.", [ChatTurn("user", "Hi")])
    steered = steered_prompt(base, {"verbosity": 4}, fmt.name)
    assert steered.endswith("<|im_start|>assistant\n[verbosity:4]\n")
    assert split_steered_prompt(steered) == (base, {"verbosity": 4})


@pytest.mark.parametrize(("text", "named"), [
    ("quality=5", "outside 0–4"),
    ("quality=-1", "outside 0–4"),
    ("quality=high", "not name=value"),
    ("quality=1,quality=2", "given twice"),
    ("Quality=1", "not an attribute name"),
    ("", "no attribute values"),
])
def test_bad_settings_say_what_is_wrong(text, named):
    with pytest.raises(SteerValueError, match=named):
        parse_settings(text)


def test_settings_for_attributes_the_run_was_not_trained_on_are_refused():
    assert check_values({"humor": 1}, allowed=("quality", "humor")) == {"humor": 1}
    with pytest.raises(SteerValueError, match=r"'verbosity' is not an attribute this run was trained on \(trained "
                                              r"on: quality, humor\)"):
        check_values({"verbosity": 1}, allowed=("quality", "humor"))


# The method: a tiny random model learns a known effect (reply length) from rated replies

WORDS = ["apple", "river", "stone", "cloud", "green", "light", "table", "music", "bread", "window"]
N_PROMPTS = 16


def _reply(n_words: int) -> str:
    return " " + " ".join(WORDS[k % len(WORDS)] for k in range(n_words)) + "."


def rate_lengths(store) -> None:  # noqa: ANN001
    """Each prompt answered twice, a short reply rated verbosity 0 and a long one rated 4: only the attribute
    string tells the model which to write."""
    from tiny_model import rendered

    session_id = store.create_session("")
    for i in range(N_PROMPTS):
        prompt = f"Say something ({i})."
        prompt_id = store.add_prompt(session_id, prompt, [])
        for slot, (n_words, value) in enumerate(((1, 0), (10, 4))):
            candidate = store.add_candidate(prompt_id, slot, _reply(n_words), rendered(prompt), "tiny", "0" * 64,
                                            {"temperature": 0.8}, seed=slot)
            store.record_ratings(candidate, {"verbosity": value})


def reply_tokens(model, tokenizer, prompt: str) -> int:  # noqa: ANN001
    """How many tokens the model writes (greedy, up to 40) before its end of sequence."""
    import torch

    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=40, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    return new.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in new else len(new)


@pytest.fixture(scope="module")
def tiny_steer_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir):  # noqa: ANN001, ANN201
    from conftest import prefstudio_home

    from store.studio_store import Store
    from trainers.run.lifecycle import prepare_run
    from trainers.run.process import execute_run
    from trainers.run_config import RunConfig

    root = tmp_path_factory.mktemp("tiny-steerlm")
    with prefstudio_home(root / "home"), Store.open(root / "studio.db") as store:
        rate_lengths(store)
        config = RunConfig(method="steerlm", attributes="verbosity", learning_rate=1e-2, lora_r=8, batch_size=4,
                           dtype="fp32", heldout_fraction=0.125, epochs=25, target_modules="all-linear")
        prepared = prepare_run(store, config, model_path=tiny_model_dir, runs_root=root / "runs")
        outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
        yield store, store.get_run(prepared.run_id), outcome


def test_steerlm_is_registered_and_takes_attributes() -> None:
    from trainers.methods import training_method
    from trainers.methods.steerlm import SteerLMMethod
    from trainers.run_config import RunConfig

    assert isinstance(training_method("steerlm"), SteerLMMethod)
    assert RunConfig(method="steerlm", attributes="verbosity").attributes == "verbosity"


def test_a_tiny_model_follows_verbosity_after_steerlm_and_not_before(tiny_steer_run, tiny_model_dir) -> None:
    from peft import PeftModel
    from tiny_model import rendered
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.methods.steerlm import steer_attributes

    store, run, outcome = tiny_steer_run
    assert outcome.status == "done", outcome.message
    assert steer_attributes(run) == ["verbosity"]  # the run records what it can be steered by
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompts = [rendered(f"Say something ({i}).") for i in range(N_PROMPTS)]

    def lengths(model, value: int) -> list[int]:  # noqa: ANN001
        return [reply_tokens(model, tokenizer, steered_prompt(p, {"verbosity": value}, "transcript")) for p in prompts]

    before_low, before_high = lengths(base, 0), lengths(base, 4)
    tuned = PeftModel.from_pretrained(base, outcome.output_dir)
    after_low, after_high = lengths(tuned, 0), lengths(tuned, 4)
    print("before", before_low, before_high, "after", after_low, after_high, outcome.message)
    # Untrained, the setting changes nothing worth the name; trained, every prompt's reply at 4 is longer.
    assert not all(h > lo for h, lo in zip(before_high, before_low, strict=True))
    assert all(h > lo for h, lo in zip(after_high, after_low, strict=True))
    assert sum(after_high) > 3 * sum(after_low)


def test_steerlm_without_ratings_says_how_to_rate(tmp_path, tiny_model_dir) -> None:  # noqa: ANN001
    from store.studio_store import Store
    from trainers.pair_selection import PairSelectionError
    from trainers.run.lifecycle import prepare_run
    from trainers.run_config import RunConfig

    with Store.open(tmp_path / "studio.db") as store:
        with pytest.raises(PairSelectionError, match=r"--method steerlm needs rated replies, and the store has none: "
                                                     r"rate some replies first"):
            prepare_run(store, RunConfig(method="steerlm"), model_path=tiny_model_dir, runs_root=tmp_path / "runs")
        assert store.list_runs() == []


def test_replies_nobody_rated_are_learnt_with_predicted_values(tmp_path) -> None:  # noqa: ANN001
    from tiny_model import rendered

    from store.studio_store import Store
    from trainers.methods.steerlm import conditioned_example
    from trainers.rating_selection import select_ratings
    from trainers.run_config import RunConfig

    with Store.open(tmp_path / "studio.db") as store:
        session_id = store.create_session("")
        ids = []
        for i in range(4):
            prompt_id = store.add_prompt(session_id, f"Q{i}", [])
            ids.append(store.add_candidate(prompt_id, 0, f" reply {i}", rendered(f"Q{i}"), "tiny", "0" * 64, {},
                                           seed=0))
        store.record_ratings(ids[0], {"humor": 1})
        attributes_run = store.create_run({"method": "attributes"}, "tiny", str(tmp_path / "r"), [], [])
        # The human rating of the first reply wins over its prediction; the others are predicted only.
        store.record_predicted_ratings(attributes_run, "candidate", {ids[0]: {"humor": 4.0}, ids[1]: {"humor": 3.4},
                                                                     ids[2]: {"humor": 0.2}})
        picked = select_ratings(store, RunConfig(method="steerlm", heldout_fraction=0.0))
        found = {e.example_id: e for e in picked.train}
        assert set(found) == {f"c{ids[0]}", f"p{ids[1]}", f"p{ids[2]}"}
        assert found[f"c{ids[0]}"].ratings == {"humor": 1.0}
        assert picked.report.origins == {"rated": 1, "predicted": 2, "dataset": 0}
        assert conditioned_example(found[f"p{ids[1]}"], "transcript").prompt == rendered("Q1") + " [humor:3]"
        # The attribute model itself learns from human ratings only.
        assert [e.example_id for e in select_ratings(store, RunConfig(method="attributes",
                                                                      heldout_fraction=0.0)).train] == [f"c{ids[0]}"]


# prefstudio generate --attributes


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A store with a finished SteerLM run trained on verbosity (no adapter needed: every case is refused
    before the model loads) and a DPO run."""
    from store.studio_store import Store

    db = tmp_path_factory.mktemp("steer-cli") / "studio.db"
    with Store.open(db) as store:
        steer = store.create_run({"method": "steerlm"}, "m", str(db.parent / "r1"), [], [])
        store.set_run_summary(steer, {"steer_attributes": ["verbosity"]})
        store.set_run_status(steer, "done", "done")
        dpo = store.create_run({"method": "dpo"}, "m", str(db.parent / "r2"), [], [])
        store.set_run_status(dpo, "done", "done")
    return db, steer, dpo


@pytest.mark.parametrize(("args", "message"), [
    (["--attributes", "verbosity=1"], "--attributes needs --run N: the SteerLM run whose adapter follows"),
    (["--attributes", "verbosity=7", "--run", "{steer}"], "verbosity=7 is outside 0–4"),
    (["--attributes", "humor=1", "--run", "{steer}"],
     "'humor' is not an attribute this run was trained on (trained on: verbosity)"),
    (["--attributes", "verbosity=high", "--run", "{steer}"], "'verbosity=high' is not name=value"),
    (["--attributes", "verbosity=1", "--run", "{dpo}"], "is a dpo run, not a SteerLM run"),
])
def test_generate_refuses_bad_attribute_values_clearly(cli_runs, studio_home, args, message) -> None:  # noqa: ANN001
    from conftest import run_cli

    db, steer, dpo = cli_runs
    proc = run_cli("--db", str(db), "generate", "Hi", *[a.format(steer=steer, dpo=dpo) for a in args],
                   home=studio_home)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_generate_answers_with_the_values_in_the_prompt(trained_steer_run, studio_home) -> None:  # noqa: ANN001
    import json

    from conftest import run_cli

    folder, run_id = trained_steer_run
    proc = run_cli("--db", str(folder / "studio.db"), "generate", "Name a fruit.", "--run", str(run_id),
                   "--attributes", "verbosity=4", "--json", "-n", "1", "--max-tokens", "8", "--seed", "1",
                   home=studio_home, timeout=300)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["rendered_prompt"].endswith("User: Name a fruit.\nAssistant: [verbosity:4]")
    assert payload["steer"] == {"verbosity": 4}
    assert payload["candidates"][0]["n_tokens"] > 0


# prefstudio compare --steer A --steer B


def test_compare_steer_needs_two_settings_the_run_was_trained_on(cli_runs, studio_home) -> None:  # noqa: ANN001
    from conftest import run_cli

    db, steer, dpo = cli_runs
    once = run_cli("--db", str(db), "compare", "--run", str(steer), "--steer", "verbosity=0", home=studio_home)
    assert once.returncode == 1 and "--steer is given 1 time(s): give it twice" in once.stderr
    other = run_cli("--db", str(db), "compare", "--run", str(steer), "--steer", "humor=0", "--steer", "humor=4",
                    home=studio_home)
    assert other.returncode == 1 and "'humor' is not an attribute this run was trained on" in other.stderr
    dpo_run = run_cli("--db", str(db), "compare", "--run", str(dpo), "--steer", "verbosity=0", "--steer",
                      "verbosity=4", home=studio_home)
    assert dpo_run.returncode == 1 and "not a SteerLM run" in dpo_run.stderr
    assert "Traceback" not in once.stderr + other.stderr + dpo_run.stderr


def test_compare_steer_answers_the_same_prompts_at_both_settings(trained_steer_run, studio_home) -> None:  # noqa: ANN001
    import json

    from conftest import run_cli

    from store.studio_store import Store
    from studio.evaluation.steer_comparison import EVALUATION_KIND

    folder, run_id = trained_steer_run
    proc = run_cli("--db", str(folder / "studio.db"), "compare", "--run", str(run_id), "--steer", "verbosity=0",
                   "--steer", "verbosity=4", "--limit", "2", "--max-tokens", "6", "--temperature", "0", "--json",
                   home=studio_home, timeout=300)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["settings"] == [{"verbosity": 0}, {"verbosity": 4}]
    assert len(payload["rows"]) == 2 and all(r["first_text"] or r["second_text"] for r in payload["rows"])
    with Store.open(folder / "studio.db") as store:
        assert store.latest_evaluation(run_id, EVALUATION_KIND)["settings"] == payload["settings"]
    text = run_cli("--db", str(folder / "studio.db"), "compare", "--run", str(run_id), "--steer", "verbosity=0",
                   "--steer", "verbosity=4", "--limit", "1", "--max-tokens", "4", "--temperature", "0",
                   home=studio_home, timeout=300)
    assert text.returncode == 0, text.stderr
    assert "[verbosity:0] vs [verbosity:4]" in text.stdout and "  [verbosity:4] " in text.stdout


def test_the_report_shows_the_steering_side_by_side() -> None:
    from studio.evaluation.report import _steering, render_markdown
    from studio.evaluation.steer_comparison import SteerComparison, SteerRow

    stored = SteerComparison(3, [{"verbosity": 0}, {"verbosity": 4}], "prompt bank 'general'",
                             [SteerRow("Name a fruit.", "Apple.", "An apple is a sweet fruit that grows on trees.", 7)])
    text = render_markdown(_steering(stored.to_dict(), 5))
    assert "## Steering side by side" in text
    assert "[verbosity:0] and at [verbosity:4]" in text
    assert "An apple is a sweet fruit" in text and "Prompt 1 (seed 7)" in text
    assert _steering(None, 5) == []
    assert SteerComparison.from_dict(stored.to_dict()) == stored
