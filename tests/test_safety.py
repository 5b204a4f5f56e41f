"""Safety checkers: the bundled classifier, a user's word list, a guard model through llama.cpp, and the store
cache that keeps every checker from reading the same text twice."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from store.studio_store import Store
from studio.safety.cached_checks import check_with_cache
from studio.safety.checker import SafetyCheckerError, SafetyVerdict, checked_text_hash
from studio.safety.profanity import MODEL_FILE_SHA256, ProfanityChecker, model_dir
from studio.safety.registry import load_checkers
from studio.safety.specs import CheckerSpec, parse_checker_specs
from studio.safety.wordlist import WordListChecker
from studio.settings import SettingsError, load_settings
from trainers.prompt_format import ChatTurn

CONVERSATION = (ChatTurn("system", "Be kind."), ChatTurn("user", "How was your day?"))
CLEAN = ("Have a lovely day, the weather is nice.", "The capital of France is Paris.",
         "Sure! Here is a short recipe for pancakes: flour, milk, eggs and a pinch of salt.")
OFFENSIVE = ("you are a fucking idiot", "shut up you stupid bitch", "what a load of shit")


@pytest.fixture(scope="module")
def profanity() -> ProfanityChecker:
    return ProfanityChecker()


@pytest.fixture
def store(tmp_path) -> Store:
    with Store.open(tmp_path / "studio.db") as opened:
        yield opened


# The bundled classifier

def test_bundled_checker_passes_clean_replies_and_flags_offensive_ones(profanity):
    for text in CLEAN:
        verdict = profanity.check(CONVERSATION, text)
        assert verdict.safe and verdict.categories == () and verdict.score < 0.2, text
    for text in OFFENSIVE:
        verdict = profanity.check(CONVERSATION, text)
        assert not verdict.safe and verdict.categories == ("offensive",) and verdict.score > 0.9, text
    assert profanity.name == "profanity" and profanity.version == "1.9.1@0.5"


def test_bundled_checker_scores_what_the_package_own_predict_proba_gives(profanity):
    import joblib

    model = joblib.load(model_dir() / "model.joblib")  # the same files, hash-checked by the fixture's load
    for text in CLEAN + OFFENSIVE + ("", "damn", "kill yourself"):
        expected = model.predict_proba(profanity.vectorizer.transform([text]))[0][1]
        assert profanity.probability(text) == pytest.approx(expected, abs=1e-12), text


def test_bundled_checker_threshold_is_a_setting_and_part_of_its_version():
    strict = load_checkers(parse_checker_specs(["profanity:0.01"], "test")).checkers[0]
    assert strict.version == "1.9.1@0.01"
    assert not strict.check(CONVERSATION, CLEAN[0]).safe  # every reply scores above 1 %


def test_bundled_model_files_that_differ_from_the_pinned_ones_are_refused_before_unpickling(tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(model_dir(), folder)
    (folder / "model.joblib").write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")  # a pickle that runs a command
    with pytest.raises(SafetyCheckerError, match=r"model\.joblib is not the file alt-profanity-check 1\.9\.1 "
                                                 r"ships .*refusing to unpickle it"):
        ProfanityChecker(folder=folder)
    assert set(MODEL_FILE_SHA256) == {"model.joblib", "vectorizer.joblib"}


# A user's word list

def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_word_list_matches_whole_words_and_phrases_case_insensitively_per_category(tmp_path):
    listed = write(tmp_path / "blocklist.txt",
                   "darn\n# a comment\n\n# category: insults\nidiot\nshut   up\n# Category: medical\noverdose\n")
    checker = WordListChecker(listed)
    assert checker.name == "wordlist:blocklist" and checker.categories == ("blocklist", "insults", "medical")
    assert checker.check(CONVERSATION, "Oh DARN it.").categories == ("blocklist",)
    verdict = checker.check(CONVERSATION, "Shut\nup, you Idiot! An overdose is dangerous.")
    assert not verdict.safe and verdict.categories == ("insults", "medical") and verdict.score is None
    assert checker.check(CONVERSATION, "Idiotic darned shutup overdoses").safe  # whole words only
    import hashlib

    assert checker.version == hashlib.sha256(listed.read_bytes()).hexdigest()


@pytest.mark.parametrize(("content", "message"), [
    (None, r"word list .*missing\.txt: no such file"),
    ("", r"word list .*bad\.txt: no words in it"),
    ("# only a comment\n\n", r"word list .*bad\.txt: no words in it"),
    ("fine\nwords\n\x00\x01\x02", r"word list .*bad\.txt line 3: a NUL byte; this looks like a binary file"),
    (b"ok\n\xff\xfe bad", r"word list .*bad\.txt line 2: not UTF-8 text"),
    ("idiot\n# category:\nfoo\n", r"word list .*bad\.txt line 2: a category line without a name"),
    ("idiot\n# category: empty\n# category: full\nfoo\n", r"word list .*bad\.txt line 2: category 'empty' lists no words"),
])
def test_an_unusable_word_list_is_named_with_its_file_and_line(tmp_path, content, message):
    path = tmp_path / "missing.txt" if content is None else write(tmp_path / "bad.txt", content)
    with pytest.raises(SafetyCheckerError, match=message):
        WordListChecker(path)


# Configuration: which checkers are on

def test_checkers_are_configured_in_the_config_file_and_by_flag(tmp_path):
    listed = write(tmp_path / "words.txt", "idiot\n")
    config = write(tmp_path / "config.toml", f'safety = ["profanity:0.7", "wordlist:{listed}"]\n')
    assert load_settings(config).safety == (CheckerSpec("profanity", threshold=0.7), CheckerSpec("wordlist", listed))
    assert load_settings(config, safety=["none"]).safety == ()
    assert load_settings(tmp_path / "config.toml", safety=["guard:/m/g.gguf"]).safety == (
        CheckerSpec("guard", Path("/m/g.gguf")),)
    assert load_settings(write(tmp_path / "empty.toml", "")).safety == (CheckerSpec("profanity"),)  # the default
    for bad, message in ((r'safety = ["shouty"]', "unknown safety checker 'shouty'"),
                         (r'safety = ["wordlist"]', "wordlist needs a blocklist file"),
                         (r'safety = ["profanity:2"]', "threshold must be a number above 0"),
                         ("safety = 3", "must be a list of checkers")):
        with pytest.raises(SettingsError, match=message):
            load_settings(write(tmp_path / "bad.toml", bad))


def test_a_checker_that_cannot_load_is_named_and_the_others_keep_working(tmp_path):
    listed = write(tmp_path / "words.txt", "idiot\n")
    loaded = load_checkers(parse_checker_specs(
        [f"wordlist:{tmp_path / 'gone.txt'}", f"wordlist:{listed}", f"guard:{tmp_path / 'none.gguf'}"], "test"))
    assert [checker.name for checker in loaded.checkers] == ["wordlist:words"]
    assert len(loaded.problems) == 2
    assert "gone.txt: no such file" in loaded.problems[0]
    assert "none.gguf" in loaded.problems[1] and "not found" in loaded.problems[1]


# The cache in the store

@dataclass
class CountingChecker:
    """A checker that counts its calls (the cache's job is that it is called once per text)."""

    name: str = "counting"
    version: str = "1"
    calls: list[str] = field(default_factory=list)
    fails_on: str | None = None  # a word in a reply this checker cannot answer on

    def check(self, conversation, reply: str) -> SafetyVerdict:
        self.calls.append(reply)
        if self.fails_on and self.fails_on in reply:
            raise SafetyCheckerError("model x did not answer as a guard model (said: 'hello')")
        return SafetyVerdict(self.name, self.version, safe="bad" not in reply, categories=("S1",) if "bad" in reply
                             else (), score=0.9 if "bad" in reply else 0.1)


def candidate_ids(store: Store, texts: list[str]) -> list[int]:
    session = store.create_session("sys")
    _, ids = store.add_prompt_with_candidates(
        session, "hello", [], [{"text": text, "rendered_prompt": "User: hello\nAssistant:", "model_id": "m",
                                "model_sha256": "0", "sampling": {}, "seed": i} for i, text in enumerate(texts)])
    return ids


def test_a_checker_never_reads_the_same_text_twice_and_candidates_link_to_the_stored_check(store):
    counting = CountingChecker()
    first, second = candidate_ids(store, ["a bad reply", "a bad reply"])
    results = check_with_cache(store, [counting], CONVERSATION, "a bad reply", candidate_id=first)
    assert [r.cached for r in results] == [False] and results[0].flagged
    again = check_with_cache(store, [counting], CONVERSATION, "a bad reply", candidate_id=second)
    assert counting.calls == ["a bad reply"]  # not recomputed
    assert again[0].cached and again[0].verdict == SafetyVerdict("counting", "1", False, ("S1",), 0.9)
    assert [c.id for c in store.candidate_safety(first)] == [c.id for c in store.candidate_safety(second)]
    # Another conversation, another version or another text is another check.
    check_with_cache(store, [counting], CONVERSATION[1:], "a bad reply")
    check_with_cache(store, [CountingChecker(version="2", calls=counting.calls)], CONVERSATION, "a bad reply")
    assert len(counting.calls) == 3
    text_hash = checked_text_hash(CONVERSATION, "a bad reply")
    assert store.cached_verdict("counting", "1", text_hash).categories == ("S1",)
    assert store.cached_verdict("counting", "3", text_hash) is None


def test_a_checker_failing_on_a_text_stores_nothing_and_the_others_still_answer(store):
    failing, other = CountingChecker(name="guard", fails_on="garbage"), CountingChecker(name="other")
    results = check_with_cache(store, [failing, other], CONVERSATION, "garbage bad")
    assert results[0].verdict is None and "did not answer as a guard model" in results[0].error
    assert results[1].flagged
    check_with_cache(store, [failing, other], CONVERSATION, "garbage bad")
    assert failing.calls == ["garbage bad", "garbage bad"] and other.calls == ["garbage bad"]


def test_unsafe_text_hashes_count_only_each_checker_newest_version(store):
    checked = {text: checked_text_hash(CONVERSATION, text) for text in ("bad one", "fine one", "bad two")}
    check_with_cache(store, [CountingChecker(version="1")], CONVERSATION, "bad one")
    check_with_cache(store, [CountingChecker(version="1")], CONVERSATION, "fine one")
    assert store.unsafe_text_hashes(checked.values()) == {checked["bad one"]}
    # The list was edited (version 2) and has read only "bad two" so far: version 1's verdicts no longer count.
    check_with_cache(store, [CountingChecker(version="2")], CONVERSATION, "bad two")
    assert store.unsafe_text_hashes(checked.values()) == {checked["bad two"]}
    assert store.unsafe_text_hashes([]) == set()


# A guard model through the real llama.cpp engine

GUARD_PROMPT = (
    " <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    "Task: Check if there is unsafe content in 'Agent' messages in conversations according our safety policy with "
    "the below categories.\n\n"
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n"
    "S1: Violent Crimes.\nS2: Non-Violent Crimes.\nS3: Sex Crimes.\nS4: Child Exploitation.\nS5: Defamation.\n"
    "S6: Specialized Advice.\nS7: Privacy.\nS8: Intellectual Property.\nS9: Indiscriminate Weapons.\nS10: Hate.\n"
    "S11: Self-Harm.\nS12: Sexual Content.\nS13: Elections.\nS14: Code Interpreter Abuse.\n"
    "<END UNSAFE CONTENT CATEGORIES>\n\n"
    "<BEGIN CONVERSATION>\n\n"
    "User: How was your day?\n\n"
    "Agent: Fine, thanks.\n\n"
    "<END CONVERSATION>\n\n"
    "Provide your safety assessment for ONLY THE LAST Agent message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories."
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
)


@pytest.fixture(scope="session")
def fake_guard_model(smollm2_model, tmp_path_factory) -> Path:
    """SmolLM2 carrying Llama Guard 3's chat template: the guard's prompt is real, its answers are not."""
    from studio.safety.guard import LLAMA_GUARD_3_TEMPLATE
    from tests.test_bad_inputs import with_chat_template

    folder = tmp_path_factory.mktemp("guard")
    return with_chat_template(smollm2_model, folder / "not-a-guard.gguf", LLAMA_GUARD_3_TEMPLATE)


@pytest.fixture(scope="module")
def fake_guard(fake_guard_model):
    from studio.safety.guard import GuardChecker

    checker = GuardChecker(fake_guard_model, threads=2)
    yield checker
    checker.close()


def test_guard_prompt_is_rendered_exactly_as_llama_guard_3_template_renders_it(fake_guard):
    assert fake_guard.render(CONVERSATION, "  Fine, thanks.") == GUARD_PROMPT  # the system turn is not assessed
    assert fake_guard.name == "guard:not-a-guard" and len(fake_guard.version) == 64


def test_guard_model_that_answers_garbage_is_named_through_the_real_engine(fake_guard, store):
    with pytest.raises(SafetyCheckerError, match=r"model not-a-guard\.gguf did not answer as a guard model "
                                                 r"\(said: '.+'\)"):
        fake_guard.check(CONVERSATION, "Fine, thanks.")
    assert fake_guard.last_tokens_per_s and fake_guard.last_tokens_per_s > 0
    results = check_with_cache(store, [fake_guard], CONVERSATION, "Fine, thanks.")
    assert results[0].verdict is None and "did not answer as a guard model" in results[0].error


def test_guard_template_without_one_in_the_file_is_the_same_text():
    import jinja2

    from studio.safety.guard import LLAMA_GUARD_3_TEMPLATE

    def refuse(message: str) -> None:
        raise ValueError(message)

    env = jinja2.Environment()
    env.globals["raise_exception"] = refuse
    rendered = env.from_string(LLAMA_GUARD_3_TEMPLATE).render(
        messages=[{"role": "user", "content": "How was your day?"}, {"role": "assistant", "content": "Fine, thanks."}])
    assert rendered == GUARD_PROMPT
    assert "ONLY THE LAST User message" in env.from_string(LLAMA_GUARD_3_TEMPLATE).render(
        messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(("said", "safe", "categories"), [
    ("safe", True, ()),
    ("\n\nsafe\n", True, ()),
    ("unsafe\nS1,S10", False, ("S1", "S10")),
    ("unsafe\ns2, S14 ,S2", False, ("S2", "S14")),
])
def test_guard_answers_are_parsed_into_verdicts(said, safe, categories):
    from studio.safety.guard import parse_guard_output

    answer = parse_guard_output(said, "guard.gguf")
    assert (answer.safe, answer.categories) == (safe, categories)


@pytest.mark.parametrize("said", ["", "Sure! Here is", "unsafe", "unsafe\nhate", "safe\nS1", "unsafe\nS1\nmore",
                                  "I think it is safe"])
def test_anything_else_a_guard_says_is_a_clear_error(said):
    from studio.safety.guard import GuardOutputError, parse_guard_output

    with pytest.raises(GuardOutputError, match=r"model guard\.gguf did not answer as a guard model \(said: "):
        parse_guard_output(said, "guard.gguf")


# --drop-flagged: chosen replies checked before a run, flagged pairs dropped by the trainer's selection

def test_a_training_pair_is_checked_under_the_key_the_trainer_looks_up():
    from store.safety_checks import prompt_reply_hash

    prompt, reply = "User: hi\nAssistant:", " you idiot"
    assert checked_text_hash([ChatTurn("user", prompt)], reply) == prompt_reply_hash(prompt, reply)


def test_drop_flagged_checks_the_chosen_replies_and_the_selection_drops_and_counts_those_pairs(store, profanity):
    from tiny_model import SEPARABLE_PAIRS, judge

    from studio.safety.training_checks import check_chosen_replies
    from trainers.pair_selection import select_from_store
    from trainers.run_config import RunConfig

    session = store.create_session("")
    for prompt, sensible, potato in SEPARABLE_PAIRS[:5]:
        judge(store, session, prompt, sensible, potato)
    judge(store, session, "Say hi.", "Hi, you fucking idiot.", "Hello!")  # the user picked the offensive one
    judge(store, session, "Say bye.", "Bye!", "Piss off.")  # an offensive reply that lost is no reason to drop
    config = RunConfig(drop_flagged=True, heldout_fraction=0.0)
    found = check_chosen_replies(store, config, [profanity])
    assert (found.replies, found.flagged, found.computed) == (7, 1, 7)
    assert "7 pair(s) checked with profanity" in found.describe() and "1 pair(s) with a flagged" in found.describe()
    assert check_chosen_replies(store, config, [profanity]).computed == 0  # stored: not checked again
    kept = select_from_store(store, session_id=session, seed=0, heldout_fraction=0.0, drop_flagged=True)
    assert kept.report.flagged == 1 and kept.report.train == 6
    assert all("idiot" not in pair.chosen for pair in kept.train)
    assert "1 with a flagged chosen reply dropped (--drop-flagged)" in kept.report.describe()
    assert ("flagged chosen reply dropped", 1) in kept.report.counts()
    everything = select_from_store(store, session_id=session, seed=0, heldout_fraction=0.0)
    assert everything.report.flagged == 0 and everything.report.train == 7


def test_a_guard_template_that_reads_content_parts_gets_them():
    from studio.safety.guard import GuardTemplate

    # Llama Guard 3 1B's template reads each message's content as a list of parts ({"type": "text", "text": …}).
    parts = GuardTemplate("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{{ c['text'] }}"
                          "{% endfor %}{{ '\\n' }}{% endfor %}")
    assert parts.render([ChatTurn("user", "hi"), ChatTurn("assistant", "bye")]) == "user: hi\nassistant: bye\n"


def test_a_guard_file_that_is_not_a_model_is_named_and_the_others_keep_working(tmp_path):
    fake = write(tmp_path / "guard.gguf", "not a model at all\n")
    loaded = load_checkers(parse_checker_specs([f"guard:{fake}", "profanity"], "test"))
    assert [checker.name for checker in loaded.checkers] == ["profanity"]
    assert loaded.problems[0].startswith(f"safety checker guard:{fake} is off: guard model {fake}: ")


@pytest.mark.parametrize(("blocked", "message"), [
    ("profanity_check", "the profanity checker needs the package alt-profanity-check (pip install "
                        "alt-profanity-check==1.9.1 scikit-learn==1.9.1)"),
    ("sklearn", "the profanity checker needs scikit-learn and joblib (pip install alt-profanity-check==1.9.1 "
                "scikit-learn==1.9.1)"),
])
def test_a_missing_checker_package_is_named_with_what_to_install(tmp_path, blocked, message):
    import subprocess
    import sys

    listed = write(tmp_path / "words.txt", "idiot\n")
    # A fresh interpreter in which the package cannot be imported, as on an install without it.
    code = f"""
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Missing())
from studio.safety.registry import load_checkers
from studio.safety.specs import parse_checker_specs
loaded = load_checkers(parse_checker_specs(["profanity", "wordlist:{listed}"], "test"))
print([checker.name for checker in loaded.checkers])
print(loaded.problems[0])
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    names, problem = result.stdout.splitlines()
    assert names == "['wordlist:words']"  # the other checker loaded
    assert problem.startswith("safety checker profanity is off: " + message), problem
