"""Named personas: saved beside the database, replaced by name, never overwritten when unreadable."""

import json

import pytest

from studio.personas import PersonaError, load_personas, personas_path, save_persona


def test_personas_are_saved_by_name_and_replaced(tmp_path):
    path = personas_path(tmp_path / "studio.db")
    assert path == tmp_path / "personas.json" and load_personas(path) == {}
    save_persona(path, "  help   desk ", " Be kind. ")
    save_persona(path, "pirate", "Arr.")
    save_persona(path, "help desk", "Be kinder.")
    assert load_personas(path) == {"help desk": "Be kinder.", "pirate": "Arr."}
    assert not path.with_name("personas.json.tmp").exists()


@pytest.mark.parametrize("name, text, phrase", [("", "x", "needs a name"), ("n" * 61, "x", "at most 60"),
                                                ("ok", "  ", "is empty")])
def test_unusable_names_and_empty_prompts_are_refused(tmp_path, name, text, phrase):
    with pytest.raises(PersonaError, match=phrase):
        save_persona(tmp_path / "personas.json", name, text)
    assert not (tmp_path / "personas.json").exists()


@pytest.mark.parametrize("content, phrase", [('{"personas": {', "not valid JSON (line 1"),
                                             (json.dumps({"personas": ["a"]}), "expected")])
def test_a_damaged_file_is_named_and_never_overwritten(tmp_path, content, phrase):
    path = tmp_path / "personas.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PersonaError) as caught:
        load_personas(path)
    assert phrase in str(caught.value) and str(path) in str(caught.value)
    with pytest.raises(PersonaError):
        save_persona(path, "new", "text")
    assert path.read_text(encoding="utf-8") == content
