"""The real llama.cpp engine on the real default model: a few tokens, fixed seeds."""

import pytest

from studio.inference.engine import ChatEngine, EngineConfig, EngineError, SamplingSettings
from trainers.prompt_format import ChatTurn

SHORT = SamplingSettings(max_tokens=12)


def test_same_seed_same_text_and_settings_are_recorded(engine):
    fitted = engine.fit_prompt("Answer briefly.", [ChatTurn("user", "Name a colour.")], SHORT.max_tokens)
    # The same seed from the same engine state: llama-cpp-python reuses the cached prefix of the last evaluation,
    # and a prompt evaluated in other batches (all of it, or only its unmatched tail) gives slightly different
    # logits, so what the shared engine served before (another test's prompt) must not differ between the two.
    engine.llama.reset()
    first = engine.generate(fitted.text, SHORT, seed=11)
    engine.llama.reset()
    again = engine.generate(fitted.text, SHORT, seed=11)
    assert first.text == again.text
    assert first.seed == 11 and first.sampling == SHORT
    assert first.finish_reason in ("stop", "length")
    assert 0 < first.n_tokens <= SHORT.max_tokens + 1


def test_different_seeds_explore_different_replies(engine):
    fitted = engine.fit_prompt("", [ChatTurn("user", "Tell me something about the sea.")], 16)
    sampling = SamplingSettings(max_tokens=16, temperature=1.0)
    texts = {engine.generate(fitted.text, sampling, seed=s).text for s in range(5)}
    assert len(texts) >= 2


def test_tokens_stream_in_order_and_cancel_stops_early(engine):
    fitted = engine.fit_prompt("", [ChatTurn("user", "Count from one to fifty in words.")], 40)
    pieces: list[str] = []
    gen = engine.generate(
        fitted.text, SamplingSettings(max_tokens=40, temperature=0.0), seed=1,
        on_token=pieces.append, should_stop=lambda: len(pieces) >= 3,
    )
    assert gen.cancelled and gen.finish_reason == "cancelled"
    assert "".join(pieces) == gen.text and len(pieces) == 3


def test_overflowing_context_drops_the_oldest_turns(default_model):
    small = ChatEngine(EngineConfig(model_path=default_model, n_ctx=128))
    try:
        assert small.n_ctx == 128  # llama.cpp pads to 256 internally; the usable size is what we asked

        history = []
        for i in range(6):
            history += [ChatTurn("user", f"Question {i}: " + "tell me more " * 6),
                        ChatTurn("assistant", "Here is more. " * 5)]
        fitted = small.fit_prompt("sys", [*history, ChatTurn("user", "Last question?")], max_tokens=32)
        assert fitted.dropped_turns >= 2 and fitted.dropped_turns % 2 == 0
        assert fitted.n_tokens + 32 <= small.n_ctx
        assert fitted.text.endswith("User: Last question?\nAssistant:")
        assert "Question 0" not in fitted.text
        with pytest.raises(EngineError, match="does not fit"):
            small.fit_prompt("", [ChatTurn("user", "word " * 400)], max_tokens=32)
    finally:
        small.close()


def test_an_adapter_file_is_not_loaded_as_a_model(tmp_path, default_model):
    from gguf import GGUFWriter

    path = tmp_path / "adapter.gguf"
    writer = GGUFWriter(str(path), "gemma3")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    import numpy as np

    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((4, 640), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(EngineError, match="is a LoRA adapter"):
        ChatEngine(EngineConfig(model_path=path))


def test_control_and_modality_tokens_are_never_sampled(engine):
    def token(text: str) -> int:
        ids = engine.llama.tokenize(text.encode(), add_bos=False, special=True)
        assert len(ids) == 1, text
        return ids[0]

    banned = engine._banned
    for text in ("<start_of_image>", "<unused0>", "<start_of_turn>", "<pad>"):
        assert banned[token(text)], text
    for text in ("<eos>", "<end_of_turn>", " Hello", "<table>", "\n\n"):
        assert not banned[token(text)], text
    import numpy as np

    scores = np.zeros(banned.size, dtype=np.float32)  # what the sampler's logits processor is handed
    engine._ban_unprintable(None, scores)
    assert np.array_equal(np.isneginf(scores), banned)  # exactly the banned tokens, every one of them


@pytest.mark.parametrize("template, phrase", [
    ("{% for m in messages %}{{ m.content }", "syntax error on line 1"),
    ("{{ raise_exception('This model needs a tool list') }}", "the template refused: This model needs a tool list"),
    ("{{ 'x' * 10 ** 10 }}", "would build 10,000,000,000 characters"),
])
def test_a_model_whose_chat_template_fails_is_refused_at_load_naming_file_and_problem(tmp_path, template, phrase):
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "bad-template.gguf"
    writer = GGUFWriter(str(path), "gemma3")
    writer.add_string("tokenizer.chat_template", template)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(EngineError) as caught:
        ChatEngine(EngineConfig(model_path=path))
    message = str(caught.value)
    assert str(path) in message and "tokenizer.chat_template" in message and phrase in message


def test_a_conversation_the_template_refuses_is_an_engine_error_naming_the_model(engine):
    from trainers.prompt_format import ChatTemplateFormat

    template = ("{% for m in messages %}{% if '[/]' in m['content'] %}{{ raise_exception('no brackets') }}"
                "{% endif %}{{ m['content'] }}\n{% endfor %}")
    original = engine.prompt_format
    engine.prompt_format = ChatTemplateFormat(template=template)
    try:
        assert engine.fit_prompt("", [ChatTurn("user", "fine")], 8).text == "fine\n"
        with pytest.raises(EngineError, match=r"gemma-3-270m.*cannot be rendered.*no brackets"):
            engine.fit_prompt("", [ChatTurn("user", "a [/] here")], 8)
    finally:
        engine.prompt_format = original


def test_an_adapter_switch_is_refused_while_another_owner_holds_the_engine(engine):
    """Candidates of one prompt are generated under one adapter: a switch from elsewhere during the job
    is refused with EngineBusy naming the job; the owner itself may switch; afterwards anyone may."""
    import threading

    from studio.inference.engine import EngineBusy

    holding, release = threading.Event(), threading.Event()

    def job() -> None:
        with engine.session("generating candidates"):
            engine.activate_adapter(None)  # re-entrant for the owner
            holding.set()
            release.wait(30)

    owner = threading.Thread(target=job)
    owner.start()
    try:
        assert holding.wait(30)
        assert engine.owner == "generating candidates"
        with pytest.raises(EngineBusy, match="generating candidates"):
            engine.activate_adapter(None)
        with pytest.raises(EngineBusy):
            engine.load_adapter("nothing", engine.identity.path)
    finally:
        release.set()
        owner.join(30)
    assert engine.owner is None
    engine.activate_adapter(None)
    gen = engine.generate(engine.fit_prompt("", [ChatTurn("user", "Hi.")], 4).text, SamplingSettings(max_tokens=4), 1)
    assert gen.adapter is None  # the base model wrote it
