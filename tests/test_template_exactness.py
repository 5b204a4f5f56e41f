"""A model's own chat template, rendered exactly as llama.cpp renders it, evaluated with BOS once, stopped at
the model's end of turn, and tokenised for training into the very ids llama.cpp evaluated.

The witness is llama-cpp-python's own chat path: ``Jinja2ChatFormatter`` built from the GGUF's template and
token texts, its prompt tokenised with ``add_bos=not added_special, special=True``, as
``chat_formatter_to_chat_completion_handler`` does. Real models throughout: SmolLM2-135M-Instruct (ChatML,
BPE, no BOS added by the tokenizer) and Gemma 3 270M (SentencePiece, BOS added by the tokenizer).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import prefstudio_home
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from store.studio_store import Store
from studio.inference.engine import ChatEngine, EngineConfig, SamplingSettings
from studio.judging import Judgement, JudgingSession
from trainers.prompt_format import ChatTemplateFormat, ChatTurn

TEMPLATE_MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")

# (system text, turns): no system text (SmolLM2's template then writes its own), a system text, several turns.
CONVERSATIONS = {
    "single question": ("", [("user", "What is the capital of France?")]),
    "system prompt": ("Answer in one short sentence.", [("user", "Why is the sky blue?")]),
    "multi-turn": ("Be kind.", [("user", "Hi!"), ("assistant", "Hello! How can I help?"),
                                ("user", "Tell me a fact."), ("assistant", "Honey never spoils."),
                                ("user", "Another one, with ünïcödé and <b>tags</b>.")]),
}


def turns_of(conversation: tuple[str, list[tuple[str, str]]]) -> tuple[str, list[ChatTurn]]:
    system, turns = conversation
    return system, [ChatTurn(role, text) for role, text in turns]


def messages_of(system: str, turns: list[ChatTurn]) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": t.role, "content": t.content} for t in turns]


def llama_cpp_python_ids(engine: ChatEngine, template: str, system: str, turns: list[ChatTurn]) -> tuple[str, list[int]]:
    """What llama-cpp-python's chat completion renders and evaluates for this conversation."""
    fmt = engine.prompt_format
    assert isinstance(fmt, ChatTemplateFormat)
    formatter = Jinja2ChatFormatter(template, eos_token=fmt.eos_token, bos_token=fmt.bos_token)
    result = formatter(messages=messages_of(system, turns))
    ids = engine.llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
    return result.prompt, ids


@pytest.fixture(scope="module")
def smollm2_engine(smollm2_model):
    eng = ChatEngine(EngineConfig(model_path=smollm2_model, n_ctx=1024))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def gemma_templated_engine(default_model, tmp_path_factory):
    """Gemma 3 270M with Gemma 3's own chat template (TRL's copy of it): a template that writes ``<bos>``
    for a tokenizer that adds BOS too, the case that gives two BOS tokens when nobody looks."""
    import trl
    from test_bad_inputs import with_chat_template

    template = (Path(trl.__file__).parent / "chat_templates" / "gemma3.jinja").read_text()
    path = with_chat_template(default_model, tmp_path_factory.mktemp("gemma-templated") / "gemma3-it.gguf", template)
    eng = ChatEngine(EngineConfig(model_path=path, n_ctx=1024))
    yield eng
    eng.close()


# --- 1. rendering: the same text and the same token ids as llama.cpp's chat path -------------------------


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_smollm2_prompt_is_what_llama_cpp_renders_and_evaluates(smollm2_engine, name):
    system, turns = turns_of(CONVERSATIONS[name])
    ours = smollm2_engine.prompt_format.render(system, turns)
    theirs, their_ids = llama_cpp_python_ids(smollm2_engine, smollm2_engine.info.chat_template, system, turns)
    assert ours == theirs
    ids = smollm2_engine.tokenize(ours)
    assert ids == their_ids
    # Every <|im_start|> is the one special token (id 1, also SmolLM2's BOS), never "<", "|", "im" pieces; the
    # prompt opens with it once (the tokenizer adds no BOS of its own), and the default system turn is there
    # when the user gave none.
    im_start = smollm2_engine.llama.tokenize(b"<|im_start|>", add_bos=False, special=True)
    assert im_start == [1]
    n_messages = len(turns) + 1  # the system turn: the user's, or the template's default
    assert ids[0] == 1 and ids[1] != 1
    assert ids.count(1) == n_messages + 1  # each message, and the assistant turn the reply goes in
    assert ours.startswith("<|im_start|>system\n")
    if not system:
        assert "You are a helpful AI assistant named SmolLM" in ours


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_gemma_template_writing_bos_for_a_tokenizer_that_adds_it_gives_bos_once(gemma_templated_engine, name):
    engine = gemma_templated_engine
    system, turns = turns_of(CONVERSATIONS[name])
    ours = engine.prompt_format.render(system, turns)
    theirs, their_ids = llama_cpp_python_ids(engine, engine.info.chat_template, system, turns)
    assert theirs == "<bos>" + ours  # the template's BOS text is left to the tokenizer, which adds it
    ids = engine.tokenize(ours)
    assert ids == their_ids
    bos = engine.llama.token_bos()
    assert ids[0] == bos and ids.count(bos) == 1
    assert ids.count(engine.llama.tokenize(b"<start_of_turn>", add_bos=False, special=True)[0]) == len(
        [t for t in turns]) + 1


def test_gemma_transcript_prompt_has_bos_once(engine):
    system, turns = turns_of(CONVERSATIONS["multi-turn"])
    ids = engine.tokenize(engine.prompt_format.render(system, turns))
    bos = engine.llama.token_bos()
    assert ids[0] == bos and ids.count(bos) == 1


# What llama-cpp-python's environment (and transformers') offers a template beyond plain Jinja: break /
# continue, the {% generation %} tag, tojson keeping non-ASCII and '<' as they are, strftime_now.
ENVIRONMENT_TEMPLATES = {
    "loop controls": ("{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}"
                      "[{{ m['role'] }}] {{ m['content'] }}\n{% if loop.index > 3 %}{% break %}{% endif %}"
                      "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"),
    "generation tag": ("{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}"
                       "{{ m['content'] }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}\n{% endfor %}"),
    "tojson": "{% for m in messages %}{{ m | tojson }}\n{{ m['content'] | tojson(indent=2) }}\n{% endfor %}",
    "strftime_now": "{{ strftime_now('%Y') }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
}


@pytest.mark.parametrize("name", list(ENVIRONMENT_TEMPLATES))
def test_template_features_render_as_in_llama_cpp_python(name):
    template = ENVIRONMENT_TEMPLATES[name]
    system, turns = turns_of(CONVERSATIONS["multi-turn"])
    ours = ChatTemplateFormat(template=template, tokenizer_adds_bos=False).render(system, turns)
    theirs = Jinja2ChatFormatter(template, eos_token="", bos_token="")(messages=messages_of(system, turns)).prompt
    assert ours == theirs


def test_tojson_indent_is_capped_before_it_builds_anything():
    from trainers.prompt_format import PromptFormatError, format_for_metadata

    with pytest.raises(PromptFormatError, match="tojson"):
        format_for_metadata({"tokenizer.chat_template": "{{ messages | tojson(indent=1000000000) }}"})


# --- 2. replies end at the model's end of turn, with no template text --------------------------------------


def test_smollm2_stops_at_its_end_of_turn_tokens(smollm2_engine):
    stop = smollm2_engine.prompt_format.stop
    assert "<|im_end|>" in stop and "<|endoftext|>" in stop


@pytest.mark.parametrize("question", ["What is the capital of France?", "Name a colour.", "Say hello."])
def test_smollm2_replies_end_at_end_of_turn_without_template_text(smollm2_engine, question):
    prompt = smollm2_engine.prompt_format.render("", [ChatTurn("user", question)])
    for seed in (1, 2, 3):
        reply = smollm2_engine.generate(prompt, SamplingSettings(max_tokens=160), seed)
        assert reply.text.strip()
        assert not any(marker in reply.text for marker in TEMPLATE_MARKERS), reply.text
        assert reply.finish_reason == "stop", (seed, reply.text)


# --- 3. the stored prompt is what training tokenises --------------------------------------------------------


def judged_pairs(store: Store, engine: ChatEngine, questions: list[str]):
    """Ask ``questions`` in one JudgingSession, keep candidate A each time; the training pairs read back."""
    from trainers.pair_selection import from_store_pairs

    session = JudgingSession(store, "Answer briefly.", engine.identity.model_id,
                             sampling=SamplingSettings(max_tokens=24), n_candidates=2, base_seed=7, engine=engine)
    for question in questions:
        round_ = session.prepare(question)
        assert session.generate(round_) is not None
        session.store_candidates(round_)
        session.record(round_, Judgement.prefer(0, 1))
    return from_store_pairs(store.pairs())


def assert_training_ids_are_llama_cpp_ids(engine: ChatEngine, tokenizer, pairs) -> None:  # noqa: ANN001
    """TRL's DPO tokenisation of each stored pair (trl.data_utils._tokenize, EOS appended to the replies,
    the prompt cut where prompt and prompt+reply diverge) keeps the prompt ids llama.cpp evaluated."""
    from trl.data_utils import _tokenize, common_prefix_length

    assert pairs
    for pair in pairs:
        row = pair.to_trl()
        prompt_ids = _tokenize(tokenizer, row["prompt"])["input_ids"]
        assert prompt_ids == engine.tokenize(row["prompt"]), row["prompt"]
        for reply in (row["chosen"], row["rejected"]):
            full = _tokenize(tokenizer, row["prompt"] + reply + tokenizer.eos_token)["input_ids"]
            assert common_prefix_length(prompt_ids, full) == len(prompt_ids)
            assert full[-1] == tokenizer.eos_token_id


@pytest.mark.slow
def test_smollm2_stored_prompt_tokenises_for_training_into_the_ids_llama_cpp_evaluated(
        smollm2_engine, smollm2_model, session_home, tmp_path):
    from trainers.model_source import load_tokenizer, resolve_model_source

    with Store.open(tmp_path / "studio.db") as store:
        pairs = judged_pairs(store, smollm2_engine, ["Name a fruit.", "And a vegetable?"])
        # The second prompt holds the first exchange in ChatML, with the kept reply as the assistant turn.
        first, second = pairs
        assert second.prompt.startswith(first.prompt)
        assert f"{first.chosen}<|im_end|>\n<|im_start|>user\nAnd a vegetable?<|im_end|>" in second.prompt
    with prefstudio_home(session_home):  # the converted weights are shared by every test of the run
        tokenizer = load_tokenizer(resolve_model_source(smollm2_model, sha256=smollm2_engine.identity.sha256).model_dir)
    assert tokenizer.eos_token == "<|im_end|>"
    assert_training_ids_are_llama_cpp_ids(smollm2_engine, tokenizer, pairs)


@pytest.mark.slow
def test_gemma_stored_prompt_tokenises_for_training_into_the_ids_llama_cpp_evaluated(
        engine, gemma_templated_engine, default_model, session_home, tmp_path):
    from trl.data_utils import _tokenize

    from trainers.model_source import load_tokenizer_for

    with Store.open(tmp_path / "studio.db") as store:
        pairs = judged_pairs(store, engine, ["Name a fruit.", "And a vegetable?"])
    with prefstudio_home(session_home):
        # The converted model's tokenizer when a test converted it already, else the GGUF's own (cached by sha256).
        tokenizer = load_tokenizer_for(default_model, sha256=engine.identity.sha256)
    assert_training_ids_are_llama_cpp_ids(engine, tokenizer, pairs)
    # Gemma's own chat template writes <bos> and the HF tokenizer adds one too: still one BOS, llama.cpp's ids.
    system, turns = turns_of(CONVERSATIONS["multi-turn"])
    templated = gemma_templated_engine.prompt_format.render(system, turns)
    ids = _tokenize(tokenizer, templated)["input_ids"]
    assert ids == gemma_templated_engine.tokenize(templated) and ids.count(tokenizer.bos_token_id) == 1


# --- 4. a template that cannot render: named at load, the transcript only when the user asks ----------------

BROKEN_TEMPLATE = "{% for m in messages %}{{ render_turn(m) }}{% endfor %}"  # a helper this runtime lacks


@pytest.fixture(scope="module")
def broken_smollm2(smollm2_model, tmp_path_factory) -> Path:
    from test_bad_inputs import with_chat_template

    return with_chat_template(smollm2_model, tmp_path_factory.mktemp("broken") / "smollm2-broken.gguf",
                              BROKEN_TEMPLATE)


def test_a_template_that_fails_to_render_is_refused_at_load_naming_the_model_and_the_error(broken_smollm2):
    from studio.inference.engine import EngineError

    with pytest.raises(EngineError) as refused:
        ChatEngine(EngineConfig(model_path=broken_smollm2, n_ctx=256))
    message = str(refused.value)
    assert "smollm2-broken.gguf" in message and "tokenizer.chat_template" in message
    assert "'render_turn' is undefined" in message
    assert "--prompt-format transcript" in message


def test_the_transcript_format_is_used_for_a_broken_template_only_when_asked(broken_smollm2):
    eng = ChatEngine(EngineConfig(model_path=broken_smollm2, n_ctx=256, prompt_format="transcript"))
    try:
        assert eng.prompt_format.name == "transcript"
        fitted = eng.fit_prompt("Be brief.", [ChatTurn("user", "Hi")], max_tokens=8)
        assert fitted.text == "Be brief.\n\nUser: Hi\nAssistant:"
    finally:
        eng.close()


def test_cli_names_the_broken_template_and_takes_prompt_format_transcript(broken_smollm2, tmp_path):
    import json

    from conftest import run_cli

    home = tmp_path / "home"
    args = ["--model", str(broken_smollm2), "generate", "Hi", "-n", "1", "--max-tokens", "4", "--json"]
    refused = run_cli(*args, home=home)
    assert refused.returncode == 1
    assert "smollm2-broken.gguf" in refused.stderr and "'render_turn' is undefined" in refused.stderr
    assert "Traceback" not in refused.stderr
    answered = run_cli("--prompt-format", "transcript", *args, home=home, check=True)
    assert json.loads(answered.stdout)["rendered_prompt"].endswith("User: Hi\nAssistant:")


def test_prompt_format_setting_is_checked_in_the_flag_and_the_config_file(tmp_path, studio_home):
    from studio.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="--prompt-format must be one of auto, transcript, got 'jinja'"):
        load_settings(None, prompt_format="jinja")
    config = tmp_path / "config.toml"
    config.write_text('prompt_format = "chatml"\n')
    with pytest.raises(SettingsError, match=r"config.toml: prompt_format must be one of auto, transcript"):
        load_settings(config)
    config.write_text('prompt_format = "transcript"\n')
    assert load_settings(config).prompt_format == "transcript"
    assert load_settings(config, prompt_format="auto").prompt_format == "auto"
